"""Errors of the provisioning tools; the CLI prints them and exits non-zero."""

from __future__ import annotations

from gateway.errors import DesanetError


class ProvisionError(DesanetError):
    """A CA, a bundle or an import that cannot be used; the message says what to do."""


class RowsInvalid(DesanetError):
    """The villages CSV has problems: one line each, naming row, column, value and expectation."""

    def __init__(self, problems: list[str], source: str) -> None:
        super().__init__(f"{source}: {len(problems)} problem(s); nothing was written")
        self.problems = problems
        self.source = source
