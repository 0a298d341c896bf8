"""Optional HTTPS for the portal: config fields, the file checks at apply time, the
listener (real TLS on loopback), DHCP option 114, the firewall port and the captive API."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import Config
from gateway.core.reconcile import Reconciler, portal_listen
from gateway.daemon.servers import DaemonServers
from gateway.errors import ConfigError, ServiceError
from gateway.firewall.planner import plan_ruleset
from gateway.portal.tls import (
    CERT_FIELD,
    KEY_FIELD,
    name_matches,
    server_context,
    tls_problems,
    warnings_for,
)
from gateway.services.dnsmasq import render_dnsmasq_conf
from tests.unit.conftest import make_config
from tests.unit.corekit import build_core

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def make_cert(directory: Path, name: str, cn: str = "portal.desa",
              sans: tuple[str, ...] = ("DNS:portal.desa",)) -> tuple[Path, Path]:
    """A self-signed certificate and its unencrypted key (openssl CLI); (cert, key)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    argv = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={cn}"]
    if sans:
        argv += ["-addext", "subjectAltName=" + ",".join(sans)]
    subprocess.run(argv, check=True, capture_output=True)
    return cert, key


def tls_config(cert: Path | str | None, key: Path | str | None, **more: Any) -> Config:
    portal: dict[str, Any] = {**more}
    if cert is not None:
        portal["tls_certificate"] = str(cert)
    if key is not None:
        portal["tls_key"] = str(key)
    return make_config(portal=portal)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI")
    d = tmp_path_factory.mktemp("tls")
    return {
        "good": make_cert(d, "good"),
        "other": make_cert(d, "other", cn="other.example", sans=("DNS:other.example",)),
        "wildcard": make_cert(d, "wild", cn="x", sans=("DNS:*.desa.example",)),
        "cn_only": make_cert(d, "cn", cn="portal.desa", sans=()),
    }


# -- the config fields -------------------------------------------------------------------------


def test_no_certificate_is_todays_portal() -> None:
    cfg = make_config()
    assert cfg.portal.tls_certificate is None and cfg.portal.tls_key is None
    assert cfg.portal.https_port == 443 and not cfg.portal.https
    assert cfg.portal_https_url is None
    assert tls_problems(cfg.portal) == []


@pytest.mark.parametrize(("portal", "problem"), [
    ({"tls_certificate": "/etc/desanet/tls/portal.crt"}, "portal.tls_key is missing"),
    ({"tls_key": "/etc/desanet/tls/portal.key"}, "portal.tls_certificate is missing"),
    ({"tls_certificate": "portal.crt", "tls_key": "/k"}, "portal.tls_certificate: \"portal.crt\" "
     "is not an absolute path"),
    ({"tls_certificate": "/c", "tls_key": "/k", "https_port": 80}, "https_port 80 is also"),
    ({"tls_certificate": "/c", "tls_key": "/k", "https_port": 2050}, "https_port 2050 is also"),
])
def test_tls_fields_are_both_or_neither(portal: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(portal=portal)
    assert any(problem in line for line in err.value.problems), err.value.problems


def test_both_set_gives_the_https_url() -> None:
    cfg = make_config(portal={"tls_certificate": "/c", "tls_key": "/k"})
    assert cfg.portal.https and cfg.portal_https_url == "https://portal.desa/"
    cfg = make_config(portal={"tls_certificate": "/c", "tls_key": "/k", "https_port": 8443,
                              "http_port": 443})  # without TLS 443 could be anything
    assert cfg.portal_https_url == "https://portal.desa:8443/"


# -- the files, checked when a config is applied -----------------------------------------------


@needs_openssl
def test_matching_files_pass(certs: dict[str, tuple[Path, Path]]) -> None:
    cfg = tls_config(*certs["good"])
    assert tls_problems(cfg.portal) == []
    ctx = server_context(cfg.portal)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


@needs_openssl
def test_bad_files_name_the_field(certs: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    cert, key = certs["good"]
    other_cert, other_key = certs["other"]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(key), "-aes256", "-passout", "pass:x",
                    "-out", str(encrypted)], check=True, capture_output=True)
    cases = [
        (tls_config(tmp_path / "missing.crt", key), CERT_FIELD, "readable"),
        (tls_config(cert, tmp_path / "missing.key"), KEY_FIELD, "readable"),
        (tls_config(garbage, key), CERT_FIELD, "PEM certificate"),
        (tls_config(key, key), CERT_FIELD, "PEM certificate"),
        (tls_config(cert, garbage), KEY_FIELD, "PEM private key"),
        (tls_config(cert, other_key), KEY_FIELD, "belongs to another certificate"),
        (tls_config(other_cert, key), KEY_FIELD, "belongs to another certificate"),
        (tls_config(cert, encrypted), KEY_FIELD, "unencrypted"),
    ]
    for cfg, field, expected in cases:
        problems = tls_problems(cfg.portal)
        assert len(problems) == 1, (cfg.portal, problems)
        assert problems[0][0] == field and expected in problems[0][2], problems


@needs_openssl
def test_daemon_check_includes_the_certificate(certs: dict[str, tuple[Path, Path]],
                                               tmp_path: Path) -> None:
    cert, _ = certs["good"]
    _, other_key = certs["other"]
    bad = tls_config(cert, other_key)
    servers = DaemonServers(lambda: bad, build_core(tmp_path, bad).sessions, tmp_path)
    fields = [field for field, _, _ in servers.check_network(bad)]
    assert KEY_FIELD in fields
    good = tls_config(*certs["good"])  # positive control
    assert KEY_FIELD not in [field for field, _, _ in servers.check_network(good)]


@needs_openssl
@pytest.mark.parametrize(("which", "hostname", "warns"), [
    ("good", "portal.desa", False),
    ("other", "portal.desa", True),
    ("wildcard", "portal.desa.example", False),
    ("wildcard", "a.b.desa.example", True),
    ("cn_only", "portal.desa", False),
])
def test_a_certificate_for_another_name_only_warns(
        certs: dict[str, tuple[Path, Path]], which: str, hostname: str, warns: bool) -> None:
    cfg = tls_config(*certs[which], hostname=hostname)
    found = warnings_for(cfg.portal)
    assert bool(found) == warns, found
    if warns:
        assert CERT_FIELD in found[0] and repr(hostname) in found[0]
    assert tls_problems(cfg.portal) == []  # never refused for the name alone


@needs_openssl
def test_an_expired_certificate_warns(certs: dict[str, tuple[Path, Path]]) -> None:
    cfg = tls_config(*certs["good"])
    assert warnings_for(cfg.portal) == []
    later = warnings_for(cfg.portal, now=4_000_000_000)
    assert len(later) == 1 and "expired" in later[0]


@pytest.mark.parametrize(("pattern", "host", "ok"), [
    ("portal.desa", "portal.desa", True), ("PORTAL.desa.", "portal.desa", True),
    ("*.desa.example", "portal.desa.example", True), ("*.desa.example", "desa.example", False),
    ("*.desa.example", "a.portal.desa.example", False), ("*.example", "desa.example", False),
    ("p*.desa", "portal.desa", False), ("other.desa", "portal.desa", False),
])
def test_name_matching(pattern: str, host: str, ok: bool) -> None:
    assert name_matches(pattern, host) is ok


# -- what the rest of the gateway does with it --------------------------------------------------


def test_dhcp_option_114_announces_https_only_with_a_certificate() -> None:
    plain = render_dnsmasq_conf(make_config(), "/s", "/r")
    assert 'dhcp-option=114,"http://portal.desa/api/captive"' in plain.splitlines()
    tls = render_dnsmasq_conf(tls_config("/c", "/k"), "/s", "/r")
    assert 'dhcp-option=114,"https://portal.desa/api/captive"' in tls.splitlines()
    odd = render_dnsmasq_conf(tls_config("/c", "/k", https_port=8443), "/s", "/r")
    assert 'dhcp-option=114,"https://portal.desa:8443/api/captive"' in odd.splitlines()


def test_firewall_lets_unauthorized_clients_reach_the_https_port_only_when_served() -> None:
    def lan_input(cfg: Config) -> str:
        script = plan_ruleset(cfg, [], 0)
        return script[script.index("chain lan_input"):].split("\n  }", 1)[0]

    assert "tcp dport { 80, 2050 } accept" in lan_input(make_config())
    assert "tcp dport { 80, 2050, 443 } accept" in lan_input(tls_config("/c", "/k"))
    assert "tcp dport { 80, 2050, 8443 } accept" in lan_input(
        tls_config("/c", "/k", https_port=8443))


def test_a_certificate_change_restarts_the_portal_listeners() -> None:
    plain = make_config()
    assert portal_listen(plain) == portal_listen(make_config(portal={"terms_id": "x"}))
    assert portal_listen(plain) != portal_listen(tls_config("/c", "/k"))
    assert portal_listen(tls_config("/c", "/k")) != portal_listen(tls_config("/c2", "/k"))
    assert portal_listen(tls_config("/c", "/k")) != portal_listen(
        tls_config("/c", "/k", https_port=8443))


# -- the listener: real TLS on loopback -----------------------------------------------------------


def _free_port(*taken: int) -> int:
    """A port free now and not one of ``taken`` (chosen but not yet bound: the kernel may
    hand the same free port out twice in a row)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port


def _loopback(cert: Path | None, key: Path | None, https_port: int) -> Config:
    http_port = _free_port(https_port)
    portal: dict[str, Any] = {"http_port": http_port,
                              "redirect_port": _free_port(https_port, http_port),
                              "https_port": https_port}
    if cert is not None and key is not None:
        portal.update(tls_certificate=str(cert), tls_key=str(key))
    return make_config(network={"lan_address": "127.0.0.1/24"},
                       dhcp={"range_start": "127.0.0.100", "range_end": "127.0.0.200"},
                       portal=portal)


async def _https_get(port: int, cafile: Path, path: str) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(cafile))
    async with aiohttp.ClientSession() as session, session.get(
            f"https://127.0.0.1:{port}{path}", ssl=ctx, server_hostname="portal.desa",
            headers={"Host": "portal.desa"}) as resp:
        return resp.status, await resp.text()


@needs_openssl
async def test_https_is_served_when_configured_and_not_otherwise(
        certs: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    cert, key = certs["good"]
    https_port = _free_port()
    cfg = _loopback(cert, key, https_port)
    core = build_core(tmp_path, cfg)
    servers = DaemonServers(core.holder.get, core.sessions, core.state_dir)
    await servers.sync_portal(cfg, None)
    try:
        status, body = await _https_get(https_port, cert, "/api/captive")
        assert status == 200
        assert json.loads(body)["user-portal-url"] == f"https://portal.desa:{https_port}/"
        status, body = await _https_get(https_port, cert, "/")
        assert status == 200 and 'action="/login"' in body
    finally:
        await servers.stop_portal()
    # Without a certificate: the same port is not listened on, the http portal is as before.
    plain = _loopback(None, None, https_port)
    servers = DaemonServers(lambda: plain, core.sessions, core.state_dir)
    await servers.sync_portal(plain, None)
    try:
        with pytest.raises(aiohttp.ClientConnectorError):
            await _https_get(https_port, cert, "/api/captive")
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{plain.portal.http_port}/api/captive",
                headers={"Host": "portal.desa"}) as resp:
            url = (await resp.json(content_type=None))["user-portal-url"]
            assert url == f"http://portal.desa:{plain.portal.http_port}/"
    finally:
        await servers.stop_portal()


@needs_openssl
async def test_a_bad_key_in_a_change_is_a_service_error_naming_the_field(
        certs: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    cert, _ = certs["good"]
    _, other_key = certs["other"]
    cfg = _loopback(cert, other_key, _free_port())
    core = build_core(tmp_path, cfg)
    servers = DaemonServers(core.holder.get, core.sessions, core.state_dir)
    with pytest.raises(ServiceError, match=r"portal\.tls_key"):
        await servers.sync_portal(cfg, make_config())
    assert servers._portal is None  # nothing half-started


@needs_openssl
async def test_a_bad_key_at_start_still_serves_the_http_portal(
        certs: dict[str, tuple[Path, Path]], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """HTTPS is optional, the portal is not: a key file broken since the last run must not
    lock the village out at start (an apply is refused before that, see above)."""
    cert, _ = certs["good"]
    _, other_key = certs["other"]
    https_port = _free_port()
    cfg = _loopback(cert, other_key, https_port)
    core = build_core(tmp_path, cfg)
    servers = DaemonServers(core.holder.get, core.sessions, core.state_dir)
    with caplog.at_level(logging.ERROR, logger="desanet.servers"):
        await servers.sync_portal(cfg, None)
    try:
        assert any("portal.tls_key" in r.getMessage() and "http only" in r.getMessage()
                   for r in caplog.records)
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{cfg.portal.http_port}/api/captive",
                headers={"Host": "portal.desa"}) as resp:
            assert resp.status == 200
        with pytest.raises(aiohttp.ClientConnectorError):
            await _https_get(https_port, cert, "/api/captive")
    finally:
        await servers.stop_portal()


@needs_openssl
async def test_reconciler_moves_the_portal_to_https_and_back(
        certs: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    cert, key = certs["good"]
    plain = _loopback(None, None, _free_port())
    core = build_core(tmp_path, plain)
    servers = DaemonServers(core.holder.get, core.sessions, core.state_dir)
    reconciler = Reconciler(core.holder, core.sessions, core.shaping, core.firewall, core.dhcp,
                            servers, core.clock)
    await servers.sync_portal(plain, None)
    try:
        https = plain.model_copy(update={"portal": plain.portal.model_copy(update={
            "tls_certificate": str(cert), "tls_key": str(key)})})
        steps = await reconciler.converge(https, plain)
        assert "portal" in steps
        status, _ = await _https_get(https.portal.https_port, cert, "/api/captive")
        assert status == 200
    finally:
        await servers.stop_portal()


@needs_openssl
async def test_a_certificate_for_another_name_is_served_with_a_warning(
        certs: dict[str, tuple[Path, Path]], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    cert, key = certs["other"]
    https_port = _free_port()
    cfg = _loopback(cert, key, https_port)
    core = build_core(tmp_path, cfg)
    servers = DaemonServers(core.holder.get, core.sessions, core.state_dir)
    with caplog.at_level(logging.WARNING, logger="desanet.servers"):
        await servers.sync_portal(cfg, make_config())
    try:
        assert any("not portal.hostname 'portal.desa'" in r.getMessage()
                   and r.levelno == logging.WARNING for r in caplog.records)
        ctx = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as session, session.get(
                f"https://127.0.0.1:{https_port}/api/captive", ssl=ctx,
                server_hostname="other.example", headers={"Host": "portal.desa"}) as resp:
            assert resp.status == 200
    finally:
        await servers.stop_portal()
