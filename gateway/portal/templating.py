"""The Jinja2 environment shared by the portal pages and the voucher sheet.

Autoescaping is on for every template whatever its name, and undefined
variables are errors, so a typo in a template fails a test instead of
rendering an empty string.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2

TEMPLATE_DIR = Path(__file__).with_name("templates")


@cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )


def render(template: str, **context: object) -> str:
    return environment().get_template(template).render(**context)
