"""`desanet fleet keygen` and `desanet fleet send`: the operator's side of remote commands.

``keygen`` writes an Ed25519 key pair: the private key (PKCS#8 PEM, mode 0600,
never overwritten) and ``<file>.pub`` holding the public key in the text form
gateways are provisioned with (``telemetry.command_keys``).

``send`` signs a command (gateway/telemetry/commands.py), publishes it on the
site's ``cmd/req`` with an MQTT 5 response topic under the site's ``cmd/res``
and random correlation data, and waits, up to ``--timeout``, for the answer
with that correlation data. An unanswered command can be sent again with the
same ``--id``: the gateway carries it out at most once and answers a repeat
with the first response (reason ``replayed``, the answer in ``first``).

This runs on an operator's machine, not in the daemon: paho's blocking client,
the wait on a threading.Event with a deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config.loader import write_file_atomic
from gateway.config.units import parse_duration
from gateway.errors import DesanetError, Invalid
from gateway.fleet import watch
from gateway.telemetry import commands as c
from gateway.telemetry.topics import Topics

EXIT_OK, EXIT_REFUSED, EXIT_NO_ANSWER = 0, 1, 4


class FleetError(DesanetError):
    """The broker could not be reached, or a key file cannot be used."""


# -- keygen -----------------------------------------------------------------------------


def keygen(path: Path, force: bool = False) -> str:
    """Write a new key pair at ``path`` (0600) and ``path.pub``; the public key text.
    Raises FleetError when ``path`` exists (unless ``force``) or cannot be written."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    public = c.public_key_text(key.public_key())
    if path.exists() and not force:
        raise FleetError(f"{path} exists; not overwriting an operator key (choose another "
                         "--out, or --force to replace it)")
    try:  # owner-only temp file, fsync, rename: never half a key, never readable by others
        write_file_atomic(path, pem.decode())
        write_file_atomic(f"{path}.pub", public + "\n")
        os.chmod(f"{path}.pub", 0o644)
    except OSError as exc:
        raise FleetError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return public


def load_key(path: str) -> Ed25519PrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FleetError(f"cannot read the operator key {path}: {exc.strerror or exc}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise FleetError(f"{path} is not an unencrypted PEM private key ({exc}); make one "
                         "with `desanet fleet keygen`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise FleetError(f"{path} is not an Ed25519 key; make one with `desanet fleet keygen`")
    return key


# -- send -------------------------------------------------------------------------------


def parse_args_pairs(pairs: list[str], raw_json: str | None) -> dict[str, Any]:
    """``name=value`` words (strings) and/or ``--args`` JSON into the command's args."""
    out: dict[str, Any] = {}
    if raw_json:
        try:
            loaded = json.loads(raw_json)
        except ValueError as exc:
            raise Invalid("--args", raw_json, f"a JSON object ({exc})", '\'{"mac": "02:..."}\'') \
                from None
        if not isinstance(loaded, dict):
            raise Invalid("--args", raw_json, "a JSON object", '\'{"mac": "02:..."}\'')
        out.update(loaded)
    for word in pairs:
        name, sep, value = word.partition("=")
        if not sep or not name:
            raise Invalid("ARG", word, "name=value", "mac=02:00:00:00:00:01")
        out[name] = value
    return out


def _broker(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise Invalid("--broker", url, "mqtt://HOST[:PORT] or mqtts://HOST[:PORT]",
                      "mqtts://mqtt.diskominfo.example.go.id:8883")
    return parts.hostname, parts.port or (8883 if parts.scheme == "mqtts" else 1883), \
        parts.scheme == "mqtts"


@dataclass(frozen=True)
class BrokerAccess:
    """How the operator reaches the broker."""

    url: str
    ca: str | None = None
    cert: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None


def send(args: argparse.Namespace) -> dict[str, Any] | None:
    """Sign the command of ``args``, send it, wait; the answer, or None after the deadline."""
    timeout = parse_duration(args.timeout)
    lifetime = parse_duration(args.lifetime)
    if not 0 < lifetime <= c.MAX_LIFETIME:
        raise Invalid("--lifetime", args.lifetime, f"at most {c.MAX_LIFETIME // 3600}h", "10m")
    access = BrokerAccess(args.broker, args.ca, args.cert, args.key_file, args.username,
                          args.password)
    _broker(access.url)  # a bad URL is refused before the key is read
    try:
        topics = Topics(args.prefix, args.site)
    except ValueError as exc:
        raise Invalid("SITE", args.site, str(exc)) from None
    key = load_key(args.key)
    cid = args.id or f"op-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"
    now = int(time.time())
    body = c.body_json(cid, args.site, args.command, parse_args_pairs(args.arg, args.args),
                       now, now + lifetime)
    return exchange(access, topics, c.sign(body, key), timeout)


def exchange(access: BrokerAccess, topics: Topics, payload: bytes, timeout: float
             ) -> dict[str, Any] | None:
    """Publish ``payload`` on the site's ``cmd/req`` with a response topic under its
    ``cmd/res`` and random correlation data; the answer carrying that correlation data,
    or None when none came within ``timeout`` seconds. Blocks. Raises FleetError."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    host, port, tls = _broker(access.url)
    reply_topic = f"{topics.cmd_res}/{secrets.token_hex(8)}"
    correlation = secrets.token_bytes(16)
    answer: dict[str, Any] = {}
    subscribed, answered = threading.Event(), threading.Event()
    failure: list[str] = []

    def on_connect(client: paho.Client, _u: object, _f: object, reason: Any, _p: object) -> None:
        if reason.is_failure:
            failure.append(f"the broker refused the connection: {reason}")
            subscribed.set()
            return
        client.subscribe(reply_topic, qos=1)

    def on_subscribe(_c: object, _u: object, _m: object, reasons: Any, _p: object) -> None:
        if any(r.is_failure for r in reasons):
            failure.append(f"the broker refused the subscription to {reply_topic} (check its ACL)")
        subscribed.set()

    def on_message(_c: object, _u: object, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        if getattr(props, "CorrelationData", None) != correlation:
            return  # someone else's answer
        try:
            answer.update(json.loads(msg.payload))
        except ValueError:
            answer.update({"ok": False, "reason": "unreadable answer"})
        answered.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"desanet-op-{secrets.token_hex(6)}",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    if tls:
        client.tls_set(ca_certs=access.ca, certfile=access.cert, keyfile=access.key_file)
    if access.username:
        client.username_pw_set(access.username, access.password)
    deadline = time.monotonic() + timeout
    try:
        client.connect(host, port, keepalive=60, clean_start=True)
    except (OSError, ValueError) as exc:
        raise FleetError(f"cannot connect to {host}:{port}: {exc}") from exc
    client.loop_start()
    try:
        if not subscribed.wait(max(0.0, deadline - time.monotonic())):
            raise FleetError(f"no answer from the broker {host}:{port} within {timeout:g} s")
        if failure:
            raise FleetError(failure[0])
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_topic
        props.CorrelationData = correlation
        client.publish(topics.cmd_req, payload, qos=1, properties=props)
        if not answered.wait(max(0.0, deadline - time.monotonic())):
            return None
        return answer
    finally:
        client.disconnect()
        client.loop_stop()


def cmd_keygen(args: argparse.Namespace) -> int:
    public = keygen(Path(args.out), args.force)
    if args.json:
        print(json.dumps({"private_key": str(args.out), "public_key": public}))
    else:
        print(f"private key: {args.out} (mode 0600; keep it on the operator's machine)")
        print(f"public key:  {args.out}.pub")
        print("provision gateways with it, in [telemetry]:")
        print(f'  command_keys = ["{public}"]')
    return EXIT_OK


def cmd_send(args: argparse.Namespace) -> int:
    answer = send(args)
    if answer is None:
        print(f"error: no answer from {args.site} within {args.timeout} (the gateway may be "
              "offline; sending again with the same --id is safe)", file=sys.stderr)
        return EXIT_NO_ANSWER
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    elif answer.get("ok"):
        print(f"{answer.get('site')}: {answer.get('name')} ({answer.get('id')}): ok")
        print(json.dumps(answer.get("result"), indent=2, sort_keys=True))
    else:
        where = f" (field {answer['field']})" if answer.get("field") else ""
        print(f"{answer.get('site')}: {answer.get('name')} ({answer.get('id')}): "
              f"{answer.get('reason')}{where}: {answer.get('error', '')}")
        if answer.get("first") is not None:
            print("the first answer to this id:")
            print(json.dumps(answer["first"], indent=2, sort_keys=True))
    return EXIT_OK if answer.get("ok") else EXIT_REFUSED


def register(sub: Any) -> None:
    """Add `fleet` to the `desanet` parser's subcommands."""
    fleet = sub.add_parser("fleet", help="operator tools: keys, signed commands, the live watch",
                           description="operator tools: keys and signed commands to gateways, "
                                       "a live table of every gateway")
    fsub = fleet.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND", required=True,
                                help="what to do")
    watch.register(fsub)  # `desanet fleet watch` (gateway/fleet/watch.py)
    from gateway.fleet import serve  # `desanet fleet serve` (prometheus_client loads only here)

    serve.register(fsub)
    kg = fsub.add_parser("keygen", help="make an operator key pair (Ed25519)",
                         description="make an operator key pair (Ed25519)")
    kg.set_defaults(func=cmd_keygen)
    kg.add_argument("--out", default="desanet-operator.key",
                    help="the private key file to write (mode 0600); the public key goes to "
                         "OUT.pub (default desanet-operator.key)")
    kg.add_argument("--force", action="store_true", help="replace an existing key file")
    kg.add_argument("--json", action="store_true", help="machine-readable output")

    s = fsub.add_parser("send", help="sign a command, send it to a gateway, print the answer",
                        description="sign a command, send it to a gateway, print the answer "
                                    "(exit 0 ok, 1 refused or failed, 4 no answer in time)")
    s.set_defaults(func=cmd_send)
    s.add_argument("site", help="the gateway's site id, e.g. jabar-sukamaju")
    s.add_argument("command", choices=c.NAMES, help="the command: " + ", ".join(c.NAMES))
    s.add_argument("arg", nargs="*", metavar="NAME=VALUE",
                   help="the command's arguments, e.g. mac=02:00:00:00:00:01 (deauth) or "
                        "code=ABCDE-FGHJK (vouchers.revoke)")
    s.add_argument("--args", metavar="JSON", help="arguments as a JSON object (besides NAME=VALUE)")
    s.add_argument("--broker", required=True, help="the region's broker, e.g. "
                   "mqtts://mqtt.diskominfo.example.go.id:8883")
    s.add_argument("--key", required=True, help="the operator's private key (fleet keygen)")
    s.add_argument("--prefix", default="desanet/v1", help="topic prefix (default desanet/v1)")
    s.add_argument("--ca", help="CA file of the broker's certificate (mqtts://)")
    s.add_argument("--cert", help="the operator's client certificate for the broker (mqtts://)")
    s.add_argument("--key-file", help="the key of --cert")
    s.add_argument("--username", help="broker user name")
    s.add_argument("--password", help="broker password")
    s.add_argument("--id", help="the command id (default: a new one); send a command again "
                                "with its id to read its answer without running it twice")
    s.add_argument("--timeout", default="30s", help='how long to wait for the answer '
                   '(default "30s")')
    s.add_argument("--lifetime", default="10m", help='how long the command stays valid '
                   '(default "10m", at most 24h)')
    s.add_argument("--json", action="store_true", help="print the answer as JSON")
