"""Optional HTTPS for the portal, with the real daemon, dnsmasq and nftables.

A lab runs with a self-signed certificate for portal.desa (made here by the
openssl CLI). A client that has not logged in reaches the https portal and the
RFC 8908 API with curl --cacert (so the firewall lets it reach the https port
and the certificate is the configured one), and its DHCP reply carries
option 114 with the https API URL. Applying a config without the certificate
takes HTTPS away again (option 114 back to http); one with a key of another
certificate is refused naming portal.tls_key and changes nothing. The whole
login, status and logout round works over HTTPS, with the links to the offline
services and the "Anda sudah keluar" page.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from desanet_lab import LabInfo, LabSpec, run_in
from desanet_lab import plan as p
from desanet_lab.labconfig import deep_merge
from tests.integration.conftest import (
    LAB_TOOLS,
    LabFactory,
    desanet,
    desanet_json,
    has_internet,
    http,
    portal_post,
    require_root,
    require_tools,
    unique_prefix,
    wait_until,
)
from tests.unit.test_portal_tls import make_cert

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS, "openssl")]

PREFIX = unique_prefix("tl")
HTTPS_PORTAL = f"https://{p.PORTAL_HOSTNAME}"
API_HTTPS = f"{HTTPS_PORTAL}/api/captive"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("tls")
    d.chmod(0o755)
    return {"good": make_cert(d, "portal", cn=p.PORTAL_HOSTNAME,
                              sans=(f"DNS:{p.PORTAL_HOSTNAME}",)),
            "other": make_cert(d, "other", cn="other.example", sans=("DNS:other.example",))}


def tls_section(cert: Path, key: Path) -> dict[str, Any]:
    return {"portal": {"tls_certificate": str(cert), "tls_key": str(key)}}


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory, certs: dict[str, tuple[Path, Path]]) -> LabInfo:
    return make_lab(LabSpec(prefix=PREFIX, clients=1, extra=tls_section(*certs["good"])))


def curl_https(lab: LabInfo, url: str, cafile: Path | None) -> Any:
    return http(lab.client(1).name, url, extra=["--cacert", str(cafile)] if cafile else [])


def option_114(lab: LabInfo, tmp_path: Path) -> str:
    """What the gateway's DHCP server says in option 114 to c1 (busybox udhcpc asks for it).

    The hook only records the reply: c1's address and routes stay as they are.
    """
    out = tmp_path / "dhcp-env"
    hook = tmp_path / "record.sh"
    hook.write_text(f'#!/bin/sh\n[ "$1" = bound ] && env > {out}\nexit 0\n')
    hook.chmod(0o755)
    proc = run_in(lab.client(1).name, ["busybox", "udhcpc", "-f", "-q", "-n", "-t", "5", "-T", "1",
                                       "-i", p.CLIENT_INTERFACE, "-O", "114", "-s", str(hook)],
                  timeout=30)
    assert proc.returncode == 0, f"udhcpc in c1 failed: {proc.stderr}"
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    raw = env.get("opt114", "")
    assert raw, f"no option 114 in c1's DHCP reply: {sorted(env)}"
    # busybox gives options it has no name for as hex
    try:
        return bytes.fromhex(raw).decode()
    except ValueError:
        return raw


def config_variant(lab: LabInfo, tmp_path: Path, name: str, change: dict[str, Any],
                   drop_tls: bool = False) -> str:
    data = tomllib.loads(Path(lab.config_path).read_text(encoding="utf-8"))
    if drop_tls:
        for key in ("tls_certificate", "tls_key"):
            data["portal"].pop(key, None)
    path = tmp_path / name
    path.write_text(tomli_w.dumps(deep_merge(data, change)), encoding="utf-8")
    return str(path)


def test_unauthorized_client_gets_the_https_portal_and_api(
        lab: LabInfo, certs: dict[str, tuple[Path, Path]]) -> None:
    cert, _ = certs["good"]
    api = curl_https(lab, API_HTTPS, cert)
    assert api.status == 200, api.error
    assert api.headers["content-type"].startswith("application/captive+json")
    body = api.body
    assert '"captive": true' in body and f'"user-portal-url": "{HTTPS_PORTAL}/"' in body
    page = curl_https(lab, f"{HTTPS_PORTAL}/", cert)
    assert page.status == 200 and 'action="/login"' in page.body
    # The certificate is really checked: without the CA curl refuses it.
    unverified = curl_https(lab, API_HTTPS, None)
    assert unverified.status == 0 and "certificate" in unverified.error.lower(), unverified
    # The http portal is unchanged beside it.
    plain = http(lab.client(1).name, f"http://{p.PORTAL_HOSTNAME}/api/captive")
    assert plain.status == 200 and f'"user-portal-url": "{HTTPS_PORTAL}/"' in plain.body


def test_dhcp_option_114_announces_the_https_api(lab: LabInfo, tmp_path: Path) -> None:
    assert option_114(lab, tmp_path) == API_HTTPS


def test_https_goes_away_with_the_certificate_and_bad_keys_are_refused(
        lab: LabInfo, certs: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    cert, key = certs["good"]
    _, other_key = certs["other"]
    c1 = lab.client(1).name
    before = desanet_json(lab.control_socket, "status")["config"]["version"]

    bad = config_variant(lab, tmp_path, "bad.toml", tls_section(cert, other_key))
    res = desanet(lab.control_socket, "config", "apply", bad)
    assert res.rc != 0 and "portal.tls_key" in res.stderr, res.describe()
    assert desanet_json(lab.control_socket, "status")["config"]["version"] == before
    assert curl_https(lab, API_HTTPS, cert).status == 200  # nothing changed

    plain = config_variant(lab, tmp_path, "plain.toml", {}, drop_tls=True)
    assert desanet_json(lab.control_socket, "config", "apply", plain)["applied"] is True
    try:
        gone = wait_until(lambda: (r := curl_https(lab, API_HTTPS, cert)).status == 0 and r,
                          10, "the https portal to go away")
        assert gone.rc == 7, gone.error  # curl: could not connect (no TLS error: no listener)
        plain_api = http(c1, f"http://{p.PORTAL_HOSTNAME}/api/captive")
        assert plain_api.status == 200
        assert f'"user-portal-url": "http://{p.PORTAL_HOSTNAME}/"' in plain_api.body
        assert wait_until(lambda: option_114(lab, tmp_path) == f"http://{p.PORTAL_HOSTNAME}"
                          "/api/captive", 10, "option 114 back to http")
    finally:
        again = config_variant(lab, tmp_path, "again.toml", tls_section(cert, key))
        assert desanet_json(lab.control_socket, "config", "apply", again)["applied"] is True
    assert wait_until(lambda: curl_https(lab, API_HTTPS, cert).status == 200, 10,
                      "the https portal back")


def test_the_gateway_dnsmasq_config_names_the_https_api(lab: LabInfo) -> None:
    conf = (Path(lab.state_dir) / "run" / "dnsmasq.conf").read_text()
    assert f'dhcp-option=114,"{API_HTTPS}"' in conf.splitlines(), conf


def test_login_status_and_logout_over_https(
        lab: LabInfo, certs: dict[str, tuple[Path, Path]]) -> None:
    cert, _ = certs["good"]
    c1 = lab.client(1).name
    tls = ["--cacert", str(cert)]
    same_origin = [f"Origin: {HTTPS_PORTAL}", "Sec-Fetch-Site: same-origin"]
    link = 'href="http://layanan.desa/"'
    assert not has_internet(c1)
    login = portal_post(c1, f"{HTTPS_PORTAL}/login", {"action": "terms"}, headers=same_origin,
                        extra=tls)
    assert login.status == 303, login.error
    try:
        wait_until(lambda: has_internet(c1), 10, "c1 online after the https login")
        status = http(c1, f"{HTTPS_PORTAL}/", extra=tls)
        assert status.status == 200 and 'action="/logout"' in status.body
        assert link in status.body
        assert http(c1, "http://layanan.desa/").status == 200  # the link leads somewhere
    finally:
        out = portal_post(c1, f"{HTTPS_PORTAL}/logout", {"lang": "id"}, headers=same_origin,
                          extra=tls)
    assert out.status == 303 and out.location == "/?keluar=1", out
    page = http(c1, f"{HTTPS_PORTAL}/?keluar=1", extra=tls)
    assert page.status == 200 and "Anda sudah keluar" in page.body
    assert link in page.body  # the offline services, also from the login page
    wait_until(lambda: not has_internet(c1), 10, "c1 offline after the https logout")
