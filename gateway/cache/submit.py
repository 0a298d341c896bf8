"""Reading a villager's form and turning a refusal into the page they see.

A form body is read whole, up to the configured limit, or refused: it is never
cut to what one read happened to return. A body whose length differs from its
``Content-Length`` (the phone lost the connection mid-upload) is refused too.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.cache.outbox import QueueLimits
from gateway.config.schema import LocalServices

READ_CHUNK = 64 * 1024


def limits_of(cfg: LocalServices) -> QueueLimits:
    return QueueLimits(max_body=cfg.max_form_size, max_forms=cfg.queue_max_forms,
                       max_bytes=cfg.queue_max_size, per_client_hour=cfg.queue_per_client_hour,
                       min_free_disk=cfg.queue_min_free_disk)


@dataclass(frozen=True)
class BodyRefused:
    status: int  # 413: too large; 400: cut short
    message_key: str


async def read_form(request: web.Request, limit: int) -> bytes | BodyRefused:
    """The whole body, or why not (nothing over ``limit`` bytes is kept in memory)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        return BodyRefused(413, "too_large_form")
    parts: list[bytes] = []
    size = 0
    try:
        while chunk := await request.content.read(READ_CHUNK):
            size += len(chunk)
            if size > limit:
                return BodyRefused(413, "too_large_form")
            parts.append(chunk)
    except (OSError, aiohttp.ClientError, HttpProcessingError):  # the upload broke off
        return BodyRefused(400, "form_cut_short")
    if declared is not None and size != declared:
        return BodyRefused(400, "form_cut_short")
    return b"".join(parts)


# The villager's page for each QueueFull reason: (HTTP status, message key).
REFUSALS: dict[str, tuple[int, str]] = {
    "queue_forms": (503, "queue_full_body"),
    "queue_bytes": (503, "queue_full_body"),
    "disk_space": (503, "queue_disk_body"),
    "client_hour": (429, "queue_client_body"),
}
