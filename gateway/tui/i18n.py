"""The TUI's two languages: every text is written as a pair, Bahasa Indonesia first.

A pair lives next to the widget that shows it (``tr("Klien", "Clients")``) rather than in a
catalog keyed by ids: the technician's words and their translation are reviewed together,
and no key can go missing. The language is process-wide state of the running app; screens
re-render their texts when :func:`set_language` changes it (the app's language switch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

Language = Literal["id", "en"]
LANGUAGES: tuple[Language, ...] = ("id", "en")

_current: list[Language] = ["id"]
_listeners: list[Callable[[Language], None]] = []


def language() -> Language:
    return _current[0]


def set_language(lang: Language) -> None:
    if lang not in LANGUAGES:
        raise ValueError(f"language {lang!r}: expected one of {', '.join(LANGUAGES)}")
    _current[0] = lang
    for listener in list(_listeners):
        listener(lang)


def on_change(listener: Callable[[Language], None]) -> Callable[[], None]:
    """Call ``listener`` after each switch; returns the function that stops it."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener) if listener in _listeners else None


def tr(id_text: str, en_text: str) -> str:
    """The text in the current language."""
    return id_text if _current[0] == "id" else en_text
