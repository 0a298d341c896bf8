"""The ``[telemetry]`` section: reporting to the region's MQTT broker (docs/mqtt.md).

Off by default. When ``enabled``, ``broker`` and ``site_id`` are required;
TLS files belong to ``mqtts://`` only, a client certificate comes with its
key, a password with a user name. Every problem names its field path like
the rest of the schema (the loader prefixes ``telemetry.``).
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from gateway.config.units import format_duration, format_size, json_quote, parse_duration, parse_size

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_SITE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_LEVEL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_KEEPALIVE = 65535  # the CONNECT packet's keepalive is 16 bits of seconds
# The error type of a section check whose message is lines that each start with their
# own field path (the loader prints them as they are, like the cross-section checks).
FIELD_LINES = "field_lines"


def _path(value: str) -> str:
    if not value.startswith("/") or "\0" in value:
        raise ValueError(f"{json_quote(value)} is not an absolute path; write e.g. "
                         "\"/etc/desanet/mqtt/device.crt\"")
    return value


def _broker(value: str) -> str:
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme not in DEFAULT_PORTS or not parts.hostname or port == -1 or port == 0
            or parts.path not in ("", "/") or parts.query or parts.fragment
            or parts.username is not None):
        raise ValueError(f"{json_quote(value)} is not a broker URL; write e.g. "
                         "\"mqtts://mqtt.diskominfo.example.go.id:8883\" (mqtt:// or mqtts://, "
                         "host and optional port, no path; user name and password go in "
                         "telemetry.username / telemetry.password)")
    return value


def _site_id(value: str) -> str:
    if value and not _SITE_RE.match(value):
        raise ValueError(f"{json_quote(value)} is not a site id: 1-63 lower-case letters, digits, "
                         "'-' or '_' (it is one MQTT topic level); write e.g. \"jabar-sukamaju\"")
    return value


def _prefix(value: str) -> str:
    levels = value.split("/")
    if value.startswith("$") or not all(_LEVEL_RE.match(x) for x in levels):
        raise ValueError(f"{json_quote(value)} is not a topic prefix: levels of letters, digits, "
                         "'.', '-' or '_' separated by '/', no wildcards, no leading '$' or '/'; "
                         "write e.g. \"desanet/v1\"")
    return value


def _protocol(value: object) -> str:
    text = str(value).strip() if isinstance(value, str | int) and not isinstance(value, bool) else ""
    text = {"5.0": "5", "311": "3.1.1"}.get(text, text)
    if text not in ("auto", "5", "3.1.1"):
        raise ValueError(f"{json_quote(str(value))} is not an MQTT protocol version; write "
                         '"auto" (MQTT 5, or 3.1.1 when the broker refuses 5), "5" or "3.1.1"')
    return text


def _command_key(value: str) -> str:
    from gateway.telemetry.commands import public_key_bytes  # pure: cryptography stays unloaded
    public_key_bytes(value)
    return value


def _seconds(low: int, high: int, example: str) -> BeforeValidator:
    """A duration ("30s", "5m", or seconds) within [low, high]; 0 is allowed when low is 0."""
    def parse(value: object) -> int:
        seconds = 0 if value in (0, "0", "0s") and low == 0 else parse_duration(value)  # type: ignore[arg-type]
        if not low <= seconds <= high:
            raise ValueError(f"{format_duration(seconds) if seconds else '0s'} is outside "
                             f"{format_duration(low) if low else '0s'} to {format_duration(high)}; "
                             f"write e.g. {example}")
        return seconds
    return BeforeValidator(parse)


def _bytes(low: int, high: int, example: str) -> BeforeValidator:
    """A size ("4mb", "512kb", or bytes) within [low, high]."""
    def parse(value: object) -> int:
        size = value if isinstance(value, int) and not isinstance(value, bool) \
            else parse_size(value)  # type: ignore[arg-type]
        if not low <= size <= high:
            raise ValueError(f"{format_size(size) if size > 0 else size} is outside "
                             f"{format_size(low)} to {format_size(high)}; write e.g. {example}")
        return size
    return BeforeValidator(parse)


BrokerUrl = Annotated[str, AfterValidator(_broker)]
FilePath = Annotated[str, AfterValidator(_path)]


class Telemetry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, examples=[True])
    broker: BrokerUrl | None = Field(None, examples=["mqtts://mqtt.diskominfo.example.go.id:8883"])
    # One topic level naming this gateway: <topic_prefix>/<site_id>/status ...
    site_id: Annotated[str, AfterValidator(_site_id)] = Field("", examples=["jabar-sukamaju"])
    topic_prefix: Annotated[str, AfterValidator(_prefix)] = Field("desanet/v1", examples=["desanet/v1"])
    # TLS (mqtts:// only): the region's CA (default: the system's CAs) and this device's
    # certificate and key, both or neither.
    ca_file: FilePath | None = Field(None, examples=["/etc/desanet/mqtt/ca.crt"])
    cert_file: FilePath | None = Field(None, examples=["/etc/desanet/mqtt/device.crt"])
    key_file: FilePath | None = Field(None, examples=["/etc/desanet/mqtt/device.key"])
    # MQTT version: "auto" speaks 5 and falls back to 3.1.1 when the broker refuses 5
    # (docs/mqtt.md "MQTT 3.1.1"); "5" or "3.1.1" forces one.
    protocol: Annotated[str, BeforeValidator(_protocol)] = Field("auto", examples=["auto"])
    username: str | None = Field(None, min_length=1, max_length=256, examples=["jabar-sukamaju"])
    password: str | None = Field(None, min_length=1, max_length=256)
    # Satellite links: a long keepalive costs few bytes; the broker declares the gateway
    # offline (its Will) after 1.5 x keepalive without a packet.
    # 30 minutes: a PINGREQ/PINGRESP every 5 minutes alone was ~1.2 MB a month over TLS
    # (docs/benchmarks.md); the price is a Will 45 minutes after the gateway went silent.
    keepalive: Annotated[int, _seconds(10, MAX_KEEPALIVE, '"30m"')] = Field(1800, examples=["30m"])
    # Reconnect waits double from reconnect_min to reconnect_max, each shortened by a
    # random part of up to reconnect_jitter of itself, so a region does not retry in step.
    reconnect_min: Annotated[int, _seconds(1, 3600, '"5s"')] = Field(5, examples=["5s"])
    reconnect_max: Annotated[int, _seconds(1, 86400, '"10m"')] = Field(600, examples=["10m"])
    reconnect_jitter: float = Field(0.5, ge=0.0, le=1.0, examples=[0.5])
    # The first connection waits a random time up to this long (a power cut that ends
    # for a whole district must not bring every gateway to the broker in one second).
    start_delay_max: Annotated[int, _seconds(0, 3600, '"60s"')] = Field(60, examples=["60s"])
    # The retained status is sent again this often (0, the default: only on connect and on
    # change; the broker keeps it, and a reconnect sends it again anyway).
    status_interval: Annotated[int, _seconds(0, 86400, '"1h"')] = Field(0, examples=["0s"])
    # Periodic telemetry (docs/mqtt.md "Telemetry"): readings are taken every
    # telemetry_sample_interval and folded into one report every telemetry_interval, which is
    # sent only with what moved past its deadband, and in full every telemetry_full_every reports.
    telemetry_interval: Annotated[int, _seconds(10, 86400, '"5m"')] = Field(300, examples=["5m"])
    telemetry_sample_interval: Annotated[int, _seconds(5, 86400, '"1m"')] = Field(60, examples=["1m"])
    telemetry_full_every: int = Field(12, ge=1, le=10000, examples=[12])
    # Reports wait up to this long in the outbox and leave together, one PUBLISH (a batch,
    # zlib-compressed when telemetry_compress and smaller); an event sends what waits at
    # once. 0s: each report on its own (docs/mqtt.md "Batches").
    telemetry_send_interval: Annotated[int, _seconds(0, 86400, '"1h"')] = Field(
        3600, examples=["1h"])
    telemetry_compress: bool = Field(True, examples=[True])
    # Operator public keys that may sign remote commands (docs/mqtt.md "Commands"), each
    # "ed25519:<base64>" as `desanet fleet keygen` prints it. Empty: every command is refused.
    command_keys: tuple[Annotated[str, AfterValidator(_command_key)], ...] = Field(
        (), max_length=64, examples=[["ed25519:oTGk9NsPtQuU+7rspgO9JW6YxyVuOISoU06MIRGPtJg="]])
    # The outbox's bound (docs/mqtt.md "Backlog after an outage"): past it the oldest
    # telemetry is dropped, then the oldest events, each drop counted. A day at the
    # defaults is ~288 telemetry messages and, in a busy village, ~1,000-1,500 events
    # (two per login, uplink changes): 10,000 messages keep about a week. Bodies are
    # ~100-600 bytes, so 4 MiB holds about as many, ~8 MB on disk with SQLite's
    # overhead (a sliver of an SD card) and a few minutes to send at 256 kbit/s.
    backlog_max_messages: int = Field(10_000, ge=100, le=1_000_000, examples=[10_000])
    backlog_max_bytes: Annotated[int, _bytes(64 * 1024, 1024**3, '"4mb"')] = Field(
        4 * 1024 * 1024, examples=["4mb"])

    @property
    def tls(self) -> bool:
        return self.broker is not None and self.broker.startswith("mqtts:")

    @property
    def host(self) -> str:
        assert self.broker is not None
        return urlsplit(self.broker).hostname or ""

    @property
    def port(self) -> int:
        assert self.broker is not None
        parts = urlsplit(self.broker)
        return parts.port or DEFAULT_PORTS[parts.scheme]

    @model_validator(mode="after")
    def _consistent(self) -> Telemetry:
        problems = []
        if self.enabled and self.broker is None:
            problems.append('telemetry.broker: required when telemetry is enabled; write e.g. '
                            'broker = "mqtts://mqtt.diskominfo.example.go.id:8883"')
        if self.enabled and not self.site_id:
            problems.append('telemetry.site_id: required when telemetry is enabled; write e.g. '
                            'site_id = "jabar-sukamaju"')
        tls_files = [n for n in ("ca_file", "cert_file", "key_file") if getattr(self, n)]
        if tls_files and self.broker is not None and not self.tls:
            problems.append(f"telemetry.{tls_files[0]}: set but broker {self.broker} is not mqtts:// "
                            "(TLS files need TLS); "
                            'write e.g. broker = "mqtts://mqtt.example.go.id:8883"')
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            problems.append(f"telemetry.{missing}: missing; a client certificate needs both cert_file and "
                            'key_file (e.g. "/etc/desanet/mqtt/device.key"), or neither')
        if self.password is not None and self.username is None:
            problems.append('telemetry.username: missing; a password is set without it; '
                            'write e.g. username = "jabar-sukamaju"')
        if self.reconnect_min > self.reconnect_max:
            problems.append(f"telemetry.reconnect_min: {format_duration(self.reconnect_min)} is above "
                            f"reconnect_max {format_duration(self.reconnect_max)}; "
                            'write e.g. reconnect_min = "5s", reconnect_max = "10m"')
        if self.telemetry_sample_interval > self.telemetry_interval:
            problems.append(f"telemetry.telemetry_sample_interval: "
                            f"{format_duration(self.telemetry_sample_interval)} is above "
                            f"telemetry_interval {format_duration(self.telemetry_interval)}; write e.g. "
                            'telemetry_sample_interval = "1m", telemetry_interval = "5m"')
        if problems:
            raise PydanticCustomError(FIELD_LINES, "\n".join(problems))
        return self
