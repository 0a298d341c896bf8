"""tcnl without a kernel: request encoding read back by the lean dump decoder, and batching."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.shaping import tcnl


def _as_dump(requests: list[tcnl.Request]) -> Iterator[tuple[bytes, int, int]]:
    # A class request has the layout of the kernel's dump answer (tcmsg, kind,
    # options), plus statistics the decoder must step over.
    for r in requests:
        body = r.body + tcnl._attr(7, b"\x01" * 40)  # TCA_STATS2-like trailing attribute
        yield body, 0, len(body)


def test_dump_decoder_reads_back_what_the_requests_encode(monkeypatch: pytest.MonkeyPatch) -> None:
    reqs = [
        tcnl.htb_class(3, 0x10001, 0x10000, 100_000_000, 100_000_000, 0, 200_000, create=True),
        tcnl.htb_class(3, 0x10105, 0x10001, 2_000_000, 50_000_000, 4, 25_000, create=False),
        tcnl.htb_class(3, 0x10003, 0x10000, 80_000_000_000, 80_000_000_000, 0, 200_000, create=True),
    ]
    monkeypatch.setattr(tcnl, "_dump", lambda kind, index: _as_dump(reqs))
    got = tcnl.dump_htb_classes(3)
    assert got == [
        tcnl.HtbParms(0x10001, 0x10000, 100_000_000, 100_000_000, 0),
        tcnl.HtbParms(0x10105, 0x10001, 2_000_000, 50_000_000, 4),
        tcnl.HtbParms(0x10003, 0x10000, 80_000_000_000, 80_000_000_000, 0),  # 64-bit rates
    ]


def test_dump_decoder_skips_other_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    other = tcnl.Request(tcnl.RTM_NEWTCLASS, 0, tcnl._tcmsg(3, 0x20001, 0x20000)
                         + tcnl._attr(tcnl.TCA_KIND, b"hfsc\0") + tcnl._attr(tcnl.TCA_OPTIONS, b""))
    ours = tcnl.htb_class(3, 0x10002, 0x10001, 1_000_000, 1_000_000, 7, 1514, create=True)
    monkeypatch.setattr(tcnl, "_dump", lambda kind, index: _as_dump([other, ours]))
    assert [c.handle for c in tcnl.dump_htb_classes(3)] == [0x10002]


def test_requests_carry_ack_and_create_flags() -> None:
    add = tcnl.htb_class(3, 0x10105, 0x10001, 1, 1, 0, 1514, create=True).encode(7)
    change = tcnl.htb_class(3, 0x10105, 0x10001, 1, 1, 0, 1514, create=False).encode(8)
    flags = lambda raw: int.from_bytes(raw[6:8], "little")  # noqa: E731
    assert flags(add) & (tcnl.NLM_F_ACK | tcnl.NLM_F_CREATE | tcnl.NLM_F_EXCL) == \
        tcnl.NLM_F_ACK | tcnl.NLM_F_CREATE | tcnl.NLM_F_EXCL
    assert flags(change) & tcnl.NLM_F_CREATE == 0 and flags(change) & tcnl.NLM_F_ACK
    assert int.from_bytes(add[0:4], "little") == len(add)


def test_batches_never_split_a_class_from_its_leaf(monkeypatch: pytest.MonkeyPatch) -> None:
    sends: list[int] = []

    def fake_chunk(self: tcnl.Batcher, sock: object, requests: list[tcnl.Request]) -> list[int]:
        sends.append(len(requests))
        return [0] * len(requests)

    monkeypatch.setattr(tcnl.Batcher, "_chunk", fake_chunk)
    monkeypatch.setattr(tcnl, "open_socket", lambda: None)
    req = tcnl.delete_class(3, 0x10105, 0x10001)
    n = tcnl.CHUNK * 2 + 5
    # requests that would open the 2nd and 3rd sends are leaves: each stays with its class
    joined = frozenset({tcnl.CHUNK, 2 * tcnl.CHUNK + 1, 5})
    codes = tcnl.Batcher().run([req] * n, joined)
    assert len(codes) == n and sum(sends) == n
    assert sends == [tcnl.CHUNK + 1, tcnl.CHUNK + 1, 3]
