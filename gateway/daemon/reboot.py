"""Rebooting the box (the ``reboot`` remote command, GatewayOps.reboot).

Two ways, checked in this order:

- ``DESANET_REBOOT_COMMAND`` in the daemon's environment: a command line
  (split like a shell would, not run by one) run instead of a reboot. The lab
  and the tests set it (e.g. ``touch /tmp/rebooted``) to see a reboot happen
  without rebooting the machine; an image could set it to its own tool.
- ``systemctl reboot``, only when this daemon is the main process of a
  systemd service (``SYSTEMD_EXEC_PID`` is our pid: systemd 248+ sets it for
  the process it starts; a child of a service inherits the variable with
  another pid). So a daemon run by hand, by the lab or by a test inside a CI
  runner's service never reboots the machine it happens to run on.

Neither: the box cannot be rebooted from here and the command is refused
with that reason.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil

from gateway.errors import ServiceError

ENV = "DESANET_REBOOT_COMMAND"
TIMEOUT = 60.0


class SystemReboot:
    def __init__(self, environ: dict[str, str] | None = None, pid: int | None = None) -> None:
        env = dict(os.environ if environ is None else environ)
        self._pid = os.getpid() if pid is None else pid
        self._override = env.get(ENV, "").strip()
        self._exec_pid = env.get("SYSTEMD_EXEC_PID", "")

    def argv(self) -> list[str] | None:
        if self._override:
            return shlex.split(self._override)
        if self._exec_pid == str(self._pid):
            found = shutil.which("systemctl")
            return [found, "reboot"] if found else None
        return None

    def unavailable(self) -> str | None:
        if self._override:
            try:
                shlex.split(self._override)
            except ValueError as exc:
                return f"{ENV} is not a command line ({exc})"
            return None
        if self._exec_pid != str(self._pid):
            return (f"the daemon does not run as a systemd service and {ENV} is not set "
                    "(nothing here may reboot the machine)")
        if shutil.which("systemctl") is None:
            return "systemctl is not installed"
        return None

    async def reboot(self) -> None:
        """Run the reboot command; raises ServiceError when it cannot be run or fails."""
        argv = self.argv()
        if not argv:
            raise ServiceError(f"cannot reboot: {self.unavailable()}")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise ServiceError(f"cannot reboot: {' '.join(argv)}: {exc}") from exc
        if proc.returncode != 0:
            raise ServiceError(f"cannot reboot: {' '.join(argv)} exited {proc.returncode}: "
                               f"{err.decode(errors='replace').strip()[:200]}")
