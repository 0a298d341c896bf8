"""`desanet provision ...`: the regional team's commands (docs/provisioning.md).

The modules that need ``cryptography`` are imported inside the commands, so
building the parser costs nothing (`desanet run` never even builds it).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provisioning.errors import ProvisionError, RowsInvalid

WORKFLOW = """steps / langkah (docs/provisioning.md):
  1. desanet provision ca init --dir ca-jabar --name "Diskominfo Jabar fleet CA"
  2. desanet provision ca broker-cert --ca ca-jabar --name mqtt.diskominfo.example.go.id \\
         --out-dir broker    (the broker's TLS certificate; without it no gateway connects)
  3. desanet fleet keygen --out operator.key          (operators' command key, once)
  4. desanet provision check villages.csv             (every row checked, nothing written)
  5. desanet provision batch villages.csv --ca ca-jabar --command-key operator.key.pub \\
         --authorized-keys teknisi.pub --out bundles-2026-12
  6. per box: copy bundles-2026-12/<site>/desanet to the root of the card's boot partition;
     print bundles-2026-12/cards.html and keep each card with its box
"""

CSV_HELP = """villages.csv columns (header row, any order; "," or ";" separated, UTF-8):
  site_id     jabar-sukamaju    (lower-case letters, digits, - or _; the certificate's name)
  name        Hotspot Desa Sukamaju
  village     Desa Sukamaju
  region      Kab. Garut, Jawa Barat
  timezone    WIB | WITA | WIT | Asia/Jakarta
  ssid        Hotspot Desa Sukamaju           (at most 32 bytes; each row its own)
  passphrase  8-63 characters | generate | empty (open network, the portal is the gate)
  plans       harian=2mbit/512kbit sekolah=10mbit/2mbit   (may be empty)
  uplink      20mbit/5mbit    (download/upload capacity of the uplink)
  broker      mqtts://mqtt.diskominfo.example.go.id:8883
"""


# Bahasa Indonesia first, as in `desanet update install --help`: each subcommand's
# description is this, then the English line (a new subcommand without one is a KeyError).
ID_HELP = {
    "init": "Membuat CA armada baru (sekali per wilayah). Simpan ca.key offline dan buat "
            "cadangan: kehilangannya berarti menyiapkan ulang semua gateway.",
    "broker-cert": "Sertifikat server broker MQTT wilayah, ditandatangani CA armada: gateway "
                   "hanya mempercayai CA itu, jadi tanpa langkah ini tidak ada yang tersambung.",
    "batch": "Membuat bundel dan kartu teknisi untuk setiap desa di CSV. Semua baris diperiksa "
             "dulu; satu baris salah, tidak ada yang ditulis. Situs yang sudah punya sertifikat "
             "berlaku ditolak, kecuali dengan --reissue.",
    "build-bundle": "Membuat bundel dan kartu satu desa (misalnya perangkat pengganti). Situs "
                    "yang sudah punya sertifikat berlaku: --reissue, lalu cabut yang lama.",
    "check": "Memeriksa CSV desa: setiap masalah dengan baris dan kolomnya, sekaligus; tidak "
             "ada yang ditulis.",
    "import": "Memasang bundel di gateway ini (boot pertama melakukannya sendiri): diperiksa, "
              "dipasang, dicatat, lalu rahasianya dihapus dari kartu. Gateway yang sudah "
              "diprovisi hanya menerima bundel situsnya sendiri yang tidak lebih lama; pindah "
              "desa: --replace-site.",
    "renew": "Sertifikat baru untuk kunci gateway yang sudah ada (tidak ada kunci yang "
             "dikirim); pasang dengan `desanet fleet send SITE cert.install cert=@FILE`.",
    "list": "Sertifikat yang dikeluarkan CA ini: situs, serial, sisa hari.",
    "revoke": "Mencabut sertifikat gateway (perangkat hilang atau dicuri); lalu terbitkan CRL "
              "dengan `provision crl`.",
    "crl": "Menulis daftar sertifikat yang dicabut (CRL) untuk broker (Mosquitto `crlfile`).",
}

# provisioning/importer.py's defaults (not imported here: it loads cryptography)
ETC = "/etc/desanet"
SSH_DIR = "/data/ssh"  # images/rootfs/etc/ssh/sshd_config.d/50-desanet.conf
RECORD = "/var/lib/desanet/provisioned.json"


def _os_errors(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A file that cannot be read or written becomes one line naming it (the CLI prints a
    ProvisionError as `error: ...` and exits 1), never a traceback."""
    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except OSError as exc:
            where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
            raise ProvisionError(f"{where or 'a file'}: {exc.strerror or exc}") from None
    return run


def _print_rows_invalid(exc: RowsInvalid) -> int:
    print(f"error: {exc}", file=sys.stderr)
    for line in exc.problems:
        print(f"  {line}", file=sys.stderr)
    return 2


def cmd_ca_init(args: argparse.Namespace) -> int:
    from provisioning import ca

    made = ca.init_ca(Path(args.dir), args.name, args.days)
    print(f"CA made in {made.dir}: ca.crt (give it to the broker's cafile and to every gateway), "
          f"ca.key (0600: keep it offline, with a backup)")
    print(f"valid until {made.cert.not_valid_after_utc:%Y-%m-%d}")
    return 0


def cmd_broker_cert(args: argparse.Namespace) -> int:
    from provisioning import ca

    fleet = ca.load_ca(Path(args.ca))
    cert, key = ca.issue_server(fleet, args.name, args.days)
    out = Path(args.out_dir)
    ca.write_private(out / "broker.key", ca.key_pem(key))
    ca.write_private(out / "broker.crt", ca.cert_pem(cert), 0o644)
    ca.record_issued(fleet, [(f"broker:{args.name[0]}", cert)], "broker")
    print(f"{out}/broker.crt and broker.key (0600) for {', '.join(args.name)}; Mosquitto: "
          f"certfile/keyfile these, cafile {fleet.cert_path}, require_certificate true, "
          "use_identity_as_username true")
    return 0


def _bundles(args: argparse.Namespace, site: str | None) -> int:
    from provisioning import bundle
    from provisioning import ca as fleetca

    try:
        keys = bundle.read_command_keys([Path(k) for k in args.command_key])
        villages = bundle.check_csv(Path(args.csv), keys, site)
        if not villages:
            print(f"error: no row of {args.csv} has site_id {site!r}", file=sys.stderr)
            return 2
        authorized = bundle.read_authorized_keys(Path(args.authorized_keys))
        ca = fleetca.load_ca(Path(args.ca))
        old = fleetca.valid_serials(ca.dir, [v.site_id for v in villages])
        cards = bundle.build(ca, villages, keys, authorized, Path(args.out), args.csv,
                             reissue=args.reissue)
    except RowsInvalid as exc:
        return _print_rows_invalid(exc)
    for card in cards:
        print(f"{card.village.site_id}: {args.out}/{card.village.site_id}/desanet  "
              f"ssh {card.ssh_fingerprint}")
    print(f"{len(cards)} bundle(s) in {args.out}; cards to print: {args.out}/cards.html")
    print("copy each <site>/desanet folder to the root of that box's boot partition")
    if old:
        print("the old certificates are still valid: revoke them once the new bundle is "
              "installed (at once for a lost or stolen box), then publish the CRL:")
        for site, serials in old.items():
            for serial in serials:
                print(f"  desanet provision revoke {site} --ca {args.ca} --serial {serial}")
        print(f"  desanet provision crl --ca {args.ca} --out crl.pem")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    return _bundles(args, None)


def cmd_build_bundle(args: argparse.Namespace) -> int:
    return _bundles(args, args.site)


def cmd_check(args: argparse.Namespace) -> int:
    from provisioning import bundle

    try:
        keys = bundle.read_command_keys([Path(k) for k in args.command_key]) if args.command_key \
            else [bundle.OperatorKey("check.pub", "ed25519:" + "A" * 43 + "=")]
        villages = bundle.check_csv(Path(args.csv), keys)
    except RowsInvalid as exc:
        return _print_rows_invalid(exc)
    print(f"{args.csv}: {len(villages)} village(s), every row valid")
    return 0


def set_clock_forward(when: datetime.datetime) -> None:
    now = time.clock_gettime(time.CLOCK_REALTIME)
    if when.timestamp() > now:
        try:
            time.clock_settime(time.CLOCK_REALTIME, when.timestamp())
        except OSError as exc:
            print(f"warning: the clock stays where it is ({exc}); NTP will set it",
                  file=sys.stderr)
            return
        print(f"clock moved forward to {when:%Y-%m-%d %H:%M} UTC (the bundle's certificate "
              "was issued then; no network time yet)")


def cmd_import(args: argparse.Namespace) -> int:
    from provisioning import importer

    out = importer.import_bundle(Path(args.bundle), Path(args.etc), Path(args.ssh_dir),
                                 Path(args.record),
                                 Path(args.trust_ca) if args.trust_ca else None,
                                 set_clock_forward if args.raise_clock else None,
                                 replace_site=args.replace_site, allow_older=args.allow_older)
    if out.already:
        print(f"{out.site}: already imported (see {args.record}); nothing changed")
    else:
        print(f"{out.site}: imported; {len(out.installed)} files installed, record {args.record}")
    if out.replaced_site is not None:
        print(f"the box was {out.replaced_site!r} and is now {out.site!r}; revoke the old "
              f"site's certificate if no box keeps it: desanet provision revoke "
              f"{out.replaced_site} --ca CA")
    for rel in out.secrets_left:
        print(f"warning: could not remove {args.bundle}/{rel} from the card; delete it by hand",
              file=sys.stderr)
    return 0


def cmd_renew(args: argparse.Namespace) -> int:
    from provisioning import renew

    path, cert = renew.renew(Path(args.ca), args.site, Path(args.out), args.days)
    print(f"{args.site}: new certificate {path} (serial {cert.serial_number:x}, valid until "
          f"{cert.not_valid_after_utc:%Y-%m-%d}), for the key the gateway already has")
    print("install it remotely (the gateway checks it and reconnects):")
    print(f"  desanet fleet send {args.site} cert.install cert=@{path} --broker ... --key ...")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from provisioning import ca

    if not (Path(args.ca) / "ca.crt").exists():
        raise ProvisionError(f"no CA in {args.ca} (ca.crt missing)")
    now = ca.now().timestamp()
    for e in ca.read_record(Path(args.ca)):
        left = int((e["not_after"] - now) // 86400)
        until = datetime.datetime.fromtimestamp(e["not_after"], datetime.UTC)
        state = "revoked" if e.get("revoked") else ("expired" if left < 0 else f"{left} days left")
        print(f"{e['site']:<24} {e['serial']:<40} {e['reason']:<6} until {until:%Y-%m-%d} {state}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from provisioning import renew

    serials = renew.revoke(Path(args.ca), args.site, args.serial)
    print(f"revoked {', '.join(serials)}; now publish the CRL: desanet provision crl --ca "
          f"{args.ca} --out crl.pem (Mosquitto: crlfile crl.pem, then reload the broker)")
    return 0


def cmd_crl(args: argparse.Namespace) -> int:
    from provisioning import renew

    count = renew.write_crl(Path(args.ca), Path(args.out), args.days)
    print(f"{args.out}: CRL with {count} revoked certificate(s); set `crlfile {args.out}` on "
          "the broker's TLS listener and reload it")
    return 0


def register(sub: Any) -> None:
    """Add `provision` to the `desanet` parser's subcommands."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("provision", help="fleet CA, per-village bundles, first-boot import",
                       description="Menyiapkan gateway dari lembar kerja desa (CSV).\n"
                                   "Provision gateways from a spreadsheet of villages "
                                   "(docs/provisioning.md).", epilog=WORKFLOW, formatter_class=fmt)
    psub = p.add_subparsers(dest="provision_command", metavar="SUBCOMMAND", required=True,
                            help="what to do")

    def add(parent: Any, name: str, func: Any, help_: str, epilog: str | None = None
            ) -> argparse.ArgumentParser:
        both = "\n".join(textwrap.fill(text, 79) for text in (ID_HELP[name], help_[:1].upper()
                                                              + help_[1:] + "."))
        q: argparse.ArgumentParser = parent.add_parser(name, help=help_, description=both,
                                                       epilog=epilog, formatter_class=fmt)
        q.set_defaults(func=_os_errors(func))
        return q

    p_ca = psub.add_parser("ca", help="the fleet certificate authority",
                           description="CA armada wilayah / the region's fleet certificate "
                           "authority.")
    casub = p_ca.add_subparsers(dest="ca_command", metavar="SUBCOMMAND", required=True,
                                help="what to do with the CA")
    init = add(casub, "init", cmd_ca_init, "make a new fleet CA (once per region; keep ca.key "
               "offline and backed up: losing it means re-provisioning every gateway)")
    init.add_argument("--dir", required=True, help="new directory for the CA, e.g. ca-jabar")
    init.add_argument("--name", default="desanet fleet CA",
                      help='the CA\'s name, e.g. "Diskominfo Jabar desanet CA"')
    init.add_argument("--days", type=int, default=20 * 365, help="lifetime (default 20 years)")
    bc = add(casub, "broker-cert", cmd_broker_cert, "the region's MQTT broker's server "
             "certificate, signed by the fleet CA (gateways trust only that CA)")
    bc.add_argument("--ca", required=True, help="the CA directory")
    bc.add_argument("--name", action="append", required=True,
                    help="the broker's host name or address as gateways reach it (repeat)")
    bc.add_argument("--out-dir", required=True, help="where to write broker.crt and broker.key")
    bc.add_argument("--days", type=int, default=2 * 365, help="lifetime (default 2 years)")

    def bundle_options(q: argparse.ArgumentParser) -> None:
        q.add_argument("csv", help="the villages CSV (columns below)")
        q.add_argument("--ca", required=True, help="the CA directory (`provision ca init`)")
        q.add_argument("--command-key", action="append", default=[], required=True,
                       metavar="KEY.pub", help="an operator's public command key from "
                       "`desanet fleet keygen` (repeat for several operators)")
        q.add_argument("--authorized-keys", required=True, metavar="FILE",
                       help="the technicians' SSH public keys, one per line (SSH is keys only)")
        q.add_argument("--out", required=True,
                       help="a NEW directory for the bundles and cards (not overwritten)")
        q.add_argument("--reissue", action="store_true",
                       help="also for sites that already hold a valid certificate (a replaced "
                       "box, a lost card); then revoke the old ones as printed. Without it "
                       "such sites are refused and nothing is written")

    b = add(psub, "batch", cmd_batch, "make a bundle and a card for every village of a CSV "
            "(all rows checked first; nothing written unless all are valid; a site that "
            "already holds a valid certificate only with --reissue)", CSV_HELP)
    bundle_options(b)
    one = add(psub, "build-bundle", cmd_build_bundle,
              "make the bundle and card of one village (e.g. a replaced box)", CSV_HELP)
    bundle_options(one)
    one.add_argument("--site", required=True, help="the row's site_id, e.g. jabar-sukamaju")
    chk = add(psub, "check", cmd_check, "check a villages CSV: every problem with its row and "
              "column; writes nothing", CSV_HELP)
    chk.add_argument("csv", help="the villages CSV")
    chk.add_argument("--command-key", action="append", default=[], metavar="KEY.pub",
                     help="operators' public command keys to check too")
    imp = add(psub, "import", cmd_import,
              "install a bundle on this gateway (first boot does this by itself): verify it, "
              "install, record, then remove its secrets from the card; again: no change. A "
              "provisioned box takes only a newer bundle of its own site")
    imp.add_argument("bundle", metavar="BUNDLE_DIR", help="the desanet folder on the boot partition")
    imp.add_argument("--etc", default=ETC, help=f"config directory (default {ETC})")
    imp.add_argument("--ssh-dir", default=SSH_DIR,
                     help=f"where the image's sshd reads the host key and authorized_keys "
                     f"(default {SSH_DIR}, on the data partition)")
    imp.add_argument("--record", default=RECORD,
                     help=f"record of the import (default {RECORD})")
    imp.add_argument("--trust-ca", metavar="CA.crt",
                     help="accept only bundles of this fleet CA (an image built for one region)")
    imp.add_argument("--replace-site", action="store_true",
                     help="a technician re-assigning a provisioned box to another village: "
                     "accept a bundle for a site other than the one on record (first boot "
                     "never does)")
    imp.add_argument("--allow-older", action="store_true",
                     help="accept a bundle whose certificate is older than the installed one, "
                     "or is the installed one in a bundle other than the one that brought it "
                     "(by default refused: an old bundle replayed over a renewal, an edited "
                     "copy)")
    imp.add_argument("--raise-clock", action="store_true",
                     help="if the clock is before the bundle's certificate was issued (a box "
                     "without a clock battery, offline), move it forward to that time (first "
                     "boot does this)")
    rn = add(psub, "renew", cmd_renew, "a new certificate for a gateway's existing key (no new "
             "key travels); install it with `desanet fleet send SITE cert.install cert=@FILE`")
    rn.add_argument("site", help="the gateway's site id")
    rn.add_argument("--ca", required=True, help="the CA directory")
    rn.add_argument("--out", required=True, help="where to write the new certificate (PEM)")
    rn.add_argument("--days", type=int, default=2 * 365, help="lifetime (default 2 years)")
    ls = add(psub, "list", cmd_list, "the certificates this CA issued: site, serial, days left")
    ls.add_argument("--ca", required=True, help="the CA directory")
    rv = add(psub, "revoke", cmd_revoke, "revoke a gateway's certificates (a stolen box); then "
             "publish the CRL with `provision crl`")
    rv.add_argument("site", help="the gateway's site id")
    rv.add_argument("--ca", required=True, help="the CA directory")
    rv.add_argument("--serial", help="only this serial (default: every certificate of the site)")
    crl = add(psub, "crl", cmd_crl, "write the CA's certificate revocation list for the broker "
              "(Mosquitto `crlfile`)")
    crl.add_argument("--ca", required=True, help="the CA directory")
    crl.add_argument("--out", required=True, help="the CRL file (PEM) to write")
    crl.add_argument("--days", type=int, default=30,
                     help="the CRL's next update in days (default 30: publish it again before)")
