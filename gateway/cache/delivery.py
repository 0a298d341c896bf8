"""Deliver queued form submissions to their upstream once it is reachable.

Theory of operation
-------------------
A :class:`Deliverer` owns one :class:`~gateway.cache.outbox.Outbox`. Each round
it asks the outbox for due submissions (oldest first, never one that is
behind an older pending submission of the same service), groups them by
service and drains each service in its own task: one request at a time per
service, so the upstream sees them in the order villagers made them, and at
most ``concurrency`` requests in flight over all services. A service that is
still being drained is skipped by the next round, and the outbox's claim
(``mark_sending``) is atomic, so one reference is never sent twice at once.
After a failed attempt the rest of that service's batch waits for the next
round (the upstream just failed; its backoff decides).

Every attempt carries the submission's ``Idempotency-Key`` (fixed when it was
queued) and ``X-Desanet-Reference``. How an attempt ends:

==============================================  ===========  =====================
what happened                                   outcome      state afterwards
==============================================  ===========  =====================
2xx, 3xx (redirects are not followed)           delivered    delivered
408, 425, 429, 503: "not processed, try again"  retry        queued (or unknown¹)
409 on a retry of an uncertain submission       unknown      unknown: the first
                                                             attempt may still be
                                                             running upstream
other 4xx                                       rejected     rejected (final)
500, 502, 504, other 5xx                        unknown      unknown
error before any byte of the request was        not_sent     queued (or unknown¹)
written: refused, DNS, TLS, connect timeout
error after that: timeout waiting for the       unknown      unknown
answer, reset, server disconnected
==============================================  ===========  =====================

¹ once an attempt may have arrived, the submission stays ``unknown``.

500/502/504 are ``unknown`` rather than ``queued`` because the server (or a
proxy in front of it) answered after the request reached it, so it may have
been processed; 503 and the listed 4xx say it was not. Every retry uses the
same key, so the label only changes what villagers and operators are told.
"Not sent" is decided by an aiohttp trace hook that fires just *before* the
request head is written: an error before it cannot have reached the upstream.

A daemon killed mid-request leaves the submission ``sending``; :meth:`run`
starts with ``Outbox.recover`` which makes it ``unknown``. Only one Deliverer
may run per outbox file.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Callable
from types import SimpleNamespace

import aiohttp
from multidict import CIMultiDict

from gateway.asynctools import wait_event
from gateway.cache.outbox import Outbox, OutboxStateError, Outcome, Submission
from gateway.errors import DesanetError

log = logging.getLogger("desanet.delivery")

RETRY_STATUSES = frozenset({408, 425, 429, 503})
SessionFactory = Callable[[list[aiohttp.TraceConfig]], aiohttp.ClientSession]


def classify_status(status: int, uncertain: bool = False) -> Outcome:
    """Outcome of an attempt the upstream answered with ``status``."""
    if status < 400:
        return "delivered"
    if status in RETRY_STATUSES:
        return "retry"
    if status == 409 and uncertain:
        # An idempotent API answers 409 while an earlier request with the same key is still
        # being processed; only possible when an earlier attempt may have arrived.
        return "unknown"
    if status < 500:
        return "rejected"
    return "unknown"


def classify_error(exc: BaseException, maybe_sent: bool) -> Outcome:
    """Outcome of an attempt that raised ``exc``; ``maybe_sent``: the request head went out."""
    if isinstance(exc, aiohttp.ClientConnectorError) or not maybe_sent:
        return "not_sent"
    return "unknown"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def _describe_error(exc: BaseException, outcome: Outcome, url: str, timeout: float) -> str:
    what = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        what = f"no answer within {timeout:g} s"
    if outcome == "not_sent":
        return f"not sent: cannot reach {url}: {what}"
    return f"outcome unknown: {what} after the request was sent; retrying with the same Idempotency-Key"


async def _on_request_started(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object) -> None:
    probe = getattr(ctx, "trace_request_ctx", None)
    if isinstance(probe, _Probe):
        probe.maybe_sent = True


class _Probe:
    """Per-request flag set by the trace hook once any byte of the request may be on the wire."""

    def __init__(self) -> None:
        self.maybe_sent = False


def _default_session(traces: list[aiohttp.TraceConfig]) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(trace_configs=traces)


class Deliverer:
    """Background delivery of an outbox; see the module docstring."""

    def __init__(
        self,
        outbox: Outbox,
        upstream_for: Callable[[str], str | None],
        *,
        timeout: float = 15.0,
        concurrency: int = 4,
        poll_interval: float = 5.0,
        batch: int = 100,
        session_factory: SessionFactory = _default_session,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``upstream_for(slug)`` gives the service's upstream base URL, or None if it is gone.

        ``session_factory`` must pass the given trace configs to its ClientSession:
        they tell a request that was never sent from one whose outcome is unknown.
        """
        self.outbox = outbox
        self.upstream_for = upstream_for
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.batch = batch
        self.clock = clock
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(concurrency)
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task[int]] = set()
        self._kicks: set[str | None] = set()
        self._wake = asyncio.Event()

    # -- control --------------------------------------------------------------

    def kick(self, service: str | None = None) -> None:
        """The upstream of ``service`` (None: every service) looks healthy: retry its items now."""
        self._kicks.add(service)
        self._wake.set()

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def run(self) -> None:
        """Recover from an earlier crash, then deliver until cancelled."""
        recovered = await asyncio.to_thread(self.outbox.recover, self.clock())
        if recovered:
            log.warning("%d submission(s) were being sent when the gateway stopped; "
                        "their outcome is unknown, retrying with the same key", recovered)
        try:
            while True:
                self._wake.clear()
                try:
                    await self._start_round(None)
                except DesanetError as exc:
                    log.error("submission delivery round failed: %s", exc)
                await wait_event(self._wake, self.poll_interval)
        finally:
            await self.aclose()

    async def deliver_once(self, now: float | None = None) -> int:
        """One round, awaited to the end; returns the number of attempts made."""
        tasks = await self._start_round(now)
        return sum(await asyncio.gather(*tasks))

    # -- rounds ---------------------------------------------------------------

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else now

    async def _start_round(self, now: float | None) -> list[asyncio.Task[int]]:
        kicks, self._kicks = self._kicks, set()
        if None in kicks:
            kicks = {None}
        for service in kicks:
            await asyncio.to_thread(self.outbox.kick, service, self._now(now))
        due = await asyncio.to_thread(self.outbox.due, self._now(now), self.batch)
        by_service: dict[str, list[Submission]] = {}
        for sub in due:
            by_service.setdefault(sub.service, []).append(sub)
        started = []
        for service, subs in by_service.items():
            if service in self._busy:
                continue
            self._busy.add(service)  # no await between the check and this claim
            task = asyncio.create_task(self._drain(service, subs, now), name=f"deliver-{service}")
            self._tasks.add(task)
            task.add_done_callback(self._finished)
            started.append(task)
        return started

    def _finished(self, task: asyncio.Task[int]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery to %s stopped: %s", task.get_name(), task.exception())

    async def _drain(self, service: str, subs: list[Submission], now: float | None) -> int:
        attempts = 0
        try:
            for sub in subs:
                outcome = await self._attempt(sub, now)
                if outcome is None:
                    break  # changed since the round began; the next round sees it in order
                attempts += 1
                if outcome not in ("delivered", "rejected"):
                    break
        finally:
            self._busy.discard(service)
            self._wake.set()
        return attempts

    async def _attempt(self, sub: Submission, now: float | None) -> Outcome | None:
        try:
            claimed = await asyncio.to_thread(self.outbox.mark_sending, sub.ref, self._now(now))
        except OutboxStateError as exc:
            log.debug("skipping %s: %s", sub.ref, exc)
            return None
        upstream = self.upstream_for(claimed.service)
        if upstream is None:
            gone = f"not sent: service {claimed.service!r} is no longer in the catalog"
            await self._record(claimed, "not_sent", None, gone, now, None)
            return "not_sent"
        url = upstream.rstrip("/") + claimed.path_qs
        headers = CIMultiDict(claimed.headers)
        headers["Idempotency-Key"] = claimed.idempotency_key
        headers["X-Desanet-Reference"] = claimed.ref
        probe = _Probe()
        status: int | None = None
        retry_after: float | None = None
        error: str | None = None
        try:
            async with self._slots, self._get_session().request(
                claimed.method, url, data=claimed.body, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout), trace_request_ctx=probe,
            ) as resp:
                status = resp.status
                outcome = classify_status(status, claimed.uncertain)
                if outcome != "delivered":
                    error = f"HTTP {status} {resp.reason or ''}".strip()
                if outcome == "retry":
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._now(now))
        except Exception as exc:  # every failure must leave 'sending'; the kind decides where to
            if not isinstance(exc, aiohttp.ClientError | TimeoutError | OSError):
                log.exception("unexpected error delivering %s", claimed.ref)
            outcome = classify_error(exc, probe.maybe_sent)
            error = _describe_error(exc, outcome, url, self.timeout)
        await self._record(claimed, outcome, status, error, now, retry_after)
        return outcome

    async def _record(self, sub: Submission, outcome: Outcome, status: int | None, error: str | None,
                      now: float | None, retry_after: float | None) -> None:
        done = await asyncio.to_thread(
            self.outbox.mark_result, sub.ref, outcome, status, error, self._now(now), retry_after
        )
        log.info("submission %s to %s: attempt %d %s -> %s%s", sub.ref, sub.service, done.attempts,
                 outcome, done.state, f" ({error})" if error else "")

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            trace = aiohttp.TraceConfig()
            trace.on_request_headers_sent.append(_on_request_started)
            trace.on_request_chunk_sent.append(_on_request_started)
            self._session = self._session_factory([trace])
        return self._session
