"""On-site diagnostics (`desanet diag` and the TUI's screen): plain answers to "why is the
internet slow" and "why does the portal not open", in Bahasa Indonesia and English.

They work when the daemon is down: the config file and the system are read directly
(the control API only tells whether the daemon answers). See docs/diag.md.
"""

from gateway.diag.context import DiagOptions
from gateway.diag.registry import CHECKS, Check, run_checks
from gateway.diag.result import CheckResult, Status

__all__ = ["CHECKS", "Check", "CheckResult", "DiagOptions", "Status", "run_checks"]
