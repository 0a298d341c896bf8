"""The bundle's ``manifest.json``: which files a bundle holds and their sha256.

A bundle is the directory ``desanet/`` at the root of the FAT boot partition::

    manifest.json            {"format": 1, "site": ..., "created": ..., "files": {path: sha256},
                              "secrets": [paths removed from the card after import]}
    gateway.toml             the village's config (holds the Wi-Fi passphrase: a secret)
    mqtt/ca.crt              the fleet CA (the broker's certificate chains to it too)
    mqtt/device.crt          this gateway's client certificate, CN = site id
    mqtt/device.key          its private key (secret)
    commands/*.pub           operators' Ed25519 command keys ("ed25519:...")
    ssh/ssh_host_ed25519_key (+ .pub)  the SSH host key (secret) printed on the card
    ssh/authorized_keys      the technicians' SSH keys

The manifest catches a card that was corrupted, copied half, or edited by
hand; the device certificate must also chain to the bundle's CA and match its
key, and the config must pass the gateway's validation (provisioning/importer.py).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from provisioning.errors import ProvisionError

FORMAT = 1
NAME = "manifest.json"
CONFIG = "gateway.toml"
CA = "mqtt/ca.crt"
CERT = "mqtt/device.crt"
KEY = "mqtt/device.key"
HOST_KEY = "ssh/ssh_host_ed25519_key"
HOST_PUB = "ssh/ssh_host_ed25519_key.pub"
AUTHORIZED = "ssh/authorized_keys"
REQUIRED = (CONFIG, CA, CERT, KEY, HOST_KEY, HOST_PUB, AUTHORIZED)
SECRETS = (CONFIG, KEY, HOST_KEY)
# Every bundle file is a few KiB; a bigger one (a card holding junk, a crafted bundle)
# is refused before it is read, so the import never holds more than this in memory.
MAX_FILE = 1 << 20
_PATH_RE = re.compile(r"^(gateway\.toml|mqtt/(ca|device)\.(crt|key)|commands/[A-Za-z0-9_.-]{1,64}\.pub"
                      r"|ssh/(ssh_host_ed25519_key(\.pub)?|authorized_keys))$")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make(site: str, created: int, files: dict[str, bytes]) -> bytes:
    body = {"format": FORMAT, "site": site, "created": created,
            "files": {p: hashlib.sha256(data).hexdigest() for p, data in sorted(files.items())},
            "secrets": [p for p in SECRETS if p in files]}
    return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()


def read(bundle: Path) -> tuple[dict[str, Any], str]:
    """The manifest and its own sha256 (the bundle's identity in the import record)."""
    path = bundle / NAME
    try:
        if path.stat().st_size > MAX_FILE:
            raise ProvisionError(f"{path}: larger than {MAX_FILE // 1024} KiB; not a manifest")
        raw = path.read_bytes()
        data = json.loads(raw)
    except FileNotFoundError:
        raise ProvisionError(f"{bundle} is not a provisioning bundle: {NAME} is missing") from None
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"{path}: cannot read the manifest: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else "?"
        raise ProvisionError(f"{path}: manifest format {found} is not {FORMAT}; make the bundle "
                             "with this desanet version")
    files = data.get("files")
    if not isinstance(data.get("site"), str) or not isinstance(files, dict) \
            or not isinstance(data.get("secrets"), list):
        raise ProvisionError(f"{path}: the manifest lacks site, files or secrets")
    for rel, digest in files.items():
        if not isinstance(rel, str) or not _PATH_RE.match(rel) \
                or not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ProvisionError(f"{path}: the manifest lists {rel!r}, which is not a bundle file")
    missing = [p for p in REQUIRED if p not in files]
    if missing:
        raise ProvisionError(f"{path}: the manifest lacks {', '.join(missing)}")
    if sorted(data["secrets"]) != sorted(SECRETS):
        raise ProvisionError(f"{path}: the manifest's secrets are not {', '.join(SECRETS)}")
    return data, hashlib.sha256(raw).hexdigest()


def check_files(bundle: Path, data: dict[str, Any]) -> dict[str, bytes]:
    """Every listed file's bytes, each matching its sha256; nothing unlisted beside them."""
    out: dict[str, bytes] = {}
    problems = []
    for rel, digest in sorted(data["files"].items()):
        path = bundle / rel
        if path.is_symlink() or not path.is_file():
            problems.append(f"{rel}: missing (or not a plain file)")
            continue
        if path.stat().st_size > MAX_FILE:
            problems.append(f"{rel}: larger than {MAX_FILE // 1024} KiB (not a bundle file)")
            continue
        blob = path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != digest:
            problems.append(f"{rel}: its sha256 does not match the manifest (changed or damaged)")
        out[rel] = blob
    listed = set(data["files"]) | {NAME}
    for path in sorted(bundle.rglob("*")):
        rel = path.relative_to(bundle).as_posix()
        if path.name.startswith("."):  # macOS's ._* and .DS_Store on FAT; never installed
            continue
        if not path.is_dir() and rel not in listed:
            problems.append(f"{rel}: not in the manifest (added after the bundle was made)")
    if problems:
        raise ProvisionError(f"{bundle}: the bundle does not match its manifest; nothing was "
                             "installed:\n  " + "\n  ".join(problems))
    return out
