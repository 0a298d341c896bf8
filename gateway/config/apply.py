"""A config change as a transaction of steps, each with its undo.

Theory of operation
-------------------
``converge`` (gateway/core/reconcile.py) turns "make the box match this
config" into an ordered list of :class:`Step` s (shaping, firewall, dnsmasq,
local services, portal). :func:`run_steps` runs them in order; when one
fails, the steps already taken are undone in reverse order, and the error
names the failed step. An undo that fails itself is logged and the others
still run: leaving one part half-changed is better than leaving all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.errors import ApplyFailed, DesanetError

log = logging.getLogger("desanet.config")

Action = Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    do: Action
    undo: Action = _nothing


async def run_steps(steps: Sequence[Step]) -> list[str]:
    """Run every step or none; return the names of the steps that ran.

    Raises ApplyFailed(step, reason) after undoing what was done. A bug (a
    non-desanet exception) is undone the same way and then re-raised as is.
    """
    done: list[Step] = []
    for step in steps:
        try:
            await step.do()
        except Exception as exc:
            # The failed step is undone too: it may have done half of its work
            # (dnsmasq's new file written, its restart refused). Undos cope with that.
            log.error("config step %s failed: %s; undoing it and %d step(s) before it",
                      step.name, exc, len(done))
            await undo_steps([*done, step])
            if isinstance(exc, DesanetError):
                raise ApplyFailed(step.name, str(exc)) from exc
            raise
        done.append(step)
    return [s.name for s in done]


async def undo_steps(done: Sequence[Step]) -> None:
    for step in reversed(done):
        try:
            await step.undo()
        except Exception:
            log.exception("undoing config step %s failed; continuing with the others", step.name)
