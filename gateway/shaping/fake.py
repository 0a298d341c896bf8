"""FakeShaper: ShaperPort in memory (tests only).

Per device, a dict of HTB classes by minor; ``reconcile`` computes its
changes with the same pure :func:`gateway.shaping.plan.diff_classes` the real
``Shaper`` uses, so the number of operations it reports is the real one.
A test sets counters with ``set_stats`` and, with ``devices=``, which
interfaces exist (the real shaper refuses a missing one). ``lose_root(device)``
does what deleting the root qdisc by hand (or creating the device again) does:
the device's classes are gone, single-class changes there fail, and
``intact`` says so until the next ``reconcile``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from gateway.errors import ShapingError
from gateway.faults import FaultInjection
from gateway.shaping.plan import ClassStats, DeviceTree, HtbClass, diff_classes

if TYPE_CHECKING:
    from gateway.ports import ShaperPort


class FakeShaper(FaultInjection):
    def __init__(self, devices: Iterable[str] | None = None, leaf: str = "fq_codel") -> None:
        super().__init__()
        self.devices: set[str] | None = set(devices) if devices is not None else None
        self.classes: dict[str, dict[int, HtbClass]] = {}  # device -> minor -> class
        self.counters: dict[str, dict[int, ClassStats]] = {}  # set by tests
        self.ops = 0  # class operations run, over all calls
        self.reconciles = 0
        self._leaf = leaf
        self._leaf_kind: str | None = None
        self.lost_roots: set[str] = set()

    def lose_root(self, device: str) -> None:
        """The root qdisc of ``device`` deleted behind the daemon's back (tests only)."""
        self.lost_roots.add(device)
        self.classes.pop(device, None)

    @property
    def leaf_kind(self) -> str | None:
        return self._leaf_kind

    def set_stats(self, device: str, minor: int, bytes: int = 0, packets: int = 0,
                  drops: int = 0, backlog: int = 0, overlimits: int = 0) -> None:
        self.counters.setdefault(device, {})[minor] = ClassStats(
            minor, bytes, packets, drops, backlog, overlimits)

    def _device(self, device: str) -> dict[int, HtbClass]:
        if self.devices is not None and device not in self.devices:
            raise ShapingError(f"interface {device!r} does not exist; check network.* in the config")
        return self.classes.setdefault(device, {})

    def _rooted(self, device: str) -> dict[int, HtbClass]:
        have = self._device(device)
        if device in self.lost_roots:
            raise ShapingError(f"tc add-class on {device} failed: no root qdisc")
        return have

    async def reconcile(self, tree: DeviceTree) -> int:
        self._fault("reconcile")
        have = self._device(tree.device)
        self.lost_roots.discard(tree.device)
        ops = diff_classes(tree, have)
        self.classes[tree.device] = tree.by_minor()
        if tree.classes and self._leaf_kind is None:
            self._leaf_kind = self._leaf
        self.ops += len(ops)
        self.reconciles += 1
        return len(ops)

    async def remove(self, device: str) -> None:
        self._fault("remove")
        self._device(device)
        self.classes.pop(device, None)

    async def upsert(self, device: str, cls: HtbClass) -> None:
        self._fault("upsert")
        have = self._rooted(device)
        old = have.get(cls.minor)
        if old is not None and old.same_shape(cls):
            return
        have[cls.minor] = cls
        self._leaf_kind = self._leaf_kind or self._leaf
        self.ops += 1

    async def delete(self, device: str, cls: HtbClass) -> None:
        self._fault("delete")
        if self._rooted(device).pop(cls.minor, None) is not None:
            self.ops += 1

    async def stats(self, device: str) -> dict[int, ClassStats]:
        """Counters set by the test; zeros for every other class of the device."""
        self._fault("stats", changes=False)
        have = self._device(device)
        set_ = self.counters.get(device, {})
        return {minor: set_.get(minor, ClassStats(minor, 0, 0, 0, 0, 0))
                for minor in sorted({*have, *set_})}

    async def intact(self, device: str) -> bool:
        self._fault("intact", changes=False)
        return device in self.classes and device not in self.lost_roots and (
            self.devices is None or device in self.devices)

    async def close(self) -> None:
        pass


def _check(x: FakeShaper) -> ShaperPort:  # mypy: the fake satisfies the port
    return x
