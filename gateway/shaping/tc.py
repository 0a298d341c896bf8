"""tc adapter: HTB trees through pyroute2 netlink (no `tc` processes).

Reads the kernel's classes back, so the daemon can reconcile after a restart
instead of rebuilding; only the differences computed by
:func:`gateway.shaping.plan.diff_classes` are applied.

``Shaper`` is synchronous: every public method blocks on netlink (and holds
a lock). Benchmarks and root tests drive it directly. The daemon holds
``KernelShaper``, which implements :class:`gateway.ports.ShaperPort` by
running each call on the one kernel worker thread.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import threading
from typing import TYPE_CHECKING, Any, Literal

from gateway.errors import ShapingError
from gateway.kernel import KernelWorker, netlink_errors
from gateway.shaping.plan import (
    DEFAULT_MINOR,
    ROOT_MAJOR,
    UPLINK_MINOR,
    ClassStats,
    DeviceTree,
    HtbClass,
    TcOp,
    classid,
    diff_classes,
    leaf_limit_packets,
)

if TYPE_CHECKING:
    from gateway.ports import ShaperPort

log = logging.getLogger("desanet.shaping")

_TC_H_ROOT = 0xFFFFFFFF
_ROOT_HANDLE = ROOT_MAJOR << 16
LEAF_PREFERENCE = ("fq_codel", "cake")  # best first; pfifo is the fallback


class Shaper:
    """Synchronous; every method blocks on netlink. The daemon wraps it in KernelShaper."""

    def __init__(self) -> None:
        self._ipr: Any = None
        self._lock = threading.Lock()
        self.leaf_kind: str | None = None  # decided on first use: fq_codel, cake or pfifo
        # Classes we know exist, per device: we are the tree's only writer, so
        # single-client changes need no dump of thousands of classes.
        self._known: dict[str, dict[int, HtbClass]] = {}

    def _ip(self) -> Any:
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        """Close the netlink socket. Blocks briefly."""
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _index(self, device: str) -> int:
        found = self._ip().link_lookup(ifname=device)
        if not found:
            raise ShapingError(f"interface {device!r} does not exist; check network.* in the config")
        return int(found[0])

    # -- whole trees ----------------------------------------------------------

    def reconcile(self, tree: DeviceTree) -> list[TcOp]:
        """Make the device's tree match ``tree``; return the operations applied.

        Blocks: dumps the device's classes, then runs the differences.
        """
        with self._lock:
            index = self._index(tree.device)
            self._ensure_root(index)
            observed = self._observe(index)
            ops = diff_classes(tree, observed)
            self._apply(index, ops)
            if self.leaf_kind is None:
                # a restart with nothing to add: report the leaves already in place
                self.leaf_kind = self._leaf_in_use(index)
            self._known[tree.device] = tree.by_minor()
            return ops

    def upsert(self, device: str, cls: HtbClass) -> str:
        """Add a class, or change it in place (connections and queue kept). Blocks."""
        with self._lock:
            index = self._index(device)
            known = self._known.setdefault(device, {})
            have = known.get(cls.minor)
            if have is not None and have.same_shape(cls):
                return "unchanged"
            op = TcOp("change", cls) if have is not None else TcOp("add", cls)
            self._apply(index, [op])
            known[cls.minor] = cls
            return op.action

    def delete(self, device: str, cls: HtbClass) -> bool:
        """Delete a class we added; False when we know of none. Blocks."""
        with self._lock:
            known = self._known.setdefault(device, {})
            if cls.minor not in known:
                return False
            self._apply(self._index(device), [TcOp("delete", cls)])
            del known[cls.minor]
            return True

    def apply(self, device: str, ops: list[TcOp]) -> None:
        """Run ``ops`` in order. Blocks."""
        with self._lock:
            self._apply(self._index(device), ops)

    def observe(self, device: str) -> dict[int, HtbClass]:
        """The device's HTB classes as the kernel reports them. Blocks."""
        with self._lock:
            return self._observe(self._index(device))

    def remove(self, device: str) -> None:
        """Remove our root qdisc (and every class under it). Blocks."""
        with self._lock:
            index = self._index(device)
            if self._root_is_ours(index):
                self._call("del", index=index, handle=_ROOT_HANDLE, parent=_TC_H_ROOT)
            self._known.pop(device, None)

    def intact(self, device: str) -> bool:
        """Is our HTB root qdisc on ``device``? Blocks: one netlink request for the
        device's root qdisc (no dump: the cost does not grow with the clients).

        False when the root was deleted or replaced by hand, the device is gone, or
        it was created again (a PPP or USB modem's interface comes back bare).
        """
        try:
            index = socket.if_nametoindex(device)
        except OSError:
            return False
        root = root_qdisc(index)
        return root is not None and root == ("htb", _ROOT_HANDLE)

    def stats(self, device: str) -> dict[int, ClassStats]:
        """Counters of our classes, by minor. Blocks: one class dump."""
        with self._lock:
            out: dict[int, ClassStats] = {}
            for msg in self._ip().get_classes(self._index(device)):
                if msg["handle"] >> 16 != ROOT_MAJOR:
                    continue
                st = msg.get_attr("TCA_STATS2")
                basic = (st.get_attr("TCA_STATS_BASIC") if st else None) or {}
                queue = (st.get_attr("TCA_STATS_QUEUE") if st else None) or {}
                minor = msg["handle"] & 0xFFFF
                out[minor] = ClassStats(minor, basic.get("bytes", 0), basic.get("packets", 0),
                                        queue.get("drops", 0), queue.get("backlog", 0),
                                        queue.get("overlimits", 0))
            return out

    # -- internals --------------------------------------------------------------

    def _root(self, index: int) -> Any:
        for q in self._ip().get_qdiscs(index):
            if q["parent"] == _TC_H_ROOT:
                return q
        return None

    def _root_is_ours(self, index: int) -> bool:
        q = self._root(index)
        return q is not None and q.get_attr("TCA_KIND") == "htb" and q["handle"] == _ROOT_HANDLE

    def _ensure_root(self, index: int) -> None:
        if self._root_is_ours(index):
            opts = self._root(index).get_attr("TCA_OPTIONS")
            init = opts.get_attr("TCA_HTB_INIT") if opts else None
            if init is None or init.get("defcls") == DEFAULT_MINOR:
                return
            # A tree from an older desanet with another default class. HTB
            # cannot change its default in place, so it is rebuilt (once).
        # First start, an old tree, or someone replaced it: the only moments
        # the device's queueing is rebuilt. (A "replace" with our own handle
        # would be taken as a change, which HTB refuses: delete, then add.)
        if self._root_is_ours(index):
            self._call("del", index=index, handle=_ROOT_HANDLE, parent=_TC_H_ROOT)
        self._call("replace", "htb", index, _ROOT_HANDLE, parent=_TC_H_ROOT,
                   default=DEFAULT_MINOR)

    def _observe(self, index: int) -> dict[int, HtbClass]:
        found: dict[int, HtbClass] = {}
        for msg in self._ip().get_classes(index):
            if msg.get_attr("TCA_KIND") != "htb" or msg["handle"] >> 16 != ROOT_MAJOR:
                continue
            opts = msg.get_attr("TCA_OPTIONS")
            parms = opts.get_attr("TCA_HTB_PARMS") if opts else None
            if parms is None:
                continue
            rate = (opts.get_attr("TCA_HTB_RATE64") or parms["rate"]) * 8
            ceil = (opts.get_attr("TCA_HTB_CEIL64") or parms["ceil"]) * 8
            parent = msg["parent"]
            # HTB reports a top-level class's parent as TC_H_ROOT, not as the
            # qdisc handle 1:0 that it was added under.
            parent_minor = None if parent in (_ROOT_HANDLE, _TC_H_ROOT) else parent & 0xFFFF
            minor = msg["handle"] & 0xFFFF
            found[minor] = HtbClass(minor, parent_minor, rate, ceil, parms["prio"], "")
        return found

    def _apply(self, index: int, ops: list[TcOp]) -> None:
        for op in ops:
            cls = op.cls
            if op.action == "delete":
                self._call("del-class", index=index, handle=classid(cls.minor),
                           parent=self._parent_id(cls))
                continue
            self._call("add-class" if op.action == "add" else "change-class", "htb", index,
                       classid(cls.minor), parent=self._parent_id(cls), rate=f"{cls.rate}bit",
                       ceil=f"{cls.ceil}bit", prio=cls.prio, quantum=cls.quantum)
            if op.action == "add" and cls.minor != UPLINK_MINOR:
                self._attach_leaf(index, cls)

    @staticmethod
    def _parent_id(cls: HtbClass) -> int:
        return _ROOT_HANDLE if cls.parent_minor is None else classid(cls.parent_minor)

    def _leaf_in_use(self, index: int) -> str | None:
        for q in self._ip().get_qdiscs(index):
            kind = q.get_attr("TCA_KIND")
            parent = q["parent"]
            if parent != _TC_H_ROOT and parent >> 16 == ROOT_MAJOR and parent & 0xFFFF \
                    and kind in (*LEAF_PREFERENCE, "pfifo"):
                return str(kind)
        return None

    def _attach_leaf(self, index: int, cls: HtbClass) -> None:
        handle = cls.minor << 16
        parent = classid(cls.minor)
        candidates = [self.leaf_kind] if self.leaf_kind else list(LEAF_PREFERENCE)
        for kind in candidates:
            if kind == "pfifo":
                break
            try:
                self._ip().tc("replace", kind, index, handle, parent=parent)
            except netlink_errors() as exc:  # kernel without this qdisc: try the next
                log.info("leaf qdisc %s refused (%s); trying the next", kind, exc)
                continue
            self.leaf_kind = kind
            return
        self.leaf_kind = "pfifo"
        self._call("replace", "pfifo", index, handle, parent=parent,
                   limit=leaf_limit_packets(cls))

    def _call(self, *args: Any, **kwargs: Any) -> None:
        try:
            self._ip().tc(*args, **kwargs)
        except netlink_errors() as exc:
            raise ShapingError(f"tc {args[0]} {kwargs.get('handle', '')!s} failed: {exc}") from exc


# rtnetlink, just enough to ask for one device's root qdisc (linux/rtnetlink.h,
# linux/pkt_sched.h): nlmsghdr = len u32, type u16, flags u16, seq u32, pid u32;
# tcmsg = family u8, pad u8, pad u16, ifindex s32, handle u32, parent u32, info u32.
_RTM_NEWQDISC, _RTM_GETQDISC, _NLMSG_ERROR = 36, 38, 2
_NLM_F_REQUEST, _NLM_F_ECHO = 0x1, 0x8  # without ECHO the kernel only multicasts the answer
_TCA_KIND = 1
_HDR = struct.Struct("=IHHII")
_TCMSG = struct.Struct("=BBHiIII")


def root_qdisc(index: int) -> tuple[str, int] | None:
    """(kind, handle) of the root qdisc of interface ``index``; None when the device is
    gone. Blocks: one netlink request and its answer, on a socket of its own."""
    body = _TCMSG.pack(0, 0, 0, index, 0, _TC_H_ROOT, 0)
    flags = _NLM_F_REQUEST | _NLM_F_ECHO
    request = _HDR.pack(_HDR.size + len(body), _RTM_GETQDISC, flags, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(5.0)
        sock.send(request)
        for _ in range(8):  # the answer, or an error; never more than a few messages
            found = _root_answer(sock.recv(65536), index)
            if found is not False:
                return found
    raise ShapingError(f"no answer for the root qdisc of interface {index}")


def _root_answer(data: bytes, index: int) -> tuple[str, int] | Literal[False] | None:
    """The (kind, handle) or None (no device / a built-in root: nothing of ours) in one
    netlink read; False when the read held neither."""
    offset = 0
    while offset + _HDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _HDR.unpack_from(data, offset)
        if length < _HDR.size:
            break
        if kind == _NLMSG_ERROR:
            code = -struct.unpack_from("=i", data, offset + _HDR.size)[0]
            # ENODEV: gone; EINVAL: a built-in root (noqueue, pfifo_fast is not) the
            # kernel does not report; ENOENT: no root at all.
            if code in (0, errno.ENODEV, errno.ENOENT, errno.EINVAL):
                return None
            raise ShapingError(f"asking for the root qdisc of interface {index} failed: "
                               f"{errno.errorcode.get(code, code)}")
        if kind == _RTM_NEWQDISC:
            start = offset + _HDR.size
            handle = _TCMSG.unpack_from(data, start)[4]
            pos = start + _TCMSG.size
            while pos + 4 <= offset + length:
                alen, atype = struct.unpack_from("=HH", data, pos)
                if alen < 4:
                    break
                if atype == _TCA_KIND:
                    name = data[pos + 4:pos + alen].split(b"\0", 1)[0].decode()
                    return name, handle
                pos += (alen + 3) & ~3
            return "", handle
        offset += (length + 3) & ~3
    return False


class KernelShaper:
    """ShaperPort over a synchronous ``Shaper``: every call runs on the kernel worker.

    No method blocks the event loop: each awaits the kernel worker thread,
    where the ``Shaper`` call blocks on netlink. Errors are ShapingError.
    """

    def __init__(self, shaper: Shaper, worker: KernelWorker) -> None:
        self.shaper = shaper
        self.worker = worker

    @property
    def leaf_kind(self) -> str | None:
        """fq_codel, cake or pfifo once decided (None before the first class). Does not block."""
        return self.shaper.leaf_kind

    async def reconcile(self, tree: DeviceTree) -> int:
        """Make the device's tree equal ``tree``; return how many changes ran.

        Awaits the kernel worker (a class dump, then the changes).
        """
        return len(await self.worker.call(self.shaper.reconcile, tree))

    async def remove(self, device: str) -> None:
        """Remove our root qdisc from ``device``. Awaits the kernel worker."""
        await self.worker.call(self.shaper.remove, device)

    async def upsert(self, device: str, cls: HtbClass) -> None:
        """Add or change one class in place. Awaits the kernel worker."""
        await self.worker.call(self.shaper.upsert, device, cls)

    async def delete(self, device: str, cls: HtbClass) -> None:
        """Delete one class (nothing when we know of none). Awaits the kernel worker."""
        await self.worker.call(self.shaper.delete, device, cls)

    async def intact(self, device: str) -> bool:
        """Our root qdisc on ``device``? Awaits the kernel worker (one netlink request)."""
        return await self.worker.call(self.shaper.intact, device)

    async def stats(self, device: str) -> dict[int, ClassStats]:
        """Counters of our classes. Awaits the kernel worker (one class dump)."""
        return await self.worker.call(self.shaper.stats, device)

    async def close(self) -> None:
        """Close the netlink socket. Awaits the kernel worker."""
        await self.worker.call(self.shaper.close)


def _check(x: KernelShaper) -> ShaperPort:  # mypy: the adapter satisfies its port
    return x
