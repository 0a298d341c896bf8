"""KernelNeighbours: the event-fed client map behind the NeighboursPort, without root.

The kernel is played by a fake ``Neighbours`` (its dump and its one-address
lookup) and a datagram socket pair that carries netlink event bytes
(tests/unit/nlkit.py) to the adapter's non-blocking event socket.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.kernel import KernelWorker
from gateway.netinfo import neighbours as nb
from gateway.netinfo.clientmap import UNKNOWN, Miss, usable_mac
from gateway.netinfo.neighbours import KernelNeighbours, Neighbours
from gateway.netinfo.rtnl import NeighbourMsg

from .nlkit import FAILED, INCOMPLETE, PERMANENT, REACHABLE, link, neigh

A, B, C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
LAN = 7


class EventPipe:
    """The adapter's end of a datagram socket pair; ``fail`` makes the next recv raise."""

    def __init__(self) -> None:
        self.ours, self.kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ours.setblocking(False)
        self.fail: list[OSError] = []
        self.closed = False

    def recv(self, bufsize: int, /) -> bytes:
        if self.fail:
            raise self.fail.pop(0)
        return self.ours.recv(bufsize)

    def fileno(self) -> int:
        return self.ours.fileno()

    def close(self) -> None:
        self.closed = True
        self.ours.close()
        self.kernel.close()

    def send(self, *datagrams: bytes) -> None:
        for d in datagrams:
            self.kernel.send(d)


class FakeKernel(Neighbours):
    """The kernel's neighbour table of one interface; counts dumps and single lookups."""

    def __init__(self, lease_file: str, worker: KernelWorker) -> None:
        super().__init__(lease_file)
        self.worker = worker
        self.links = {"br-lan": LAN}
        self.table: dict[str, tuple[str | None, int]] = {}
        self.dumps: list[str] = []
        self.gets: list[str] = []
        self.fail_dumps = 0
        self.during_dump: Callable[[], None] | None = None

    def _msg(self, ip: str, ifindex: int) -> NeighbourMsg:
        mac, state = self.table[ip]
        return NeighbourMsg(False, socket.AF_INET, ifindex, state, ip, mac)

    def dump(self, interface: str) -> tuple[int | None, list[NeighbourMsg]]:
        assert self.worker.on_worker(), "the dump blocks: it must run on the kernel worker"
        self.dumps.append(interface)
        if self.fail_dumps:
            self.fail_dumps -= 1
            raise OSError(errno.EBUSY, "busy")
        index = self.links.get(interface)
        taken = [] if index is None else [self._msg(ip, index) for ip in self.table]
        if self.during_dump is not None:  # the kernel changes while the dump is read
            self.during_dump()
            self.during_dump = None
        return index, taken

    def kernel_mac_of(self, ip: str, interface: str | None) -> str | Miss:
        assert self.worker.on_worker()
        self.gets.append(ip)
        if interface not in self.links or ip not in self.table:
            return UNKNOWN
        return usable_mac(self._msg(ip, self.links[interface])) or Miss.UNUSABLE


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.worker = KernelWorker()
        self.leases = tmp_path / "dnsmasq.leases"
        self.kernel = FakeKernel(str(self.leases), self.worker)
        self.pipe = EventPipe()
        self.lan = "br-lan"
        self.port = KernelNeighbours(self.kernel, self.worker, lambda: self.lan, lambda: self.pipe)

    def set(self, ip: str, mac: str | None, state: int = REACHABLE, event: bool = True) -> None:
        """Change the kernel's entry (and send its event, unless ``event`` is False)."""
        self.kernel.table[ip] = (mac, state)
        if event:
            self.pipe.send(neigh(ip, mac, state, LAN))

    def delete(self, ip: str) -> None:
        mac, state = self.kernel.table.pop(ip)
        self.pipe.send(neigh(ip, mac, state, LAN, deleted=True))


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    r.set("10.42.0.5", A, PERMANENT, event=False)
    r.set("10.42.0.6", B, event=False)
    await r.port.start()
    try:
        yield r
    finally:
        await r.port.close()
        r.worker.shutdown()


async def until(predicate: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    """Let the event loop run until ``predicate()`` holds (fails after ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def test_lookups_come_from_the_map_without_asking_the_kernel(rig: Rig) -> None:
    assert rig.kernel.dumps == ["br-lan"] and rig.port.map.synced
    for _ in range(3):
        assert await rig.port.mac_of("10.42.0.5") == A
        assert await rig.port.mac_of("10.42.0.6") == B
    assert rig.kernel.gets == []  # no netlink request, no trip to the kernel worker


async def test_a_changed_mac_is_seen_by_the_next_lookup(rig: Rig) -> None:
    # The event is queued; the lookup takes it before answering (no loop turn needed).
    rig.set("10.42.0.5", C, REACHABLE)
    assert await rig.port.mac_of("10.42.0.5") == C
    rig.set("10.42.0.7", A)  # a new client
    assert await rig.port.mac_of("10.42.0.7") == A
    assert rig.kernel.gets == []


async def test_events_are_taken_when_they_arrive_without_a_lookup(rig: Rig) -> None:
    before = rig.port.map.applied
    rig.set("10.42.0.9", C)
    await until(lambda: rig.port.map.applied > before, "the event reader")
    assert rig.port.map.lookup("10.42.0.9") == C


async def test_a_deleted_entry_no_longer_identifies(rig: Rig) -> None:
    rig.delete("10.42.0.6")
    assert await rig.port.mac_of("10.42.0.6") is None
    assert rig.kernel.gets == ["10.42.0.6"]  # unknown to the map: one single lookup, not a dump
    assert await rig.port.mac_of("10.42.0.5") == A  # positive control


async def test_failed_and_incomplete_do_not_identify_but_a_lease_still_does(rig: Rig) -> None:
    rig.leases.write_text(f"1700000000 {B.upper()} 10.42.0.6 phone *\n")
    rig.set("10.42.0.6", B, FAILED)
    rig.set("10.42.0.8", None, INCOMPLETE)
    assert await rig.port.mac_of("10.42.0.8") is None
    assert await rig.port.mac_of("10.42.0.6") == B  # as before the map: the lease answers
    assert rig.kernel.gets == []  # the map knew the entries: no kernel request
    rig.leases.write_text("")
    assert await rig.port.mac_of("10.42.0.6") is None  # the lease file is read again on change


async def test_a_miss_costs_one_single_lookup_and_is_not_cached(rig: Rig) -> None:
    # The kernel has an entry whose event the map has not seen (cannot happen
    # with a working event socket; the single lookup is the safety net).
    rig.set("10.42.0.20", C, event=False)
    assert await rig.port.mac_of("10.42.0.20") == C
    rig.kernel.table.pop("10.42.0.20")
    assert await rig.port.mac_of("10.42.0.20") is None  # its answer was not kept in the map
    assert rig.kernel.gets == ["10.42.0.20", "10.42.0.20"] and rig.kernel.dumps == ["br-lan"]


async def test_an_overrun_rebuilds_the_map_from_a_new_dump(rig: Rig) -> None:
    rig.set("10.42.0.5", C, event=False)  # this event was lost in the overrun
    rig.pipe.fail.append(OSError(errno.ENOBUFS, "No buffer space available"))
    rig.pipe.send(b"")  # wakes the reader, whose recv then fails
    await until(lambda: len(rig.kernel.dumps) == 2 and rig.port.map.synced, "the resync")
    assert await rig.port.mac_of("10.42.0.5") == C
    assert rig.port.map.resyncs == 2


async def test_lookups_while_the_map_is_rebuilt_ask_the_kernel(rig: Rig) -> None:
    rig.port.map.invalidate()
    assert await rig.port.mac_of("10.42.0.5") == A
    assert rig.kernel.gets == ["10.42.0.5"]


async def test_events_during_the_dump_are_applied_after_it_in_order(tmp_path: Path) -> None:
    r = Rig(tmp_path)
    r.set("10.42.0.5", A, event=False)

    def change_then_delete() -> None:  # after the dump read the table, before it returns
        r.set("10.42.0.5", B)
        r.set("10.42.0.6", C)
        r.delete("10.42.0.6")

    r.kernel.during_dump = change_then_delete
    await r.port.start()
    try:
        assert r.port.map.lookup("10.42.0.5") == B  # the dump said A; the event came after it
        assert r.port.map.lookup("10.42.0.6") is UNKNOWN
    finally:
        await r.port.close()
        r.worker.shutdown()


async def test_a_failing_dump_is_retried_and_lookups_work_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(nb, "RESYNC_RETRY", 0.01)
    r = Rig(tmp_path)
    r.set("10.42.0.5", A, event=False)
    r.kernel.fail_dumps = 2
    await r.port.start()  # does not raise
    try:
        assert "dumping the neighbour table of br-lan failed" in caplog.text
        assert await r.port.mac_of("10.42.0.5") == A  # by a single lookup
        await until(lambda: r.port.map.synced, "the retried dump")
        assert len(r.kernel.dumps) == 3
    finally:
        await r.port.close()
        r.worker.shutdown()


async def test_a_new_lan_interface_in_the_config_rebuilds_the_map(rig: Rig) -> None:
    rig.kernel.links["br-new"] = 9
    rig.lan = "br-new"
    await rig.port.mac_of("10.42.0.5")  # notices the change; asks the kernel meanwhile
    await until(lambda: rig.port.map.synced and rig.port.map.ifindex == 9, "the new interface")
    assert rig.kernel.dumps == ["br-lan", "br-new"]
    rig.pipe.send(neigh("10.42.0.30", C, ifindex=LAN))  # the old interface: ignored now
    rig.pipe.send(neigh("10.42.0.31", C, ifindex=9))
    assert await rig.port.mac_of("10.42.0.31") == C
    assert rig.port.map.lookup("10.42.0.30") is UNKNOWN
    assert rig.kernel.gets == ["10.42.0.5"]  # only the lookup during the rebuild


async def test_the_lan_interface_deleted_and_created_again_rebuilds_the_map(rig: Rig) -> None:
    del rig.kernel.links["br-lan"]
    rig.pipe.send(link(LAN, "br-lan", deleted=True))
    await until(lambda: rig.port.map.synced and rig.port.map.ifindex is None, "the gone LAN")
    assert await rig.port.mac_of("10.42.0.5") is None
    rig.pipe.send(link(3, "wan0"))  # another interface: nothing to do
    rig.kernel.links["br-lan"] = 12
    rig.pipe.send(link(12, "br-lan"))
    await until(lambda: rig.port.map.synced and rig.port.map.ifindex == 12, "the new LAN")
    assert rig.kernel.dumps == ["br-lan", "br-lan", "br-lan"]


async def test_ip_of_asks_the_leases_then_the_map(rig: Rig) -> None:
    rig.leases.write_text(f"1700000000 {C} 10.42.0.100 phone *\n")
    assert await rig.port.ip_of(C.upper()) == "10.42.0.100"
    assert await rig.port.ip_of(B) == "10.42.0.6"
    assert await rig.port.leases() == {"10.42.0.100": C}
    rig.set("10.42.0.6", B, FAILED)
    assert await rig.port.ip_of(B) is None


async def test_close_stops_reading_and_closes_the_socket(tmp_path: Path) -> None:
    r = Rig(tmp_path)
    await r.port.start()
    fd = r.pipe.fileno()
    await r.port.close()
    assert r.pipe.closed
    loop = asyncio.get_running_loop()
    assert not loop.remove_reader(fd)  # no reader was left registered
    r.worker.shutdown()


async def test_without_a_lan_interface_only_the_leases_answer(tmp_path: Path) -> None:
    worker = KernelWorker()
    leases = tmp_path / "dnsmasq.leases"
    leases.write_text(f"1700000000 {A} 10.42.0.100 phone *\n")
    port = KernelNeighbours(Neighbours(str(leases)), worker)
    await port.start()  # nothing to follow
    try:
        assert await port.mac_of("10.42.0.100") == A
        assert await port.mac_of("10.42.0.101") is None
        assert await port.ip_of(A) == "10.42.0.100"
    finally:
        await port.close()
        worker.shutdown()


async def test_lease_host_names_are_dns_labels_only_and_follow_the_file(tmp_path: Path) -> None:
    """The name a phone sends is its owner's text, shown to the technician: only a DNS label
    (what dnsmasq itself keeps) is passed on; "*" is no name."""
    worker = KernelWorker()
    leases = tmp_path / "dnsmasq.leases"
    leases.write_text(f"1700000000 {A} 10.42.0.100 budi-phone 01:aa\n"
                      f"1700000000 {B} 10.42.0.101 * 01:bb\n"
                      "1700000000 02:00:00:00:00:0c 10.42.0.102 [bold]x\x1b[2J *\n"
                      "1700000000 02:00:00:00:00:0d 10.42.0.103 -lead *\n")
    port = KernelNeighbours(Neighbours(str(leases)), worker)
    await port.start()
    try:
        assert await port.host_names() == {"10.42.0.100": "budi-phone"}
        assert len(await port.leases()) == 4  # every lease still counts, named or not
        leases.write_text(f"1700000000 {B} 10.42.0.101 ani-tablet *\n")
        assert await port.host_names() == {"10.42.0.101": "ani-tablet"}
    finally:
        await port.close()
        worker.shutdown()


# -- the synchronous requests (Neighbours) over a socket pair ---------------------------------


def test_requests_take_their_own_answer_and_skip_late_ones(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from .nlkit import done, error

    n = Neighbours(str(tmp_path / "leases"), timeout=2.0)
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.settimeout(2.0)
    n._sock = ours
    monkeypatch.setattr(socket, "if_nametoindex", lambda name: LAN)
    try:
        # seq 1: a get. A late answer of an abandoned request (seq 7) comes first.
        n._seq = 0
        kernel.send(neigh("10.42.0.9", C, seq=7))
        kernel.send(neigh("10.42.0.5", A, seq=1))
        assert n.kernel_mac_of("10.42.0.5", "br-lan") == A
        kernel.send(error(2, errno.ENOENT))  # seq 2: no such entry
        assert n.kernel_mac_of("10.42.0.6", "br-lan") is UNKNOWN
        kernel.send(neigh("10.42.0.7", A, FAILED, seq=3))
        assert n.kernel_mac_of("10.42.0.7", "br-lan") is Miss.UNUSABLE
        # seq 4: a dump in two datagrams, ended by DONE; another interface's entry is dropped
        kernel.send(neigh("10.42.0.5", A, seq=4) + neigh("10.42.0.6", B, seq=4, ifindex=3))
        kernel.send(neigh("10.42.0.8", C, seq=4) + done(4))
        index, msgs = n.dump("br-lan")
        assert index == LAN and [m.ip for m in msgs] == ["10.42.0.5", "10.42.0.8"]
        assert n.kernel_mac_of("no-ip", "br-lan") is UNKNOWN  # not sent at all
        assert len(kernel.recv(4096)) > 0  # the requests did go out
    finally:
        n.close()
        kernel.close()
    assert n.kernel_mac_of("10.42.0.5", None) is UNKNOWN  # no LAN interface: nothing asked


async def test_ip_of_while_the_map_is_rebuilt_dumps_the_lan(rig: Rig) -> None:
    rig.port.map.invalidate()
    assert rig.port.map.ip_of(B) is None  # the map says nothing now
    assert await rig.port.ip_of(B) == "10.42.0.6"  # from a dump on the kernel worker
    assert rig.kernel.dumps[-1] == "br-lan" and len(rig.kernel.dumps) >= 2
