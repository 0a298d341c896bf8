"""tc adapter: HTB trees through netlink (no `tc` processes).

Class and leaf changes go in batches of raw rtnetlink requests and the class
and counter dumps decode only what is used (:mod:`gateway.shaping.tcnl`);
pyroute2 is kept for the rare root qdisc changes.

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
import os
import socket
import threading
from typing import TYPE_CHECKING, Any

from gateway.errors import ShapingError
from gateway.kernel import KernelWorker, netlink_errors
from gateway.shaping import tcnl
from gateway.shaping.plan import (
    DEFAULT_MINOR,
    ROOT_MAJOR,
    UPLINK_MINOR,
    ClassStats,
    DeviceTree,
    HtbClass,
    TcOp,
    classid,
    classid_text,
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
        self._batcher = tcnl.Batcher()  # class and leaf changes, many per send

    def _ip(self) -> Any:
        if self._ipr is None:
            from gateway.pyroute import lean

            lean()  # not all of pyroute2 (docs/benchmarks.md, footprint)
            from pyroute2.iproute import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        """Close the netlink sockets. Blocks briefly."""
        self._batcher.close()
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _index(self, device: str) -> int:
        try:
            return socket.if_nametoindex(device)
        except OSError:
            raise ShapingError(
                f"interface {device!r} does not exist; check network.* in the config") from None

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
            index = self._index(device)
            try:
                dumped = tcnl.dump_class_counters(index)
            except OSError as exc:
                raise ShapingError(f"reading the counters of {device} failed: {exc}") from exc
            return {c.handle & 0xFFFF: ClassStats(c.handle & 0xFFFF, c.bytes, c.packets, c.drops,
                                                  c.backlog, c.overlimits)
                    for c in dumped if c.handle >> 16 == ROOT_MAJOR}

    # -- internals --------------------------------------------------------------

    def _root_info(self, index: int) -> tcnl.RootQdisc | None:
        try:
            return tcnl.root_qdisc(index)
        except OSError as exc:
            raise ShapingError(f"asking for the root qdisc of interface {index} failed: {exc}") \
                from exc

    def _root_is_ours(self, index: int) -> bool:
        root = self._root_info(index)
        return root is not None and root.kind == "htb" and root.handle == _ROOT_HANDLE

    def _ensure_root(self, index: int) -> None:
        root = self._root_info(index)
        ours = root is not None and root.kind == "htb" and root.handle == _ROOT_HANDLE
        if ours and root is not None and root.defcls in (None, DEFAULT_MINOR):
            return
        # First start, an old tree with another default class (HTB cannot change
        # its default in place), or someone replaced it: the only moments the
        # device's queueing is rebuilt. (A "replace" with our own handle would be
        # taken as a change, which HTB refuses: delete, then add.)
        if ours:
            self._call("del", index=index, handle=_ROOT_HANDLE, parent=_TC_H_ROOT)
        self._call("replace", "htb", index, _ROOT_HANDLE, parent=_TC_H_ROOT,
                   default=DEFAULT_MINOR)

    def _observe(self, index: int) -> dict[int, HtbClass]:
        try:
            dumped = tcnl.dump_htb_classes(index)
        except OSError as exc:
            raise ShapingError(f"reading the classes of interface {index} failed: {exc}") from exc
        found: dict[int, HtbClass] = {}
        for c in dumped:
            if c.handle >> 16 != ROOT_MAJOR:
                continue
            # HTB reports a top-level class's parent as TC_H_ROOT, not as the
            # qdisc handle 1:0 that it was added under.
            parent_minor = None if c.parent in (_ROOT_HANDLE, _TC_H_ROOT) else c.parent & 0xFFFF
            minor = c.handle & 0xFFFF
            found[minor] = HtbClass(minor, parent_minor, c.rate, c.ceil, c.prio, "")
        return found

    def _apply(self, index: int, ops: list[TcOp]) -> None:
        if self.leaf_kind is None:
            # The first leaf decides the kind by trying each (one request at a
            # time); everything before and after it goes in batches.
            first = next((i for i, op in enumerate(ops)
                          if op.action == "add" and op.cls.minor != UPLINK_MINOR), None)
            if first is not None:
                self._batch(index, ops[:first])
                cls = ops[first].cls
                self._batch(index, [ops[first]], leaves=False)
                try:
                    self._attach_leaf(index, cls)
                except ShapingError:
                    self._forget(index, [cls])
                    raise
                ops = ops[first + 1:]
        self._batch(index, ops)

    def _batch(self, index: int, ops: list[TcOp], leaves: bool = True) -> None:
        """Run ``ops`` (and the leaves of added classes) in a few netlink sends.

        Raises ShapingError naming the first class the kernel refused. A class
        whose leaf was refused is deleted again, so the next reconcile adds both."""
        requests: list[tcnl.Request] = []
        owners: list[tuple[TcOp, bool]] = []  # (op, is the leaf qdisc)
        for op in ops:
            cls = op.cls
            handle, parent = classid(cls.minor), self._parent_id(cls)
            if op.action == "delete":
                requests.append(tcnl.delete_class(index, handle, parent))
                owners.append((op, False))
                continue
            requests.append(tcnl.htb_class(index, handle, parent, cls.rate, cls.ceil, cls.prio,
                                           cls.quantum, create=op.action == "add"))
            owners.append((op, False))
            if leaves and op.action == "add" and cls.minor != UPLINK_MINOR:
                requests.append(self._leaf_request(index, cls))
                owners.append((op, True))
        if not requests:
            return
        codes = self._run(index, requests, frozenset(i for i, (_op, leaf) in enumerate(owners) if leaf))
        failed = [(op, leaf, code) for (op, leaf), code in zip(owners, codes, strict=True) if code]
        if not failed:
            return
        refused = {op.cls.minor for op, leaf, _ in failed if not leaf}
        self._forget(index, [op.cls for op, leaf, _ in failed if leaf and op.cls.minor not in refused])
        op, leaf, code = failed[0]
        what = f"leaf qdisc of class {classid_text(op.cls.minor)}" if leaf \
            else f"class {classid_text(op.cls.minor)}"
        label = f" ({op.cls.label})" if op.cls.label else ""
        more = f"; {len(failed) - 1} more of {len(requests)} changes failed" if len(failed) > 1 else ""
        raise ShapingError(f"tc {op.action} {what}{label} on interface {index} failed: "
                           f"{errno.errorcode.get(code, code)} ({os.strerror(code)}){more}")

    def _run(self, index: int, requests: list[tcnl.Request],
             joined: frozenset[int] = frozenset()) -> list[int]:
        try:
            return self._batcher.run(requests, joined)
        except OSError as exc:
            raise ShapingError(f"tc batch of {len(requests)} changes on interface {index} "
                               f"failed: {exc}") from exc

    def _forget(self, index: int, classes: list[HtbClass]) -> None:
        """Best effort: delete classes left without their leaf qdisc."""
        if not classes:
            return
        try:
            self._batcher.run([tcnl.delete_class(index, classid(c.minor), self._parent_id(c))
                               for c in classes])
        except OSError as exc:
            log.warning("could not delete %d half-made classes: %s", len(classes), exc)

    def _leaf_request(self, index: int, cls: HtbClass) -> tcnl.Request:
        kind = self.leaf_kind or "pfifo"
        limit = leaf_limit_packets(cls) if kind == "pfifo" else None
        return tcnl.leaf_qdisc(index, cls.minor << 16, classid(cls.minor), kind, limit)

    @staticmethod
    def _parent_id(cls: HtbClass) -> int:
        return _ROOT_HANDLE if cls.parent_minor is None else classid(cls.parent_minor)

    def _leaf_in_use(self, index: int) -> str | None:
        qdiscs = tcnl.qdisc_kinds(index)
        try:
            for kind, _handle, parent in qdiscs:
                if parent != _TC_H_ROOT and parent >> 16 == ROOT_MAJOR and parent & 0xFFFF \
                        and kind in (*LEAF_PREFERENCE, "pfifo"):
                    return kind  # the first leaf tells: they are all of one kind
        except OSError as exc:
            raise ShapingError(f"reading the qdiscs of interface {index} failed: {exc}") from exc
        finally:
            qdiscs.close()
        return None

    def _attach_leaf(self, index: int, cls: HtbClass) -> None:
        handle = cls.minor << 16
        parent = classid(cls.minor)
        candidates = [self.leaf_kind] if self.leaf_kind else list(LEAF_PREFERENCE)
        for kind in candidates:
            if kind == "pfifo":
                break
            code = self._run(index, [tcnl.leaf_qdisc(index, handle, parent, kind)])[0]
            if code:  # kernel without this qdisc: try the next
                log.info("leaf qdisc %s refused (%s); trying the next", kind, os.strerror(code))
                continue
            self.leaf_kind = kind
            return
        self.leaf_kind = "pfifo"
        code = self._run(index, [tcnl.leaf_qdisc(index, handle, parent, "pfifo",
                                                 leaf_limit_packets(cls))])[0]
        if code:
            raise ShapingError(f"tc add leaf qdisc of class {classid_text(cls.minor)} on "
                               f"interface {index} failed: {os.strerror(code)}")

    def _call(self, *args: Any, **kwargs: Any) -> None:
        """One pyroute2 request: the root qdisc only (rare, and its options are many)."""
        try:
            self._ip().tc(*args, **kwargs)
        except netlink_errors() as exc:
            raise ShapingError(f"tc {args[0]} {kwargs.get('handle', '')!s} failed: {exc}") from exc


def root_qdisc(index: int) -> tuple[str, int] | None:
    """(kind, handle) of the root qdisc of interface ``index``; None when the device is
    gone. Blocks: one netlink request and its answer, on a socket of its own."""
    try:
        root = tcnl.root_qdisc(index)
    except OSError as exc:
        raise ShapingError(f"asking for the root qdisc of interface {index} failed: {exc}") from exc
    return None if root is None else (root.kind, root.handle)


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
