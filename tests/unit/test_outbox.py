from __future__ import annotations

import random
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.cache.outbox import (
    FIRST_DELAY,
    JITTER,
    MAX_BODY,
    MAX_DELAY,
    Outbox,
    OutboxStateError,
    Outcome,
    SubmissionTooLarge,
    backoff_delay,
    new_ref,
    normalize_ref,
)

FORM = [("Content-Type", "application/x-www-form-urlencoded"), ("Cookie", "sid=secret"),
        ("Authorization", "Bearer x"), ("Accept-Language", "id"), ("X-Evil", "1")]
T0 = 1_000_000.0


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db", rng=random.Random(7))
    yield box
    box.close()


def enqueue(box: Outbox, service: str = "dukcapil", body: bytes = b"nik=123", now: float = T0) -> str:
    return box.enqueue(service, "post", "/daftar?x=1", FORM, body, now).ref


def test_enqueue_is_durable_and_complete(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    sub = box.enqueue("dukcapil", "post", "/daftar?x=1", FORM, b"nik=123", T0)
    box.close()
    again = Outbox(tmp_path / "o.db")
    got = again.get(sub.ref)
    again.close()
    assert got == sub
    assert got.state == "queued" and got.attempts == 0 and got.next_attempt == T0
    assert got.method == "POST" and got.body == b"nik=123" and got.created == T0
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                        got.idempotency_key)


def test_enqueue_with_a_given_key(outbox: Outbox) -> None:
    key = "3f0c6f3e-2f4e-4c39-9d43-0a4e1b8c7d21"
    sub = outbox.enqueue("dukcapil", "POST", "/f", [], b"a=1", T0, key)
    assert sub.idempotency_key == key and sub.state == "queued" and not sub.uncertain
    again = outbox.enqueue("dukcapil", "POST", "/f", [], b"a=1", T0 + 1, key)
    assert again == sub and sum(outbox.counts().values()) == 1  # same key: nothing added
    maybe = outbox.enqueue("dukcapil", "POST", "/f", [], b"a=2", T0, "k-2", uncertain=True)
    assert maybe.state == "unknown" and maybe.uncertain
    assert [s.ref for s in outbox.due(T0)] == [sub.ref, maybe.ref]
    with pytest.raises(ValueError, match="idempotency_key"):
        outbox.enqueue("dukcapil", "POST", "/f", [], b"", T0, "bad key\n")


def test_only_safe_headers_are_kept(outbox: Outbox) -> None:
    sub = outbox.get(enqueue(outbox))
    assert sub is not None
    assert sub.headers == (("content-type", "application/x-www-form-urlencoded"),
                           ("accept-language", "id"))


def test_reference_format_and_uniqueness(outbox: Outbox) -> None:
    refs = {enqueue(outbox) for _ in range(300)}
    assert len(refs) == 300
    keys = {s.idempotency_key for s in outbox.list(limit=1000)}
    assert len(keys) == 300
    for ref in refs:
        assert re.fullmatch(r"DN-[2-9A-HJ-NP-Z]{4}-[2-9A-HJ-NP-Z]{4}", ref)
        assert not set(ref[3:]) & set("01OI")


@pytest.mark.parametrize("typed, expected", [
    ("DN-7K3Q-P9XW", "DN-7K3Q-P9XW"),
    ("dn 7k3q p9xw", "DN-7K3Q-P9XW"),
    ("7K3QP9XW", "DN-7K3Q-P9XW"),
    ("DN-7K3Q-P9X", None),       # too short
    ("DN-7K3Q-P9X0", None),      # 0 is not in the alphabet
    ("DN-7K3Q-P9XI", None),
    ("", None),
])
def test_normalize_ref(typed: str, expected: str | None) -> None:
    assert normalize_ref(typed) == expected


def test_get_accepts_loosely_typed_reference(outbox: Outbox) -> None:
    ref = enqueue(outbox)
    assert outbox.get(ref.lower().replace("-", " ")) is not None
    assert outbox.get("DN-2222-2222") is None
    assert outbox.get("nonsense") is None
    assert normalize_ref(new_ref()) is not None


def test_body_cap(outbox: Outbox) -> None:
    outbox.enqueue("dukcapil", "POST", "/f", [], b"x" * MAX_BODY, T0)
    with pytest.raises(SubmissionTooLarge, match="at most 1 MB"):
        outbox.enqueue("dukcapil", "POST", "/f", [], b"x" * (MAX_BODY + 1), T0)
    assert sum(outbox.counts().values()) == 1


@pytest.mark.parametrize("method, path", [
    ("GET", "/f"), ("POST", "f"), ("POST", "@evil.example/f"), ("POST", "//evil.example/f"),
    ("POST", "/f\r\nX: y"), ("POST", "/a b"),
])
def test_bad_requests_are_refused(outbox: Outbox, method: str, path: str) -> None:
    with pytest.raises(ValueError):
        outbox.enqueue("dukcapil", method, path, [], b"", T0)
    assert sum(outbox.counts().values()) == 0


# state before the attempt ("queued" or "unknown"), outcome -> state after, final?
TRANSITIONS = [
    ("queued", "delivered", 201, "delivered"),
    ("queued", "delivered", 303, "delivered"),
    ("queued", "rejected", 422, "rejected"),
    ("queued", "not_sent", None, "queued"),
    ("queued", "retry", 503, "queued"),
    ("queued", "unknown", None, "unknown"),
    ("unknown", "delivered", 200, "delivered"),
    ("unknown", "rejected", 400, "rejected"),
    ("unknown", "not_sent", None, "unknown"),   # the earlier attempt's outcome is still unknown
    ("unknown", "retry", 503, "unknown"),
    ("unknown", "unknown", 504, "unknown"),
]


@pytest.mark.parametrize("start, outcome, status, end", TRANSITIONS)
def test_transitions(outbox: Outbox, start: str, outcome: Outcome, status: int | None, end: str) -> None:
    ref = enqueue(outbox)
    if start == "unknown":
        outbox.mark_sending(ref, T0)
        outbox.mark_result(ref, "unknown", None, "timeout", T0)
        outbox.kick(None, T0 + 1)
    now = T0 + 1
    sending = outbox.mark_sending(ref, now)
    assert sending.state == "sending"
    done = outbox.mark_result(ref, outcome, status, None if outcome == "delivered" else "e", now)
    assert done.state == end
    assert done.response_status == status
    assert done.idempotency_key == sending.idempotency_key
    if end in ("delivered", "rejected"):
        assert done.final and done.delivered_at == now and done.next_attempt is None
        assert outbox.due(now + 10_000) == []
    else:
        assert not done.final and done.next_attempt is not None and done.next_attempt > now
        assert [s.ref for s in outbox.due(now + MAX_DELAY)] == [ref]
    assert outbox.counts()[end] == 1


def test_invalid_transitions(outbox: Outbox) -> None:
    ref = enqueue(outbox)
    with pytest.raises(OutboxStateError, match="must be sending, but it is queued"):
        outbox.mark_result(ref, "delivered", 200, None, T0)
    with pytest.raises(OutboxStateError, match="no such submission"):
        outbox.mark_sending("DN-2222-2222", T0)
    with pytest.raises(OutboxStateError, match="queued until"):
        outbox.mark_sending(ref, T0 - 1)  # not due yet
    outbox.mark_sending(ref, T0)
    with pytest.raises(OutboxStateError, match="it is sending"):
        outbox.mark_sending(ref, T0)  # a second claim of the same ref loses
    outbox.mark_result(ref, "delivered", 200, None, T0)
    with pytest.raises(OutboxStateError, match="it is delivered"):
        outbox.mark_sending(ref, T0 + 10_000)
    with pytest.raises(ValueError):
        outbox.mark_result(ref, cast(Any, "maybe"), None, None, T0)


def test_recover_turns_sending_into_unknown(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    ref, other = enqueue(box, "a"), enqueue(box, "b")
    box.mark_sending(ref, T0)
    box.close()  # the daemon dies mid-delivery
    box = Outbox(tmp_path / "o.db")
    assert box.recover(T0 + 60) == 1
    sub = box.get(ref)
    assert sub is not None and sub.state == "unknown" and sub.uncertain
    assert sub.next_attempt == T0 + 60 and "restarted" in (sub.last_error or "")
    assert "same key" in sub.describe() and "kunci yang sama" in sub.describe("id")
    assert [s.ref for s in box.due(T0 + 60)] == [ref, other]
    assert box.recover(T0 + 61) == 0
    box.close()


def test_backoff_grows_and_is_capped() -> None:
    rng = random.Random(1)
    for attempts in range(1, 40):
        base = min(MAX_DELAY, FIRST_DELAY * 2 ** (attempts - 1))
        for _ in range(20):
            delay = backoff_delay(attempts, rng)
            assert base * (1 - JITTER) <= delay <= base <= MAX_DELAY
    lows = [backoff_delay(n, random.Random(0)) for n in range(1, 9)]
    assert lows == sorted(lows) and lows[0] < 6 and lows[-1] > 400


def test_failed_attempts_back_off_in_the_store(outbox: Outbox) -> None:
    ref = enqueue(outbox)
    now, waits = T0, []
    for _ in range(12):
        outbox.mark_sending(ref, now)
        sub = outbox.mark_result(ref, "not_sent", None, "refused", now)
        assert sub.next_attempt is not None
        waits.append(sub.next_attempt - now)
        now = sub.next_attempt
    assert sub.attempts == 12 and sub.state == "queued" and sub.last_error == "refused"
    assert waits[0] <= FIRST_DELAY and waits[3] > waits[0] * 4 and max(waits) <= MAX_DELAY
    retry_after = outbox.mark_result(outbox.mark_sending(ref, now).ref, "retry", 429, "busy", now,
                                     retry_after=3600)
    assert retry_after.next_attempt == now + MAX_DELAY  # Retry-After honoured, within the cap


def test_kick_makes_one_service_due(outbox: Outbox) -> None:
    a, b = enqueue(outbox, "a"), enqueue(outbox, "b")
    for ref in (a, b):
        outbox.mark_sending(ref, T0)
        outbox.mark_result(ref, "not_sent", None, "down", T0)
    assert outbox.due(T0 + 1) == []
    assert outbox.kick("a", T0 + 1) == 1
    assert [s.ref for s in outbox.due(T0 + 1)] == [a]
    assert outbox.kick(None, T0 + 2) == 2


def test_due_keeps_order_within_a_service(outbox: Outbox) -> None:
    a1, b1, a2 = enqueue(outbox, "a"), enqueue(outbox, "b"), enqueue(outbox, "a")
    assert [s.ref for s in outbox.due(T0)] == [a1, b1, a2]
    assert [s.ref for s in outbox.due(T0, limit=2)] == [a1, b1]
    outbox.mark_sending(a1, T0)
    assert [s.ref for s in outbox.due(T0)] == [b1]  # a2 waits while a1 is in flight
    outbox.mark_result(a1, "not_sent", None, "down", T0)
    assert [s.ref for s in outbox.due(T0 + 1)] == [b1]  # ... and while a1 waits for its retry
    outbox.mark_sending(a1, T0 + MAX_DELAY)
    outbox.mark_result(a1, "rejected", 400, "bad", T0 + MAX_DELAY)
    assert [s.ref for s in outbox.due(T0 + MAX_DELAY)] == [b1, a2]
    assert outbox.due(T0 - 1) == []


def test_list_and_counts(outbox: Outbox) -> None:
    a, b = enqueue(outbox, "a"), enqueue(outbox, "b")
    outbox.mark_sending(a, T0)
    outbox.mark_result(a, "rejected", 422, "HTTP 422", T0)
    assert [s.ref for s in outbox.list()] == [b, a]
    assert [s.ref for s in outbox.list(service="a")] == [a]
    assert outbox.counts() == {"queued": 1, "sending": 0, "delivered": 0, "rejected": 1, "unknown": 0}
    rejected = outbox.get(a)
    assert rejected is not None and "HTTP 422" in rejected.describe()


def test_enqueue_survives_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from gateway.cache.outbox import Outbox
        box = Outbox({str(db)!r})
        sub = box.enqueue("dukcapil", "POST", "/daftar", [], b"nik=123", 1.0)
        sys.stdout.write(sub.ref + "\\n")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert proc.returncode == -9, proc.stderr
    ref = proc.stdout.strip()
    box = Outbox(db)
    sub = box.get(ref)
    box.close()
    assert sub is not None and sub.body == b"nik=123" and sub.state == "queued"


# -- queue limits (each refuses cleanly and stores nothing) ----------------------------------

from gateway.cache.outbox import QueueFull, QueueLimits  # noqa: E402


def _rows(box: Outbox) -> int:
    return sum(box.counts().values())


@pytest.mark.parametrize("limits, reason", [
    (QueueLimits(max_forms=2), "queue_forms"),
    (QueueLimits(max_bytes=2 * 7 + 6), "queue_bytes"),
    (QueueLimits(per_client_hour=2), "client_hour"),
])
def test_each_limit_refuses_and_stores_nothing(outbox: Outbox, limits: QueueLimits, reason: str) -> None:
    for i in range(2):  # positive control: up to the limit, stored
        outbox.enqueue("dukcapil", "POST", "/f", FORM, b"nik=12" + str(i).encode(), T0 + i,
                       client="10.42.0.101", limits=limits)
    with pytest.raises(QueueFull) as caught:
        outbox.enqueue("dukcapil", "POST", "/f", FORM, b"nik=129", T0 + 5, client="10.42.0.101",
                       limits=limits)
    assert caught.value.reason == reason
    assert _rows(outbox) == 2


def test_client_limit_is_per_client_and_per_hour(outbox: Outbox) -> None:
    limits = QueueLimits(per_client_hour=1)
    outbox.enqueue("dukcapil", "POST", "/f", FORM, b"a", T0, client="10.42.0.101", limits=limits)
    outbox.enqueue("dukcapil", "POST", "/f", FORM, b"b", T0, client="10.42.0.102", limits=limits)
    with pytest.raises(QueueFull):
        outbox.enqueue("dukcapil", "POST", "/f", FORM, b"c", T0 + 3599, client="10.42.0.101",
                       limits=limits)
    outbox.enqueue("dukcapil", "POST", "/f", FORM, b"d", T0 + 3601, client="10.42.0.101",
                   limits=limits)
    assert _rows(outbox) == 3


def test_delivered_forms_leave_room(outbox: Outbox) -> None:
    limits = QueueLimits(max_forms=1)
    ref = outbox.enqueue("dukcapil", "POST", "/f", FORM, b"a", T0, limits=limits).ref
    with pytest.raises(QueueFull):
        outbox.enqueue("dukcapil", "POST", "/f", FORM, b"b", T0, limits=limits)
    outbox.mark_sending(ref, T0)
    outbox.mark_result(ref, "delivered", 201, None, T0)
    outbox.enqueue("dukcapil", "POST", "/f", FORM, b"b", T0, limits=limits)


def test_disk_floor(outbox: Outbox) -> None:
    limits = QueueLimits(min_free_disk=1000)
    outbox.free_disk = lambda path: 1000 + 10
    outbox.enqueue("dukcapil", "POST", "/f", FORM, b"0123456789", T0, limits=limits)  # exactly fits
    with pytest.raises(QueueFull) as caught:
        outbox.enqueue("dukcapil", "POST", "/f", FORM, b"01234567890", T0, limits=limits)
    assert caught.value.reason == "disk_space"

    def broken(path: str) -> int:
        raise OSError(5, "I/O error")

    outbox.free_disk = broken
    with pytest.raises(QueueFull, match="I/O error"):
        outbox.enqueue("dukcapil", "POST", "/f", FORM, b"x", T0, limits=limits)
    assert _rows(outbox) == 1


def test_a_known_key_returns_its_receipt_even_when_full(outbox: Outbox) -> None:
    limits = QueueLimits(max_forms=1)
    first = outbox.enqueue("dukcapil", "POST", "/f", FORM, b"a", T0, "desanet-form-k1", limits=limits)
    again = outbox.enqueue("dukcapil", "POST", "/f", FORM, b"a", T0 + 1, "desanet-form-k1",
                           limits=limits)
    assert again.ref == first.ref and _rows(outbox) == 1
    found = outbox.find_key("desanet-form-k1")
    assert found is not None and found.ref == first.ref
    assert outbox.find_key("desanet-form-other") is None


def test_body_limit_is_configurable(outbox: Outbox) -> None:
    with pytest.raises(SubmissionTooLarge):
        outbox.enqueue("dukcapil", "POST", "/f", FORM, b"x" * 11, T0, limits=QueueLimits(max_body=10))
    outbox.enqueue("dukcapil", "POST", "/f", FORM, b"x" * 10, T0, limits=QueueLimits(max_body=10))
    assert _rows(outbox) == 1


def test_version_1_file_gets_the_client_column(tmp_path: Path) -> None:
    import sqlite3

    from gateway.cache.outbox import _SCHEMA

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(_SCHEMA)
    db.execute("INSERT INTO submissions (ref, idempotency_key, service, method, path_qs, headers, "
               "body, created, state, next_attempt) VALUES ('DN-2222-3333', 'k', 's', 'POST', '/f', "
               "'[]', x'61', 1.0, 'queued', 1.0)")
    db.commit()
    db.close()
    box = Outbox(path)
    try:
        old = box.get("DN-2222-3333")
        assert old is not None and old.client is None and old.body == b"a"
        new = box.enqueue("s", "POST", "/f", [], b"b", T0, client="10.42.0.9")
        assert box.get(new.ref) == new and new.client == "10.42.0.9"
    finally:
        box.close()
