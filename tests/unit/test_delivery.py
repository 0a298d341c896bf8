"""Delivery against a real HTTP origin on 127.0.0.1 that honours Idempotency-Key."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from gateway.cache.delivery import Deliverer, classify_error, classify_status, parse_retry_after
from gateway.cache.outbox import Outbox, Outcome

MakeDeliverer = Callable[..., Deliverer]
T0 = 1_000_000.0
LATER = T0 + 100_000  # past any backoff
FORM = [("Content-Type", "application/x-www-form-urlencoded"), ("Cookie", "sid=secret")]


class Origin:
    """A government service that dedupes by Idempotency-Key, as a real idempotent API does.

    A new key is "in progress" for ``delay`` seconds and then committed; a request with a
    committed key gets the first response again; one with a key still in progress gets 409.
    """

    def __init__(self) -> None:
        self.delay = 0.0
        # When set, new requests stay in progress until the test sets this event (no timing).
        self.hold: asyncio.Event | None = None
        self.reject = False
        self.busy = 0        # answer this many new requests with 503 before processing
        self.drop = 0        # close the connection on this many new requests after reading them
        self.requests: list[dict[str, str]] = []
        self.committed: dict[str, tuple[int, str]] = {}
        self.order: list[str] = []
        self.in_progress: dict[str, asyncio.Event] = {}
        self.inflight = self.max_inflight = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = (await request.read()).decode()
        key = request.headers.get("Idempotency-Key", "")
        ref = request.headers.get("X-Desanet-Reference", "")
        self.requests.append({"key": key, "ref": ref, "body": body, "path": request.path_qs,
                              "cookie": request.headers.get("Cookie", ""),
                              "type": request.headers.get("Content-Type", "")})
        if key in self.committed:
            status, text = self.committed[key]
            return web.Response(status=status, text=text, headers={"Idempotent-Replayed": "true"})
        if key in self.in_progress:
            return web.Response(status=409, text="a request with this key is in progress")
        if self.busy:
            self.busy -= 1
            return web.Response(status=503, headers={"Retry-After": "1"})
        if self.drop:
            self.drop -= 1
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if self.reject:
            return web.Response(status=422, text="NIK tidak valid")
        done = self.in_progress[key] = asyncio.Event()
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.hold is not None:
                await self.hold.wait()
            else:
                await asyncio.sleep(self.delay)
            self.committed[key] = (201, f"saved {ref}")
            self.order.append(ref)
        finally:
            self.inflight -= 1
            del self.in_progress[key]
            done.set()
        return web.Response(status=201, text=f"saved {ref}")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def idle(self) -> None:
        for event in list(self.in_progress.values()):
            await event.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    server = Origin()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db")
    yield box
    box.close()


@pytest.fixture
async def make_deliverer(outbox: Outbox, origin: Origin) -> AsyncIterator[MakeDeliverer]:
    made: list[Deliverer] = []

    def make(box: Outbox = outbox, timeout: float = 5.0, concurrency: int = 4,
             upstreams: dict[str, str] | None = None) -> Deliverer:
        table = upstreams if upstreams is not None else {"a": origin.url, "b": origin.url}
        deliverer = Deliverer(box, table.get, timeout=timeout, concurrency=concurrency)
        made.append(deliverer)
        return deliverer

    yield make
    for deliverer in made:
        await deliverer.aclose()


def enqueue(box: Outbox, service: str = "a", body: str = "nik=3201", now: float = T0) -> str:
    return box.enqueue(service, "POST", "/daftar?step=2", FORM, body.encode(), now).ref


def state(box: Outbox, ref: str) -> tuple[str, int, int | None]:
    sub = box.get(ref)
    assert sub is not None
    return sub.state, sub.attempts, sub.response_status


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- pure classification ------------------------------------------------------

@pytest.mark.parametrize("status, uncertain, outcome", [
    (200, False, "delivered"), (201, False, "delivered"), (204, False, "delivered"),
    (302, False, "delivered"), (303, False, "delivered"), (304, False, "delivered"),
    (400, False, "rejected"), (403, False, "rejected"), (404, False, "rejected"),
    (409, False, "rejected"), (409, True, "unknown"), (422, False, "rejected"),
    (408, False, "retry"), (425, False, "retry"), (429, False, "retry"), (503, True, "retry"),
    (500, False, "unknown"), (502, False, "unknown"), (504, False, "unknown"),
])
def test_classify_status(status: int, uncertain: bool, outcome: Outcome) -> None:
    assert classify_status(status, uncertain) == outcome


def test_classify_error_depends_on_whether_anything_was_sent() -> None:
    assert classify_error(TimeoutError(), maybe_sent=False) == "not_sent"
    assert classify_error(TimeoutError(), maybe_sent=True) == "unknown"
    assert classify_error(ConnectionResetError(), maybe_sent=True) == "unknown"


def test_parse_retry_after() -> None:
    assert parse_retry_after("120", T0) == 120
    assert parse_retry_after(None, T0) is None
    assert parse_retry_after("soon", T0) is None
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111717.0) == 60
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111800.0) == 0


# -- against the origin -------------------------------------------------------

async def test_delivered_with_key_reference_and_safe_headers(outbox: Outbox, origin: Origin,
                                                             make_deliverer: MakeDeliverer) -> None:
    ref = enqueue(outbox)
    assert await make_deliverer().deliver_once(T0) == 1
    assert state(outbox, ref) == ("delivered", 1, 201)
    sub = outbox.get(ref)
    assert sub is not None
    [req] = origin.requests
    assert req == {"key": sub.idempotency_key, "ref": ref, "body": "nik=3201",
                   "path": "/api/daftar?step=2", "cookie": "",
                   "type": "application/x-www-form-urlencoded"}


async def test_upstream_down_then_back_is_delivered_once(outbox: Outbox, origin: Origin,
                                                          make_deliverer: MakeDeliverer) -> None:
    await origin.stop()  # the port is now closed: connection refused
    ref = enqueue(outbox)
    deliverer = make_deliverer()
    assert await deliverer.deliver_once(T0) == 1
    assert state(outbox, ref) == ("queued", 1, None)
    sub = outbox.get(ref)
    assert sub is not None and "not sent: cannot reach" in (sub.last_error or "")
    assert await deliverer.deliver_once(T0 + 1) == 0  # backing off
    assert await deliverer.deliver_once(T0 + 60) == 1
    assert state(outbox, ref) == ("queued", 2, None)
    await origin.start()  # back on the same port
    assert await deliverer.deliver_once(LATER) == 1
    assert state(outbox, ref) == ("delivered", 3, 201)
    assert await deliverer.deliver_once(LATER * 2) == 0
    assert len(origin.requests) == 1 and len(origin.committed) == 1


async def test_dns_failure_is_not_sent(outbox: Outbox, make_deliverer: MakeDeliverer) -> None:
    ref = enqueue(outbox)
    deliverer = make_deliverer(timeout=3, upstreams={"a": "http://layanan.invalid"})
    await deliverer.deliver_once(T0)
    assert state(outbox, ref) == ("queued", 1, None)


async def test_timeout_after_sending_is_unknown_and_retried_with_same_key(
        outbox: Outbox, origin: Origin, make_deliverer: MakeDeliverer) -> None:
    origin.hold = asyncio.Event()
    ref = enqueue(outbox)
    deliverer = make_deliverer(timeout=0.3)
    await deliverer.deliver_once(T0)
    assert state(outbox, ref) == ("unknown", 1, None)
    sub = outbox.get(ref)
    assert sub is not None and "no answer within 0.3 s" in (sub.last_error or "")
    assert "same key" in sub.describe()
    origin.hold.set()
    await origin.idle()  # meanwhile the origin finished and committed the first attempt
    origin.hold = None
    await deliverer.deliver_once(LATER)
    assert state(outbox, ref) == ("delivered", 2, 201)
    assert [r["key"] for r in origin.requests] == [sub.idempotency_key] * 2
    assert len(origin.committed) == 1 and origin.order == [ref]


async def test_retry_while_first_attempt_in_progress_is_not_rejected(
        outbox: Outbox, origin: Origin, make_deliverer: MakeDeliverer) -> None:
    origin.hold = asyncio.Event()
    ref = enqueue(outbox)
    deliverer = make_deliverer(timeout=0.2)
    await deliverer.deliver_once(T0)
    await deliverer.deliver_once(LATER)  # the origin still works on the first: 409
    assert state(outbox, ref) == ("unknown", 2, 409)
    origin.hold.set()
    await origin.idle()
    await deliverer.deliver_once(LATER * 2)
    assert state(outbox, ref) == ("delivered", 3, 201)
    assert len(origin.committed) == 1


async def test_connection_dropped_after_sending_is_unknown(
        outbox: Outbox, origin: Origin, make_deliverer: MakeDeliverer) -> None:
    origin.drop = 1
    ref = enqueue(outbox)
    deliverer = make_deliverer()
    await deliverer.deliver_once(T0)
    assert state(outbox, ref) == ("unknown", 1, None)
    await deliverer.deliver_once(LATER)
    assert state(outbox, ref) == ("delivered", 2, 201)


async def test_4xx_is_rejected_and_not_retried(outbox: Outbox, origin: Origin,
                                               make_deliverer: MakeDeliverer) -> None:
    origin.reject = True
    ref = enqueue(outbox)
    deliverer = make_deliverer()
    assert await deliverer.deliver_once(T0) == 1
    assert state(outbox, ref) == ("rejected", 1, 422)
    sub = outbox.get(ref)
    assert sub is not None and "(HTTP 422)" in sub.describe()
    assert sub.last_error == "HTTP 422 Unprocessable Entity"
    assert await deliverer.deliver_once(LATER) == 0
    assert len(origin.requests) == 1


async def test_503_is_retried_after_retry_after(outbox: Outbox, origin: Origin,
                                                make_deliverer: MakeDeliverer) -> None:
    origin.busy = 1
    ref = enqueue(outbox)
    deliverer = make_deliverer()
    await deliverer.deliver_once(T0)
    assert state(outbox, ref) == ("queued", 1, 503)
    await deliverer.deliver_once(LATER)
    assert state(outbox, ref) == ("delivered", 2, 201)
    assert len(origin.requests) == 2 and len(origin.committed) == 1


async def test_restart_mid_delivery_delivers_exactly_once(
        tmp_path: Path, origin: Origin, make_deliverer: MakeDeliverer) -> None:
    path = tmp_path / "crash.db"
    box = Outbox(path)
    ref = enqueue(box)
    origin.hold = asyncio.Event()
    first = asyncio.create_task(make_deliverer(box).deliver_once(T0))
    for _ in range(200):
        if origin.in_progress:
            break
        await asyncio.sleep(0.01)
    assert origin.in_progress, "the first attempt never reached the origin"
    first.cancel()  # the daemon dies while waiting for the answer
    with pytest.raises(asyncio.CancelledError):
        await first
    assert state(box, ref)[0] == "sending"
    box.close()

    box = Outbox(path)
    try:
        origin.hold.set()
        await origin.idle()
        deliverer = make_deliverer(box)
        deliverer.poll_interval = 0.05
        runner = asyncio.create_task(deliverer.run())  # run() starts with recover()
        for _ in range(200):
            if state(box, ref)[0] == "delivered":
                break
            await asyncio.sleep(0.02)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        assert state(box, ref) == ("delivered", 2, 201)
        assert len(origin.requests) == 2 and len(origin.committed) == 1
        sub = box.get(ref)
        assert sub is not None and {r["key"] for r in origin.requests} == {sub.idempotency_key}
    finally:
        box.close()


async def test_order_kept_per_service_and_services_in_parallel(
        outbox: Outbox, origin: Origin, make_deliverer: MakeDeliverer) -> None:
    origin.delay = 0.1
    refs = [enqueue(outbox, service) for service in ("a", "b", "a", "b", "a")]
    assert await make_deliverer().deliver_once(T0) == 5
    assert [r for r in origin.order if r in refs[0::2]] == refs[0::2]
    assert [r for r in origin.order if r in refs[1::2]] == refs[1::2]
    assert origin.max_inflight == 2  # one per service at a time


async def test_concurrency_bound(outbox: Outbox, origin: Origin, make_deliverer: MakeDeliverer) -> None:
    origin.delay = 0.05
    for service in ("a", "b", "a", "b"):
        enqueue(outbox, service)
    assert await make_deliverer(concurrency=1).deliver_once(T0) == 4
    assert origin.max_inflight == 1


async def test_failure_holds_back_later_items_of_that_service(
        outbox: Outbox, origin: Origin, make_deliverer: MakeDeliverer) -> None:
    origin.busy = 1
    first, second = enqueue(outbox), enqueue(outbox)
    deliverer = make_deliverer()
    assert await deliverer.deliver_once(T0) == 1
    assert state(outbox, second) == ("queued", 0, None)
    assert await deliverer.deliver_once(T0 + 0.5) == 0  # second must not overtake first
    assert await deliverer.deliver_once(LATER) == 2
    assert origin.order == [first, second]


async def test_same_ref_never_sent_twice_at_once(outbox: Outbox, origin: Origin,
                                                 make_deliverer: MakeDeliverer) -> None:
    origin.delay = 0.2
    ref = enqueue(outbox)
    deliverer = make_deliverer()
    other = make_deliverer()  # even a second deliverer on the same outbox loses the claim
    counts = await asyncio.gather(deliverer.deliver_once(T0), deliverer.deliver_once(T0),
                                  other.deliver_once(T0))
    assert sum(counts) == 1 and len(origin.requests) == 1
    assert state(outbox, ref) == ("delivered", 1, 201)


async def test_unknown_service_stays_queued(outbox: Outbox, make_deliverer: MakeDeliverer) -> None:
    ref = enqueue(outbox, "gone")
    await make_deliverer().deliver_once(T0)
    sub = outbox.get(ref)
    assert sub is not None and sub.state == "queued" and "no longer in the catalog" in (sub.last_error or "")


async def test_run_loop_wakes_on_kick(outbox: Outbox, origin: Origin,
                                      make_deliverer: MakeDeliverer) -> None:
    await origin.stop()
    now = time.time()
    ref = enqueue(outbox, now=now)
    outbox.mark_sending(ref, now)
    outbox.mark_result(ref, "not_sent", None, "down", now, retry_after=600)
    await origin.start()
    deliverer = make_deliverer()
    deliverer.poll_interval = 3600  # only a kick can wake it
    runner = asyncio.create_task(deliverer.run())
    await asyncio.sleep(0.2)
    assert state(outbox, ref)[0] == "queued"
    deliverer.kick("a")
    for _ in range(100):
        if state(outbox, ref)[0] == "delivered":
            break
        await asyncio.sleep(0.02)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    assert state(outbox, ref) == ("delivered", 2, 201)
