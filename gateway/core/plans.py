"""Plans on vouchers (Step 11): which of a plan's limits are stamped on its vouchers, and
what a new voucher of a plan gets. Semantics: docs/plans.md.

A voucher row carries ``duration`` (validity: wall clock from first use) and
``max_devices`` (devices at once) because the store's redeem checks them inside the
login transaction, and old vouchers (before plans) have only those. A plan that sets
``validity``, or ``shared_devices`` above 1, is their source: the values are stamped on
every voucher of the plan when it is created and again at every config apply, so a
changed plan applies at once to live vouchers (their sessions' end moves too). A plan
that leaves them out leaves each voucher its own (see :func:`plan_stamps`). Time of
use and quota are read from the running config at each count, never stamped.
"""

from __future__ import annotations

from gateway.config.schema import Config
from gateway.config.units import format_duration
from gateway.errors import Invalid
from gateway.model import PlanStamp


def plan_stamps(new: Config, old: Config | None = None) -> list[PlanStamp]:
    """(plan, validity, shared devices) to stamp on the vouchers of each plan of ``new``.

    Validity: whenever the plan sets one. Shared devices: when above 1, or when it
    differs from ``old``'s (the running config before an apply). The default 1 alone
    stamps nothing, so vouchers made before plans had shared_devices (with their own
    max_devices) keep working, and a config written back with every default filled in
    (``config show``, the TUI) changes no voucher. A plan's 2 lowered to 1 by an apply
    is stamped; lowered by editing the file while the daemon is stopped, it is not
    (docs/plans.md)."""
    stamps = []
    before = old.shaping.plans if old is not None else {}
    for name, plan in sorted(new.shaping.plans.items()):
        was = before.get(name)
        changed = was is not None and was.shared_devices != plan.shared_devices
        devices = plan.shared_devices if plan.shared_devices > 1 or changed else None
        if plan.validity is not None or devices is not None:
            stamps.append((name, plan.validity, devices))
    return stamps


def voucher_terms(cfg: Config, plan_name: str | None, duration: int, max_devices: int
                  ) -> tuple[int, int, int]:
    """(duration, max_devices, price) for new vouchers of ``plan_name``. A plan's validity
    and written shared_devices rule; a request asking for something else is refused
    (Invalid) rather than silently changed. ``max_devices`` 1 is the request default
    and takes the plan's value; a plan at the default 1 leaves the request's."""
    plan = cfg.shaping.plans.get(plan_name) if plan_name else None
    if plan is None:
        return duration, max_devices, 0
    if plan.validity is not None and duration != plan.validity:
        valid = format_duration(plan.validity)
        raise Invalid("duration", format_duration(duration), f"plan '{plan_name}''s validity "
                      f"{valid}: its vouchers last that long", f'"{valid}"')
    devices = plan.shared_devices
    if devices > 1 and max_devices not in (1, devices):
        raise Invalid("max_devices", max_devices, f"plan '{plan_name}''s shared_devices "
                      f"({devices}) or leave it out", str(devices))
    return duration, max(devices, max_devices), plan.price
