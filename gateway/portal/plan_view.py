"""What a logged-in villager reads about the voucher's plan (Step 11): time of use left,
validity left, data left and the fair-use state, the devices on the voucher (its texts:
plan_texts.py). Semantics:
docs/plans.md. The counters are the store's (kernel fills the bytes, the sweep the
seconds), so what is shown is at most a few seconds behind."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.schema import Config
from gateway.config.units import human_rate
from gateway.core.usage import time_left
from gateway.model import Session, Voucher
from gateway.portal.i18n import format_duration, translator


@dataclass(frozen=True, slots=True)
class PlanView:
    valid_left: int  # seconds until the session (the voucher's validity) ends
    use_left: int | None  # seconds of use left (None: the plan counts no time of use)
    data_left: int | None  # bytes left of the nearest quota (None: no quota)
    data_total: int | None  # that quota
    quota_state: str  # "" | "slow" | "cut"
    fair_use_down: int | None  # the slower rate after the quota ("slow")
    devices: int
    max_devices: int

    @property
    def seconds_remaining(self) -> int:
        """RFC 8908 ``seconds-remaining``: whichever runs out first if used all along."""
        return self.valid_left if self.use_left is None else min(self.valid_left, self.use_left)


def data_left(cfg: Config, voucher: Voucher) -> tuple[int, int] | None:
    """(bytes left, of which quota) for the quota nearest to running out; None: none."""
    plan = cfg.shaping.plans.get(voucher.plan) if voucher.plan else None
    if plan is None:
        return None
    used = {"quota": voucher.bytes_down + voucher.bytes_up, "quota_down": voucher.bytes_down,
            "quota_up": voucher.bytes_up}
    limits = [(max(0, limit - used[name]), limit) for name in used
              if (limit := getattr(plan, name)) is not None]
    return min(limits) if limits else None


def plan_view(cfg: Config, session: Session, voucher: Voucher | None, now: int
              ) -> PlanView | None:
    """The plan's state for a voucher session (None for a terms or staff session)."""
    if voucher is None:
        return None
    plan = cfg.shaping.plans.get(voucher.plan) if voucher.plan else None
    data = data_left(cfg, voucher)
    return PlanView(
        valid_left=session.remaining(now), use_left=time_left(cfg, voucher),
        data_left=data[0] if data else None, data_total=data[1] if data else None,
        quota_state=voucher.quota_state,
        fair_use_down=plan.fair_use_down if plan is not None else None,
        devices=len(voucher.devices), max_devices=voucher.max_devices)


def format_bytes(size: int, lang: str) -> str:
    """"1,5 GB" / "1.5 GB", "300 MB", "12 KB" (powers of 1024, as the plan's quota)."""
    for unit, step in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= step:
            value = f"{size / step:.1f}".removesuffix(".0")
            return f"{value.replace('.', ',') if lang == 'id' else value} {unit}"
    return f"{size} B"


def fair_rate(view: PlanView) -> str:
    return human_rate(view.fair_use_down) if view.fair_use_down else "-"


def plan_lines(view: PlanView | None, lang: str) -> list[str]:
    """The status page's lines about the plan, in ``lang`` (none for a plain session)."""
    if view is None or (view.use_left is None and view.data_left is None
                        and not view.quota_state and view.max_devices <= 1):
        return []  # validity only: the page's usual "time left" line says it all
    t = translator(lang)
    if view.quota_state == "cut":
        return [t("quota_cut")]
    lines = []
    if view.use_left is not None:
        lines.append(t("use_left", remaining=format_duration(view.use_left, lang)))
    lines.append(t("valid_left", remaining=format_duration(view.valid_left, lang)))
    if view.quota_state == "slow":
        lines.append(t("fair_use_on", rate=fair_rate(view)))
    elif view.data_left is not None and view.data_total is not None:
        lines.append(t("quota_left", left=format_bytes(view.data_left, lang),
                       total=format_bytes(view.data_total, lang)))
    if view.max_devices > 1:
        lines.append(t("devices_in_use", n=view.devices, max=view.max_devices))
    return lines
