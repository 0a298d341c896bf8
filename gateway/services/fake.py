"""FakeDhcpServer: DhcpServerPort in memory (tests only).

``configure`` renders the real dnsmasq.conf text (the pure
:func:`render_dnsmasq_conf`) and reports a change exactly when the real
supervisor would rewrite its file (or change its binary), so "a reload that changes only the terms
text leaves dnsmasq alone" can be tested without dnsmasq.
``refuse_next_start`` / ``refuse_next_configure`` make the next call raise
ServiceError, like a dnsmasq that exits at once or rejects its config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config.schema import Config
from gateway.errors import ServiceError
from gateway.faults import FaultInjection
from gateway.services.dnsmasq import render_dnsmasq_conf

if TYPE_CHECKING:
    from gateway.ports import DhcpServerPort


class FakeDhcpServer(FaultInjection):
    def __init__(self, state_dir: str = "/var/lib/desanet", run_dir: str = "/run/desanet") -> None:
        super().__init__()
        self.state_dir = state_dir
        self.run_dir = run_dir
        self.configs: list[Config] = []  # every config that changed the file, in order
        self.text: str | None = None  # the "file" as written
        self.binary: str | None = None  # programs.dnsmasq of the last config written
        self.starts = 0
        self.restart_count = 0
        self.stops = 0
        self.refuse_next_start = False
        self.refuse_next_configure = False
        self._running = False
        self._pid: int | None = None
        self._restarts = 0  # crashes the supervisor recovered from (set by tests)

    @property
    def running(self) -> bool:
        return self._running

    @property
    def pid(self) -> int | None:
        return self._pid if self._running else None

    @property
    def restarts(self) -> int:
        return self._restarts

    def crash_and_recover(self) -> None:
        """The child died and the supervisor started it again."""
        self._restarts += 1
        self._pid = (self._pid or 0) + 1

    async def configure(self, cfg: Config) -> bool:
        self._fault("configure")
        if self.refuse_next_configure:
            self.refuse_next_configure = False
            raise ServiceError("dnsmasq refused the new config (fake)")
        text = render_dnsmasq_conf(cfg, self.state_dir, self.run_dir)
        if text == self.text and cfg.programs.dnsmasq == self.binary:
            return False
        self.text, self.binary = text, cfg.programs.dnsmasq
        self.configs.append(cfg)
        return True

    async def start(self) -> None:
        self._fault("start")
        if self.refuse_next_start:
            self.refuse_next_start = False
            self._running = False
            raise ServiceError("dnsmasq exited at once with code 2 (fake)")
        self.starts += 1
        self._running = True
        self._pid = 1000 + self.starts

    async def restart(self) -> None:
        self.restart_count += 1
        await self.stop()
        await self.start()

    async def stop(self) -> None:
        self._fault("stop")
        self.stops += 1
        self._running = False


def _check(x: FakeDhcpServer) -> DhcpServerPort:  # mypy: the fake satisfies the port
    return x
