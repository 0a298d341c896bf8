"""The ports: what the core needs from the outside world, as Protocols.

The core (``gateway/core``) depends on these and never on a library. Each
port has a real adapter (composed in ``gateway/daemon/main.py``) and a fake
beside it that unit tests use; mypy checks both against the protocol.

Every method is ``async``: the real adapters run kernel calls on the one
kernel worker thread and SQLite commits on the one database worker thread,
so a service only awaits and the event loop never blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Protocol

from gateway.config.schema import Config
from gateway.meter import Meter, MeterReading
from gateway.model import PlanStamp, Session, Voucher, VoucherLimits
from gateway.shaping.plan import ClassStats, DeviceTree, HtbClass

MacIp = tuple[str, str]


class FirewallPort(Protocol):
    """nftables: the ruleset and its per-client set elements."""

    @property
    def backend(self) -> str: ...

    async def apply(self, cfg: Config, sessions: Sequence[Session], now: int,
                    carry_garden: bool = True, meters: Sequence[Meter] = ()) -> None:
        """Replace the whole ruleset in one transaction, carrying dynamic state (the
        meters' unread bytes and quotas' use among it; ``meters``: the live sessions')."""

    async def authorize(self, session: Session, now: int, class_text: str | None,
                        meter: Meter | None = None) -> None: ...

    async def revoke(self, mac: str, ip: str, class_text: str | None,
                     meter: Meter | None = None) -> None: ...

    async def read_meters(self, counters: bool = True) -> MeterReading:
        """The quotas' use and, with ``counters``, the vouchers' byte counts since the
        last read (read and zeroed at once). One request, O(vouchers). Raises
        FirewallError."""
        ...

    async def drop_meters(self, names: Sequence[str]) -> None:
        """Delete meter objects (``MeterReading.names``) no client refers to any more.
        Raises FirewallError (e.g. a login made one referred to again meanwhile)."""
        ...

    async def active_clients(self) -> dict[MacIp, int]:
        """Clients with traffic inside their idle window -> seconds left in it."""
        ...

    async def active_addresses(self) -> dict[str, int]:
        """Client addresses with traffic towards them inside their idle window -> seconds
        left (downloads carry no client MAC; core.usage.latest_activity merges the two)."""
        ...

    async def authorized_clients(self) -> dict[MacIp, int]: ...

    async def sync_leases(self, cfg: Config, leases: Mapping[str, str]) -> None:
        """Replace the kernel's lease sets (address -> MAC) that ARP, source and DHCP
        checks trust (firewall/guard.py). Raises FirewallError."""
        ...

    async def client_entry(self, mac: str, ip: str) -> tuple[bool, bool]:
        """Is the client in the authorized set, and in the activity set? Raises FirewallError."""
        ...

    async def intact(self) -> bool:
        """Are our tables still as the last apply left them (not flushed, deleted or made
        again by hand)? True before the first apply. Cheap: no set elements listed."""
        ...

    async def end_connections(self, ip: str, redirected_only: bool) -> None:
        """Delete the connection-tracking entries the client at ``ip`` opened.

        Verdicts bound to a tracked connection (the portal redirect of port 80,
        ``ct state established`` on the way back) outlive a change of the sets:
        after this, each flow's next packet meets the current rules. At login
        (``redirected_only``) only the http connections the portal redirect
        caught end; at a cut-off its UDP flows (the forward chain resets a TCP
        connection at the client's next packet; deleting it would leave the
        client hanging). Raises FirewallError.
        """


class ShaperPort(Protocol):
    """HTB trees on the LAN (downloads) and WAN (uploads) devices."""

    @property
    def leaf_kind(self) -> str | None: ...

    async def reconcile(self, tree: DeviceTree) -> int:
        """Make the device's tree equal ``tree``; return how many changes ran."""
        ...

    async def remove(self, device: str) -> None:
        """Remove our root qdisc from ``device`` (shaping switched off)."""

    async def upsert(self, device: str, cls: HtbClass) -> None: ...

    async def delete(self, device: str, cls: HtbClass) -> None: ...

    async def stats(self, device: str) -> dict[int, ClassStats]: ...

    async def intact(self, device: str) -> bool:
        """Is our root qdisc on ``device``? False when it was deleted or replaced, or the
        device is gone or was created again. Cheap: no dump of the classes."""
        ...


class NeighboursPort(Protocol):
    """Who is behind a LAN address: neighbour table and DHCP leases."""

    async def mac_of(self, ip: str) -> str | None: ...

    async def ip_of(self, mac: str) -> str | None: ...

    async def leases(self) -> dict[str, str]:
        """DHCP leases: IPv4 address -> MAC."""
        ...

    async def host_names(self) -> dict[str, str]:
        """DHCP leases' host names (what the phone calls itself): IPv4 address -> name."""
        ...


class DhcpServerPort(Protocol):
    """The DHCP + DNS server (dnsmasq), a supervised child process."""

    @property
    def running(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def restarts(self) -> int: ...

    async def configure(self, cfg: Config) -> bool:
        """Write the config for ``cfg`` atomically; True when it changed."""
        ...

    async def start(self) -> None:
        """Start the server; raise ServiceError when it refuses to run."""

    async def restart(self) -> None: ...

    async def stop(self) -> None: ...


class SessionStorePort(Protocol):
    """Durable sessions and vouchers; every method is one fsynced transaction."""

    async def start_session(self, session: Session) -> None: ...

    async def login(
        self,
        mac: str,
        now: int,
        voucher_code: str | None,
        admit: Callable[[Session | None, int], None],
        build: Callable[[Voucher | None], Session],
    ) -> tuple[Session | None, Session]:
        """One transaction: ``admit(current, active_count)`` (raises to refuse), redeem the
        voucher, record ``build(voucher)``; return (replaced session, new session)."""
        ...

    async def end_session(self, mac: str, now: int, reason: str) -> Session | None: ...

    async def active_session(self, mac: str, now: int) -> Session | None: ...

    async def active_sessions(self, now: int) -> list[Session]: ...

    async def count_active(self, now: int) -> int: ...

    async def ip_taken(self, ip: str, mac: str, now: int) -> bool: ...

    async def macs_on(self, ip: str, now: int) -> list[str]:
        """The MACs with an active session on ``ip``."""
        ...

    async def change_plan(self, mac: str, plan: str | None, now: int) -> Session | None: ...

    async def expire_sessions(self, now: int) -> list[Session]: ...

    async def prune_ended(self, before: int) -> int: ...

    async def add_vouchers(self, vouchers: Iterable[Voucher]) -> list[Voucher]:
        """Store new vouchers, all or none; return them as stored: ``serial`` continues
        their batch (1..N), ``batch_name`` is the batch's one name (a given name renames
        the batch)."""
        ...

    async def vouchers(self, batch: str | None = None) -> list[Voucher]: ...

    async def voucher(self, code: str) -> Voucher | None: ...

    async def revoke_voucher(self, code: str, now: int) -> tuple[Voucher, list[Session]]:
        """Revoke a voucher and end its sessions; return the voucher and the ended sessions."""
        ...

    async def release_voucher(self, code: str, mac: str | None, now: int
                              ) -> tuple[Voucher, list[Session]]:
        """Free ``mac``'s device slot (None: all) and end the sessions on it."""
        ...

    async def redeem_voucher(self, code: str, mac: str, now: int) -> Voucher: ...

    async def add_used_seconds(self, used: Mapping[str, int],
                               plans: Collection[str] | None = None) -> list[Voucher]:
        """Add seconds of use (time of use) to vouchers; return those that exist (only
        those of ``plans`` when given)."""
        ...

    async def stamp_plans(self, stamps: Iterable[PlanStamp]) -> list[VoucherLimits]:
        """For each (plan, validity, shared devices), None keeping the column: stamp them
        on the plan's vouchers (duration, max_devices) and the new end on their open
        sessions; return the changed vouchers' old (code, duration, max_devices)."""
        ...

    async def restore_limits(self, limits: Iterable[VoucherLimits]) -> None:
        """Give vouchers back the (code, duration, max_devices) stamp_plans returned."""
        ...

    async def add_voucher_bytes(self, deltas: Mapping[str, tuple[int, int]],
                                states: Mapping[str, str]) -> None:
        """Add (down, up) byte deltas to vouchers and set their quota states ('', 'slow',
        'cut'), in one transaction. Raises ValueError on a negative delta."""
        ...

    async def voucher_usage(self, codes: Iterable[str]) -> dict[str, tuple[int, int]]:
        """code -> (bytes down, bytes up) of those vouchers that exist."""
        ...

    async def close(self) -> None: ...
