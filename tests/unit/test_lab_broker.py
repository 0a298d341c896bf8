"""The lab's MQTT broker, pure parts: its PKI, Mosquitto config and ACL, the gateway's config."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from desanet_lab import broker, labconfig, pki, services
from desanet_lab import plan as p
from gateway.errors import LabError


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    cert.verify_directly_issued_by(ca)  # raises when not
    return True


def test_pki_the_broker_the_operator_and_the_gateway(tmp_path: Path) -> None:
    f = broker.BrokerFiles(tmp_path)
    broker.make_pki(f)
    ca = _cert(f.ca.cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server = _cert(f.server.cert)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["mqtt.lab"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == [p.MQTT_V4]
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    gateway, operator = _cert(f.device(p.LAB_SITE_ID).cert), _cert(f.operator.cert)
    assert (_cn(gateway), _cn(operator)) == ("desa-lab", "operator.lab")
    for cert in (server, gateway, operator):
        assert _signed_by(cert, ca)
        assert cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > datetime.timedelta(
            days=29)
    for pair in (f.ca, f.server, f.operator, f.device(p.LAB_SITE_ID)):
        assert pair.key.stat().st_mode & 0o777 == 0o600


def test_a_second_device_certificate_from_the_same_ca(tmp_path: Path) -> None:
    f = broker.BrokerFiles(tmp_path)
    broker.make_pki(f)
    other = pki.issue(f.ca, "desa-b", "desa-b")
    assert _cn(_cert(other.cert)) == "desa-b" and _signed_by(_cert(other.cert), _cert(f.ca.cert))
    with pytest.raises(LabError, match="not valid"):
        pki.issue(f.ca, "../x", "x")
    with pytest.raises(LabError, match="cannot read the lab CA"):
        pki.issue(pki.Pair(tmp_path / "none.crt", tmp_path / "none.key"), "desa-c", "desa-c")


def test_the_operator_name_can_never_be_a_site_id() -> None:
    # The ACL's per-device pattern gives the CN's subtree: the operator's must belong to nobody.
    from gateway.config.telemetry import _SITE_RE

    assert not _SITE_RE.match(p.OPERATOR_CN)
    assert _SITE_RE.match(p.LAB_SITE_ID)


def test_acl_confines_devices_and_lets_the_operator_read_and_command() -> None:
    lines = [x for x in broker.acl_text().splitlines() if x and not x.startswith("#")]
    assert lines == ["pattern readwrite desanet/v1/%u/#", "user operator.lab",
                     "topic read desanet/v1/#", "topic write desanet/v1/+/cmd/req"]


def test_mosquitto_takes_only_tls_with_a_certificate_of_the_lab_ca(tmp_path: Path) -> None:
    f = broker.BrokerFiles(tmp_path)
    conf = broker.mosquitto_conf_text(f, run_as_root=True).splitlines()
    assert f"listener 8883 {p.MQTT_V4}" in conf
    assert [x for x in conf if x.startswith("listener")] == [f"listener 8883 {p.MQTT_V4}"]
    for line in ("require_certificate true", "use_identity_as_username true",
                 "allow_anonymous false", f"acl_file {f.acl}", f"cafile {f.ca.cert}", "user root"):
        assert line in conf
    assert "user root" not in broker.mosquitto_conf_text(f, run_as_root=False)


def test_the_broker_has_an_address_and_a_name_in_the_wan() -> None:
    cmds = [" ".join(c) for c in p.topology_commands(p.plan_lab(p.LabSpec(prefix="t1")))]
    assert f"-n t1-wan -4 addr add {p.MQTT_V4}/32 dev lo" in cmds
    assert services.ISP_RECORDS["mqtt.lab"] == (p.MQTT_V4,)


def test_the_lab_gateway_reports_to_the_lab_broker() -> None:
    lab = p.plan_lab(p.LabSpec(prefix="t1"))
    _, config = labconfig.lab_config_text(lab, p.LabSpec(prefix="t1"))
    t = config.telemetry
    assert t.enabled and t.broker == "mqtts://mqtt.lab:8883" and t.site_id == "desa-lab"
    assert t.ca_file == "/run/desanet-lab/t1/mqtt/pki/ca.crt"
    assert t.cert_file == "/run/desanet-lab/t1/mqtt/pki/desa-lab.crt"
    assert t.key_file == "/run/desanet-lab/t1/mqtt/pki/desa-lab.key"
    assert t.start_delay_max == 0
    d = broker.describe(lab)
    assert (d["ca"], d["gateway_cert"]) == (t.ca_file, t.cert_file)


def test_without_the_broker_telemetry_stays_off_and_extra_still_wins() -> None:
    spec = p.LabSpec(prefix="t1", broker=False)
    _, config = labconfig.lab_config_text(p.plan_lab(spec), spec)
    assert not config.telemetry.enabled
    spec = p.LabSpec(prefix="t1", extra={"telemetry": {"broker": "mqtts://100.64.0.1:9999",
                                                       "site_id": "lab-mq"}})
    _, config = labconfig.lab_config_text(p.plan_lab(spec), spec)
    assert (config.telemetry.broker, config.telemetry.site_id) == ("mqtts://100.64.0.1:9999", "lab-mq")


def test_the_watch_hint_uses_the_operator_files() -> None:
    d = broker.describe(p.plan_lab(p.LabSpec(prefix="t1")))
    cmd = broker.watch_command(d, " --prefix t1")
    assert cmd.startswith("desanet lab exec --prefix t1 wan -- desanet fleet watch --broker "
                          "mqtts://mqtt.lab:8883 --ca /run/desanet-lab/t1/mqtt/pki/ca.crt")
    assert cmd.endswith("--cert /run/desanet-lab/t1/mqtt/pki/operator.crt "
                        "--key /run/desanet-lab/t1/mqtt/pki/operator.key")


def test_the_lab_operator_signing_key_is_provisioned_in_the_gateway(tmp_path: Path) -> None:
    from gateway.telemetry.commands import parse_public_key

    signing = broker.new_command_key()
    lab = p.plan_lab(p.LabSpec(prefix="t1"))
    _, config = labconfig.lab_config_text(lab, p.LabSpec(prefix="t1"), command_key=signing.public)
    assert config.telemetry.command_keys == (signing.public,)
    parse_public_key(signing.public)  # the form gateways read
    d = broker.describe(lab)
    hint = broker.send_command(d)
    assert hint.startswith("desanet lab exec wan -- desanet fleet send desa-lab status --broker "
                           "mqtts://mqtt.lab:8883 --key /run/desanet-lab/t1/mqtt/pki/commands.key")
    assert hint.endswith("--key-file /run/desanet-lab/t1/mqtt/pki/operator.key")
