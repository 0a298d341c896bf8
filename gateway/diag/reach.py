"""Reaching out: DNS through the gateway and upstream, HTTP to each government-service
upstream, the region's MQTT broker, and the uplink's speed.

The verdicts are pure functions of what the probes saw (``classify_*``, unit tested);
the probes themselves are in :mod:`gateway.diag.probes` and :mod:`gateway.diag.dnsquery`.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.config import Config
from gateway.config.units import human_rate
from gateway.diag import dnsquery, probes
from gateway.diag.certs import NEW_BUNDLE, RENEW, cap
from gateway.diag.context import DiagContext
from gateway.diag.result import CheckResult, Status, verdict, worst
from gateway.diag.threads import in_thread
from gateway.telemetry.certexpiry import ended, ends_in, renewal_due

FALLBACK_DNS_NAME = "kemendagri.go.id"


# -- DNS ------------------------------------------------------------------------------


def dns_name(cfg: Config, override: str | None) -> str:
    """The name to ask: a service's or the walled garden's host, which villagers need."""
    if override:
        return override
    for svc in cfg.local_services.services:
        host = urlsplit(svc.upstream).hostname
        if host and not _is_ip(host):
            return host
    for name in cfg.walled_garden.hostnames:
        if not name.startswith("*."):
            return name
    return FALLBACK_DNS_NAME


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def resolv_conf_servers(text: str, exclude: Sequence[str] = ()) -> list[str]:
    """The nameservers of a resolv.conf, less loopback ones and ``exclude``."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if (len(parts) >= 2 and parts[0] == "nameserver" and _is_ip(parts[1])
                and not ipaddress.ip_address(parts[1]).is_loopback and parts[1] not in exclude):
            out.append(parts[1])
    return out


def _outcome_json(o: dnsquery.Outcome) -> dict[str, Any]:
    return {"server": o.server, "rcode": o.answer.rcode if o.answer else "",
            "addresses": o.answer.addresses if o.answer else [], "error": o.error,
            "seconds": round(o.seconds, 3)}


def classify_dns(name: str, host: str, gateway: dnsquery.Outcome,
                 upstream: Sequence[dnsquery.Outcome]) -> CheckResult:
    gw_ok = gateway.answer is not None and gateway.answer.answered
    up_ok = [o for o in upstream if o.answer is not None and o.answer.answered]
    up_bad = [o for o in upstream if o not in up_ok]
    details: dict[str, Any] = {"name": host, "gateway": _outcome_json(gateway),
                               "upstream": [_outcome_json(o) for o in upstream]}
    bad = ", ".join(f"{o.server} ({o.error or (o.answer.rcode if o.answer else '?')})"
                    for o in up_bad)
    if not gw_ok:
        why = gateway.error or (gateway.answer.rcode if gateway.answer else "?")
        also_id, also_en = ("", "") if up_ok or not upstream else (
            " Resolver upstream juga tidak menjawab.",
            " The upstream resolvers do not answer either.")
        return verdict(name, "fail",
                       (f"DNS gateway ({gateway.server}) tidak menjawab {host}: {why}. Warga "
                        f"tidak bisa membuka portal atau situs apa pun.{also_id}",
                        f"The gateway's DNS ({gateway.server}) does not answer {host}: {why}. "
                        f"Villagers cannot open the portal or any site.{also_en}"),
                       ("Periksa bahwa layanan berjalan (pemeriksaan `daemon`) dan lihat log "
                        "(pemeriksaan `logs`); dnsmasq dijalankan oleh desanet.",
                        "Check that the service runs (the `daemon` check) and read the log "
                        "(the `logs` check); desanet runs dnsmasq."), **details)
    if upstream and not up_ok:
        return verdict(name, "fail",
                       (f"Resolver upstream tidak menjawab: {bad}. Gateway hanya menjawab dari "
                        "cache; nama baru tidak bisa dibuka.",
                        f"The upstream resolvers do not answer: {bad}. The gateway answers "
                        "from its cache only; new names will not open."),
                       ("Periksa uplink (modem, kabel WAN); bila uplink hidup, ganti "
                        "dhcp.upstream_dns ke resolver lain, mis. 1.1.1.1.",
                        "Check the uplink (modem, WAN cable); if it works, set "
                        "dhcp.upstream_dns to another resolver, e.g. 1.1.1.1."), **details)
    if up_bad:
        return verdict(name, "warn",
                       (f"Sebagian resolver upstream tidak menjawab: {bad}.",
                        f"Some upstream resolvers do not answer: {bad}."),
                       ("Hapus atau ganti resolver itu di dhcp.upstream_dns.",
                        "Remove or replace that resolver in dhcp.upstream_dns."), **details)
    note = ("", "")
    if gateway.answer is not None and gateway.answer.rcode == "NXDOMAIN":
        note = (f" (nama {host} tidak ada, tetapi server menjawab)",
                f" ({host} does not exist, but the servers answer)")
    return verdict(name, "ok",
                   (f"DNS bekerja lewat gateway dan {len(up_ok)} resolver upstream{note[0]}.",
                    f"DNS works through the gateway and {len(up_ok)} upstream "
                    f"resolvers{note[1]}."), **details)


async def check_dns(ctx: DiagContext) -> CheckResult:
    cfg = ctx.config
    assert cfg is not None
    host = dns_name(cfg, ctx.options.dns_name)
    servers = [str(s) for s in cfg.dhcp.upstream_dns]
    if not servers:
        text = await in_thread(_read_text, "/etc/resolv.conf")
        servers = resolv_conf_servers(text, exclude=[cfg.lan_ip])
    t = ctx.options.timeout
    gateway, *upstream = await asyncio.gather(
        dnsquery.ask(cfg.lan_ip, host, t), *(dnsquery.ask(s, host, t) for s in servers))
    return classify_dns("dns", host, gateway, upstream)


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


# -- HTTP to the services' upstreams --------------------------------------------------


def classify_http(name: str, probes_: Sequence[tuple[str, probes.HttpProbe]]) -> CheckResult:
    """``probes_`` holds (service slug, probe): any answer means the upstream is reachable
    (even a 404); a 5xx is the service's own trouble; no answer is a failure with its reason."""
    rows, statuses, lines_id, lines_en = [], [], [], []
    for slug, p in probes_:
        st: Status = "ok" if 0 < p.status < 500 else ("warn" if p.status else "fail")
        statuses.append(st)
        rows.append({"service": slug, "url": p.url, "status": p.status, "reason": p.reason,
                     "error": p.error, "seconds": round(p.seconds, 3), "verdict": st})
        if st == "warn":
            lines_id.append(f"{slug}: server menjawab dengan galat {p.status}")
            lines_en.append(f"{slug}: the server answers with error {p.status}")
        elif st == "fail":
            lines_id.append(f"{slug} ({p.url}): {probes.reason_words(p.reason, 'id')}")
            lines_en.append(f"{slug} ({p.url}): {probes.reason_words(p.reason, 'en')}")
    status = worst(statuses)
    details: dict[str, Any] = {"services": rows}
    if status == "ok":
        return verdict(name, "ok", (f"Semua layanan pemerintah ({len(rows)}) bisa dihubungi.",
                                    f"All government services ({len(rows)}) are reachable."),
                       **details)
    advice = (("Layanan yang gagal tetap dilayani dari cache selama masih ada salinannya. "
               "Bila 'diblokir': periksa firewall ISP/modem; bila 'ditolak' atau galat 5xx: "
               "server layanan sedang bermasalah, hubungi pengelolanya (Diskominfo); bila "
               "TLS: periksa jam (pemeriksaan `clock`).",
               "Failing services are still served from the cache while copies last. If "
               "'blocked': check the ISP's or modem's firewall; if 'refused' or a 5xx: the "
               "service's server has trouble, contact its operator (Diskominfo); if TLS: "
               "check the clock (the `clock` check)."))
    return verdict(name, status, ("Layanan bermasalah: " + "; ".join(lines_id) + ".",
                                  "Services in trouble: " + "; ".join(lines_en) + "."),
                   advice, **details)


async def check_http(ctx: DiagContext) -> CheckResult:
    cfg = ctx.config
    assert cfg is not None
    services = cfg.local_services.services
    if not cfg.local_services.enabled or not services:
        return verdict("http", "skip",
                       ("Dilewati: tidak ada layanan pemerintah lokal yang diatur.",
                        "Skipped: no local government services are configured."),
                       ("Tidak perlu tindakan (lihat local_services di konfigurasi).",
                        "Nothing to do (see local_services in the config)."))
    t = min(ctx.options.timeout, float(cfg.local_services.request_timeout))
    found = await asyncio.gather(*(in_thread(probes.http_get, s.upstream + "/", t)
                                   for s in services))
    return classify_http("http", [(s.slug, p) for s, p in zip(services, found, strict=True)])


# -- MQTT -----------------------------------------------------------------------------


def cert_days_left(cert_file: str, now: datetime.datetime) -> tuple[float, float]:
    """(days until the certificate expires, days since it became valid); negative when
    expired or not yet valid. Blocks (reads a file)."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    after, before = cert.not_valid_after_utc, cert.not_valid_before_utc
    return (after - now).total_seconds() / 86400, (now - before).total_seconds() / 86400


def classify_mqtt(name: str, broker: str, probe: probes.MqttProbe,
                  cert: tuple[float, float] | None, cert_error: str = "") -> CheckResult:
    details: dict[str, Any] = {"broker": broker, "stage": probe.stage, "reason": probe.reason,
                               "error": probe.error, "seconds": round(probe.seconds, 3)}
    if cert is not None:
        details["cert_days_left"] = round(cert[0], 1)
    if cert_error:
        details["cert_error"] = cert_error
    if cert is not None and cert[1] < 0:
        return verdict(name, "fail",
                       ("Sertifikat klien MQTT belum berlaku: jam sistem mungkin salah.",
                        "The MQTT client certificate is not valid yet: the system clock may "
                        "be wrong."),
                       ("Periksa jam (pemeriksaan `clock`).", "Check the clock (the `clock` check)."),
                       **details)
    days = math.floor(cert[0]) if cert is not None else None
    if days is not None and days < 0:
        words = ended(days)
        return verdict(name, "fail",
                       (f"{cap(words[0])} (periksa juga jam sistem).",
                        f"{cap(words[1])} (check the system clock too)."),
                       NEW_BUNDLE, **details)
    if probe.stage != "connected":
        if probe.reason.startswith("connack-"):
            why = (f"broker menolak login: {probe.error}", f"the broker refused the login: "
                   f"{probe.error}")
        else:
            why = (probes.reason_words(probe.reason, "id"), probes.reason_words(probe.reason, "en"))
        stage = probe.stage.upper()  # DNS, TCP, TLS or MQTT: where it stopped
        return verdict(name, "fail",
                       (f"Broker MQTT {broker} tidak bisa dihubungi ({stage}): {why[0]}.",
                        f"The MQTT broker {broker} cannot be reached ({stage}): {why[1]}."),
                       ("Laporan ke regional tertunda dan disimpan di antrean sampai broker "
                        "bisa dihubungi. Periksa uplink dan alamat telemetry.broker; bila TLS "
                        "gagal, periksa jam sistem dan berkas sertifikat (ca_file, cert_file).",
                        "Reports to the region wait in the outbox until the broker is reached. "
                        "Check the uplink and telemetry.broker; if TLS fails, check the system "
                        "clock and the certificate files (ca_file, cert_file)."), **details)
    if days is not None and renewal_due(days):
        words = ends_in(days)
        return verdict(name, "warn", (f"Broker terhubung, tetapi {words[0]}.",
                                      f"Broker reached, but {words[1]}."), RENEW, **details)
    return verdict(name, "ok", (f"Broker MQTT {broker} terhubung ({probe.seconds:.1f} detik).",
                                f"MQTT broker {broker} reached ({probe.seconds:.1f} s)."),
                   **details)


async def check_mqtt(ctx: DiagContext) -> CheckResult:
    assert ctx.config is not None
    tel = ctx.config.telemetry
    if not tel.enabled or tel.broker is None:
        return verdict("mqtt", "skip",
                       ("Dilewati: pelaporan MQTT tidak aktif (telemetry.enabled).",
                        "Skipped: MQTT reporting is off (telemetry.enabled)."),
                       ("Tidak perlu tindakan bila desa ini tidak melapor ke regional.",
                        "Nothing to do if this village does not report to the region."))
    cert: tuple[float, float] | None = None
    cert_error = ""
    if tel.cert_file:
        try:
            cert = await in_thread(cert_days_left, tel.cert_file,
                                   datetime.datetime.now(datetime.UTC))
        except (OSError, ValueError) as exc:
            cert_error = str(exc)
    probe = await in_thread(probes.mqtt_connect, tel.host, tel.port, tel.tls,
                            ctx.options.timeout, tel.ca_file, tel.cert_file, tel.key_file,
                            tel.username, tel.password)
    return classify_mqtt("mqtt", tel.broker, probe, cert, cert_error)


# -- uplink speed ---------------------------------------------------------------------

MIN_SAMPLE = 32 * 1024  # bytes: less says more about latency than about speed
SPEED_BUDGET = 20.0  # s of reading: a slow uplink is measured on what arrived by then


def classify_speed(name: str, probe: probes.HttpProbe, target: int) -> CheckResult:
    rate = int(probe.size * 8 / probe.body_seconds) if probe.body_seconds > 0 else 0
    details: dict[str, Any] = {
        "url": probe.url, "bytes": probe.size, "seconds": round(probe.body_seconds, 3),
        "bits_per_second": rate, "target": target, "status": probe.status, "reason": probe.reason}
    if probe.status == 0 or probe.status >= 400:
        why = (probes.reason_words(probe.reason, "id"), probes.reason_words(probe.reason, "en")) \
            if probe.status == 0 else (f"galat HTTP {probe.status}", f"HTTP error {probe.status}")
        return verdict(name, "fail",
                       (f"Uji kecepatan gagal ({probe.url}): {why[0]}.",
                        f"The speed test failed ({probe.url}): {why[1]}."),
                       ("Periksa uplink; atau pilih berkas uji lain dengan --speed-url.",
                        "Check the uplink; or pick another test file with --speed-url."),
                       **details)
    if probe.size < MIN_SAMPLE:
        return verdict(name, "skip",
                       (f"Berkas uji terlalu kecil ({probe.size} bita) untuk mengukur kecepatan.",
                        f"The test file is too small ({probe.size} bytes) to measure speed."),
                       ("Pilih berkas yang lebih besar dengan --speed-url (mis. 1 MB).",
                        "Pick a larger file with --speed-url (e.g. 1 MB)."), **details)
    shown, want = human_rate(rate), human_rate(target)
    if rate < target:
        return verdict(name, "warn",
                       (f"Uplink lambat: {shown}, di bawah target {want}.",
                        f"The uplink is slow: {shown}, below the target {want}."),
                       ("Periksa sinyal/antena dan modem; tanyakan ke ISP. Uji saat sepi "
                        "pengguna untuk hasil yang adil.",
                        "Check the signal/antenna and the modem; ask the ISP. Test when few "
                        "people use it for a fair figure."), **details)
    return verdict(name, "ok", (f"Kecepatan uplink {shown}, memenuhi target {want}.",
                                f"Uplink speed {shown}, meets the target {want}."), **details)


async def check_speed(ctx: DiagContext) -> CheckResult:
    cfg = ctx.config
    assert cfg is not None
    url = ctx.options.speed_url
    if url is None and cfg.local_services.services:
        url = cfg.local_services.services[0].upstream + "/"
    if url is None:
        return verdict("speed", "skip",
                       ("Dilewati: tidak ada alamat uji; beri --speed-url.",
                        "Skipped: no test address; give --speed-url."),
                       ("Mis. desanet diag speed --speed-url http://server/1mb.bin",
                        "E.g. desanet diag speed --speed-url http://server/1mb.bin"))
    probe = await in_thread(probes.http_get, url, max(ctx.options.timeout, 10.0),
                            ctx.options.speed_bytes, SPEED_BUDGET)
    return classify_speed("speed", probe, ctx.options.speed_target)
