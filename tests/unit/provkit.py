"""Shared makings of the provisioning tests: a CA, operator and technician keys, a CSV."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.telemetry import commands as c
from provisioning import bundle
from provisioning import ca as fleetca
from provisioning.villages import parse_villages

HEADER = "site_id,name,village,region,timezone,ssid,passphrase,plans,uplink,broker\n"
ROW_A = ('jabar-sukamaju,Hotspot Desa Sukamaju,Desa Sukamaju,"Kab. Garut, Jawa Barat",WIB,'
         'Sukamaju;Net,generate,harian=2mbit/512kbit sekolah=10mbit/2mbit,20mbit/5mbit,'
         'mqtts://mqtt.example.go.id:8883\n')
ROW_B = ("ntb-lembah,Hotspot Lembah,Desa Lembah,Kab. Lombok,WITA,Lembah WiFi,,,10mbit/2mbit,"
         "mqtts://mqtt.example.go.id:8883\n")
CSV = HEADER + ROW_A + ROW_B


@dataclass(frozen=True)
class Fleet:
    ca: fleetca.Ca
    operator: Ed25519PrivateKey
    keys: list[bundle.OperatorKey]
    authorized: str
    root: Path


def make_fleet(root: Path) -> Fleet:
    ca = fleetca.init_ca(root / "ca", "desanet test CA")
    op = Ed25519PrivateKey.generate()
    tech = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return Fleet(ca, op, [bundle.OperatorKey("op.pub", c.public_key_text(op.public_key()))],
                 tech + " teknisi@garut\n", root)


def make_bundles(fleet: Fleet, out: Path, text: str = CSV, reissue: bool = False) -> list[Path]:
    cards = bundle.build(fleet.ca, parse_villages(text), fleet.keys, fleet.authorized, out,
                         reissue=reissue)
    return [out / card.village.site_id / "desanet" for card in cards]


def have(program: str) -> bool:
    try:
        subprocess.run([program, "-V"], capture_output=True, check=False)
    except FileNotFoundError:
        return False
    return True
