"""A/B root updates with automatic fallback (docs/updates.md).

``slots``: the disk layout images/mkdisk writes and the systemd-boot loader
entries that select a slot; ``bundle``: the signed update bundle (a tar stream,
manifest first, verified before a byte reaches the inactive slot); ``cli``:
``desanet update install|status`` on the gateway.
"""
