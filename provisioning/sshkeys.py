"""The gateway's SSH host key, made at provisioning so its fingerprint can be printed on the
technician's card before the box ever boots (no trust-on-first-use guess in the village)."""

from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

_KEY_TYPES = ("ssh-", "ecdsa-sha2-", "sk-")


def new_host_key(comment: str) -> tuple[bytes, bytes]:
    """(private key in OpenSSH format, ``ssh-ed25519 AAAA... comment`` public line)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    return private, public + b" " + comment.encode() + b"\n"


def fingerprint(public_line: str) -> str:
    """``SHA256:<base64 without padding>`` of the key blob, as ``ssh-keygen -l`` prints it."""
    parts = public_line.split()
    if len(parts) < 2:
        raise ValueError("not an OpenSSH public key line (\"ssh-ed25519 AAAA... comment\")")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise ValueError("the OpenSSH public key is not base64") from None
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def check_authorized_keys(text: str) -> list[str]:
    """Problems of an authorized_keys text (one key per line; comments and blanks allowed)."""
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        # options may come first (from="10.0.0.0/8",no-agent-forwarding ssh-ed25519 AAAA...)
        at = next((i for i, w in enumerate(words) if w.startswith(_KEY_TYPES)), None)
        try:
            if at is None or at + 1 >= len(words):
                raise ValueError("no key type and key")
            serialization.load_ssh_public_key(f"{words[at]} {words[at + 1]}".encode())
        except (ValueError, UnsupportedAlgorithm) as exc:
            problems.append(f"line {n}: not an SSH public key ({exc}); "
                            "write e.g. \"ssh-ed25519 AAAAC3... teknisi@kabupaten\"")
    return problems
