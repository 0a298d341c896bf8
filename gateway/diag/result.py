"""What one diagnostic found: a verdict and plain words in two languages.

Every result carries its summary (what is wrong, or that all is well) and its advice
(what to do) in Bahasa Indonesia and in English, side by side, so the CLI, the TUI and
``--json`` readers all show the same words. ``details`` holds the facts behind the
verdict (addresses, times, counts) as JSON values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "warn", "fail", "skip"]
STATUSES: tuple[Status, ...] = ("ok", "warn", "fail", "skip")
Words = tuple[str, str]  # (Bahasa Indonesia, English)

NOTHING_TO_DO: Words = ("Tidak perlu tindakan.", "Nothing to do.")


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    summary_id: str
    summary_en: str
    advice_id: str
    advice_en: str
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self, lang: str) -> str:
        return self.summary_en if lang == "en" else self.summary_id

    def advice(self, lang: str) -> str:
        return self.advice_en if lang == "en" else self.advice_id

    def to_json(self) -> dict[str, Any]:
        """The result as JSON values; the keys are the field names (a stable form)."""
        return asdict(self)


def verdict(name: str, status: Status, summary: Words, advice: Words = NOTHING_TO_DO, /,
            **details: Any) -> CheckResult:
    """A result from (id, en) pairs of words."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r}: expected one of {', '.join(STATUSES)}")
    return CheckResult(name, status, summary[0], summary[1], advice[0], advice[1], dict(details))


def worst(statuses: list[Status]) -> Status:
    """The most serious of ``statuses`` (fail > warn > ok > skip); skip for none."""
    order: tuple[Status, ...] = ("fail", "warn", "ok")
    for s in order:
        if s in statuses:
            return s
    return "skip"
