"""Make provisioning bundles: one per village row, all of a CSV at once, all or nothing.

Output (``--out DIR``)::

    DIR/<site id>/desanet/...        the bundle: copy this ``desanet`` folder to the root
                                     of the card's boot partition (manifest.py)
    DIR/<site id>/card.html          the technician's card (card.py)
    DIR/cards.html                   every card, to print at once

Order of work, so that nothing is half-written: every row is checked (the CSV,
the operators' and technicians' keys, each generated ``gateway.toml`` against the
gateway's own validation); then keys and certificates are made and everything
is written into a temporary directory beside DIR; the CA's record of issued
certificates is updated; and the temporary directory is renamed to DIR.
A site that already holds a valid certificate is refused unless ``reissue``.
A failure before the rename leaves DIR untouched and the temp dir removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.x509 import Certificate

from gateway.telemetry import commands as cmdkeys
from provisioning import ca as fleetca
from provisioning import manifest as m
from provisioning import sshkeys
from provisioning.card import Card, render_cards
from provisioning.errors import ProvisionError, RowsInvalid
from provisioning.siteconfig import config_problems, render_config
from provisioning.villages import Village, check_file


@dataclass(frozen=True)
class OperatorKey:
    name: str  # file name in commands/, e.g. "diskominfo-jabar.pub"
    text: str  # "ed25519:..."


def read_command_keys(paths: list[Path]) -> list[OperatorKey]:
    """The operators' public command keys (`desanet fleet keygen` writes ``KEY.pub``)."""
    out: list[OperatorKey] = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ProvisionError(f"--command-key {path}: cannot read it: {exc}") from None
        try:
            cmdkeys.public_key_bytes(text)
        except ValueError as exc:
            raise ProvisionError(f"--command-key {path}: {exc}; give the .pub file that "
                                 "`desanet fleet keygen` wrote") from None
        name = path.name if path.name.endswith(".pub") else path.name + ".pub"
        if not m._PATH_RE.match(f"commands/{name}") or name in (k.name for k in out):
            raise ProvisionError(f"--command-key {path}: the file name must be unique and of "
                                 "letters, digits, '.', '-' or '_'")
        out.append(OperatorKey(name, text))
    if not out:
        raise ProvisionError("no --command-key: without an operator key every remote command "
                             "is refused; give the .pub file of `desanet fleet keygen`")
    return out


def read_authorized_keys(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProvisionError(f"--authorized-keys {path}: cannot read it: {exc}") from None
    problems = sshkeys.check_authorized_keys(text)
    if problems or not text.strip():
        raise ProvisionError(f"--authorized-keys {path}: " + ("; ".join(problems) or
                             "empty; the technicians log in with these keys only (no passwords)"))
    return text if text.endswith("\n") else text + "\n"


def render_all(villages: list[Village], keys: list[OperatorKey]
               ) -> tuple[dict[str, str], list[str]]:
    """Every row's gateway.toml, and every refusal of the gateway's validation."""
    configs: dict[str, str] = {}
    problems: list[str] = []
    for v in villages:
        text = render_config(v, [k.text for k in keys])
        problems += config_problems(v, text)
        configs[v.site_id] = text
    return configs, problems


def check_all(villages: list[Village], keys: list[OperatorKey], source: str) -> dict[str, str]:
    """Every row's gateway.toml, or RowsInvalid with every refusal (nothing made yet)."""
    configs, problems = render_all(villages, keys)
    if problems:
        raise RowsInvalid(problems, source)
    return configs


def _row_of(problem: str) -> int:
    number = problem.removeprefix("row ").split(",", 1)[0].split(":", 1)[0]
    return int(number) if number.isdigit() else 0


def check_csv(path: Path, keys: list[OperatorKey], site: str | None = None) -> list[Village]:
    """The villages of ``path`` (only ``site``'s, if given), or RowsInvalid with every
    problem at once, in row order: the CSV's own (every row) and the gateway's refusals
    of each valid row's generated config (a plan faster than the uplink)."""
    villages, problems = check_file(path)
    if site is not None:
        villages = [v for v in villages if v.site_id == site]
    problems = problems + render_all(villages, keys)[1]
    if problems:
        raise RowsInvalid(sorted(problems, key=_row_of), str(path))
    return villages


def _device_files(ca: fleetca.Ca, v: Village, config: str, keys: list[OperatorKey],
                  authorized: str) -> tuple[dict[str, bytes], Certificate, str]:
    key = fleetca.new_device_key()
    cert = fleetca.issue_certificate(ca, v.site_id, key.public_key())
    host_private, host_public = sshkeys.new_host_key(f"root@{v.site_id}")
    files = {m.CONFIG: config.encode(), m.CA: fleetca.cert_pem(ca.cert),
             m.CERT: fleetca.cert_pem(cert), m.KEY: fleetca.key_pem(key),
             m.HOST_KEY: host_private, m.HOST_PUB: host_public, m.AUTHORIZED: authorized.encode()}
    for k in keys:
        files[f"commands/{k.name}"] = (k.text + "\n").encode()
    return files, cert, sshkeys.fingerprint(host_public.decode())


def write_bundle(where: Path, site: str, created: int, files: dict[str, bytes]) -> None:
    """``files`` and their manifest under ``where`` (a new directory); secrets 0600."""
    where.mkdir(parents=True)
    for rel, data in {**files, m.NAME: m.make(site, created, files)}.items():
        path = where / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = 0o600 if rel in m.SECRETS else 0o644
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)


def _ready_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ProvisionError(f"--out {out} exists and is not an empty directory; choose a new "
                             "one (bundles are never mixed with older ones)")


def build(ca: fleetca.Ca, villages: list[Village], keys: list[OperatorKey], authorized: str,
          out: Path, source: str = "villages.csv", *, reissue: bool = False) -> list[Card]:
    """Bundles and cards for ``villages`` in ``out`` (see the module doc); the cards.

    A site that already holds a valid certificate of this CA is refused (ProvisionError,
    nothing written) unless ``reissue``: running a batch twice would otherwise give every
    site a second working identity."""
    configs = check_all(villages, keys, source)
    _ready_out(out)
    if not reissue:
        fleetca.refuse_second_identity(ca.dir, [v.site_id for v in villages])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        created = int(fleetca.now().timestamp())
        cards: list[Card] = []
        issued: list[tuple[str, Certificate]] = []
        for v in villages:
            files, cert, fingerprint = _device_files(ca, v, configs[v.site_id], keys, authorized)
            write_bundle(tmp / v.site_id / "desanet", v.site_id, created, files)
            card = Card(v, fingerprint, int(cert.not_valid_after_utc.timestamp()))
            (tmp / v.site_id / "card.html").write_text(render_cards([card]), encoding="utf-8")
            cards.append(card)
            issued.append((v.site_id, cert))
        (tmp / "cards.html").write_text(render_cards(cards), encoding="utf-8")
        # every delivered certificate is on record
        fleetca.record_issued(ca, issued, "new", first_only=not reissue)
        _ready_out(out)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return cards


def host_key_fingerprint(bundle: Path) -> str:
    return sshkeys.fingerprint((bundle / m.HOST_PUB).read_text(encoding="ascii"))
