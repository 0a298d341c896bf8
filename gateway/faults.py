"""Failure injection shared by the fakes beside the adapters (tests only use it).

A test arms a fake with ``fake.fail_next = FirewallError("...")`` (raised by
the next call that changes state) or ``fake.fail_on["revoke"] = err`` (raised
by the next call of that method, reads included). A failed call changes
nothing, like the real adapters' transactions. Each armed error fires once.
"""

from __future__ import annotations

from gateway.errors import DesanetError


class FaultInjection:
    def __init__(self) -> None:
        self.fail_next: DesanetError | None = None
        self.fail_on: dict[str, DesanetError] = {}

    def _fault(self, method: str, changes: bool = True) -> None:
        """Raise the error armed for ``method`` (or for the next change), once."""
        err = self.fail_on.pop(method, None)
        if err is None and changes and self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
        if err is not None:
            raise err
