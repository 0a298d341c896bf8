"""`desanet fleet keygen` and `desanet fleet send`: the operator's side of remote commands.

``keygen`` writes an Ed25519 key pair: the private key (PKCS#8 PEM, mode 0600,
never overwritten) and ``<file>.pub`` holding the public key in the text form
gateways are provisioned with (``telemetry.command_keys``); and the X25519 key
that secrets in answers (voucher codes) are sealed to, ``<file>.x25519``
(gateway/fleet/sealkeys.py).

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
from gateway.fleet import sealkeys, watch
from gateway.telemetry import commands as c
from gateway.telemetry import sealed
from gateway.telemetry.topics import Topics

EXIT_OK, EXIT_REFUSED, EXIT_NO_ANSWER = 0, 1, 4
SEND_EXAMPLES = """commands and their arguments (docs/mqtt.md "Commands"):
  status | rebirth | prefetch | reboot     no arguments
  deauth mac=02:00:00:00:00:01             end a client's session
  vouchers.revoke code=ABCDE-FGHJK         revoke a voucher
  vouchers.create count=20 duration=1d [max_devices=2] [plan=school] [name="Posyandu Mei"]
      the codes come back sealed to KEY.x25519 and are printed opened
  config.set text=@gateway.toml [confirm=5m] [expected_version=3f2a9c0b7d1e]
      a trial the gateway confirms itself once it is back on the broker with the new
      config; otherwise rolled back when the confirm window ends
  reboot: answered first, then the box reboots (refused when it cannot)
  cert.install cert=@new.crt               a renewed MQTT certificate (`desanet provision renew`);
      the gateway checks it, reconnects with it, and goes back to the old one unless
      that connection is up within 10 minutes

example:
  desanet fleet send jabar-sukamaju vouchers.create count=10 duration=1d \\
      --broker mqtts://mqtt.diskominfo.example.go.id:8883 --key desanet-operator.key \\
      --ca ca.pem --cert operator.pem --key-file operator-key.pem
"""


class FleetError(DesanetError):
    """The broker could not be reached, or a key file cannot be used."""


# -- keygen -----------------------------------------------------------------------------


def keygen(path: Path, force: bool = False) -> str:
    """Write a new key pair at ``path`` (0600) and ``path.pub``, and the X25519 sealing key
    ``path.x25519``; the public signing key's text. Raises FleetError when ``path`` exists
    (unless ``force``) or cannot be written."""
    public = _signing_keygen(path, force)
    try:
        sealkeys.write_seal_key(sealkeys.seal_key_path(path), force=force)
    except sealkeys.SealKeyError as exc:
        raise FleetError(str(exc)) from exc
    return public


def _signing_keygen(path: Path, force: bool) -> str:
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


INT_ARGS = ("count", "max_devices")  # numbers in a NAME=VALUE word


def parse_args_pairs(pairs: list[str], raw_json: str | None) -> dict[str, Any]:
    """``--args`` JSON and/or words into the command's args: ``name=value`` (a string;
    digits for :data:`INT_ARGS` are a number), ``name=@file`` (the file's text) and
    ``name:=json`` (a JSON value, e.g. ``plan:=null``)."""
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
        if not sep or not name or name == ":":
            raise Invalid("ARG", word, "name=value, name=@file or name:=json",
                          "mac=02:00:00:00:00:01")
        if name.endswith(":"):
            name = name[:-1]
            try:
                out[name] = json.loads(value)
            except ValueError as exc:
                raise Invalid("ARG", word, f"name:=<a JSON value> ({exc})", "plan:=null") from None
        elif value.startswith("@"):
            try:
                out[name] = Path(value[1:]).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise Invalid("ARG", word, f"name=@<a readable text file> ({exc})",
                              "text=@gateway.toml") from None
        elif name in INT_ARGS and value.isdigit():
            out[name] = int(value)
        else:
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
    cmd_args = parse_args_pairs(args.arg, args.args)
    seal_key = None
    # the answer's codes are sealed to this key; a recipient given in the arguments is
    # someone else's: the answer is printed as it came
    if args.command in sealkeys.SEALING and "recipient" not in cmd_args:
        try:
            seal_key = sealkeys.load_seal_key(args.seal_key or sealkeys.seal_key_path(args.key))
        except sealkeys.SealKeyError as exc:
            raise FleetError(str(exc)) from exc
        cmd_args["recipient"] = sealed.public_key_text(seal_key.public_key())
    cid = args.id or f"op-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"
    now = int(time.time())
    body = c.body_json(cid, args.site, args.command, cmd_args, now, now + lifetime)
    answer = exchange(access, topics, c.sign(body, key), timeout)
    if answer is not None and seal_key is not None:
        try:
            answer = sealkeys.open_answer(answer, seal_key, args.site)
        except sealkeys.SealKeyError as exc:
            raise FleetError(str(exc)) from exc
    return answer


def exchange(access: BrokerAccess, topics: Topics, payload: bytes, timeout: float
             ) -> dict[str, Any] | None:
    """Publish ``payload`` on the site's ``cmd/req`` with a response topic under its
    ``cmd/res`` and random correlation data; the answer carrying that correlation data (or,
    from a gateway on MQTT 3.1.1, which never sees them, the answer on ``cmd/res`` with the
    command's id), or None when none came within ``timeout`` seconds. Blocks. Raises
    FleetError."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    host, port, tls = _broker(access.url)
    reply_topic = f"{topics.cmd_res}/{secrets.token_hex(8)}"
    correlation = secrets.token_bytes(16)
    try:
        cid = json.loads(json.loads(payload)["body"]).get("id")
    except (ValueError, TypeError, KeyError, AttributeError):
        cid = None  # not a request we can read: only the correlation data can match
    answer: dict[str, Any] = {}
    subscribed, answered = threading.Event(), threading.Event()
    failure: list[str] = []

    def on_connect(client: paho.Client, _u: object, _f: object, reason: Any, _p: object) -> None:
        if reason.is_failure:
            failure.append(f"the broker refused the connection: {reason}")
            subscribed.set()
            return
        client.subscribe([(reply_topic, 1), (topics.cmd_res, 1)])

    def on_subscribe(_c: object, _u: object, _m: object, reasons: Any, _p: object) -> None:
        if any(r.is_failure for r in reasons):
            failure.append(f"the broker refused the subscription to {reply_topic} (check its ACL)")
        subscribed.set()

    def on_message(_c: object, _u: object, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        theirs = getattr(props, "CorrelationData", None)
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = {"ok": False, "reason": "unreadable answer"}
        by_id = (msg.topic == topics.cmd_res and theirs is None and cid is not None
                 and isinstance(body, dict) and body.get("id") == cid)  # a 3.1.1 gateway's
        if theirs != correlation and not by_id:
            return  # someone else's answer
        answer.update(body if isinstance(body, dict) else {"ok": False,
                                                           "reason": "unreadable answer"})
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
    seal_path = sealkeys.seal_key_path(args.out)
    if args.seal_only:
        try:
            recipient = sealkeys.write_seal_key(seal_path, args.force)
        except sealkeys.SealKeyError as exc:
            raise FleetError(str(exc)) from exc
        public = None
    else:
        public = keygen(Path(args.out), args.force)
        recipient = sealed.public_key_text(sealkeys.load_seal_key(seal_path).public_key())
    if args.json:
        print(json.dumps({"private_key": None if args.seal_only else str(args.out),
                          "public_key": public, "seal_key": str(seal_path),
                          "seal_public_key": recipient}))
        return EXIT_OK
    if public is not None:
        print(f"private key: {args.out} (mode 0600; keep it on the operator's machine)")
        print(f"public key:  {args.out}.pub")
        print("provision gateways with it, in [telemetry]:")
        print(f'  command_keys = ["{public}"]')
    print(f"sealing key: {seal_path} (mode 0600): voucher codes sent by `fleet send ... "
          "vouchers.create` are sealed to it; `fleet send` opens them")
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
    kg.add_argument("--seal-only", action="store_true",
                    help="write only the X25519 sealing key OUT.x25519 (for an operator key "
                         "made before there was one)")
    kg.add_argument("--json", action="store_true", help="machine-readable output")

    s = fsub.add_parser("send", help="sign a command, send it to a gateway, print the answer",
                        description="sign a command, send it to a gateway, print the answer "
                                    "(exit 0 ok, 1 refused or failed, 4 no answer in time)",
                        epilog=SEND_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.set_defaults(func=cmd_send)
    s.add_argument("site", help="the gateway's site id, e.g. jabar-sukamaju")
    s.add_argument("command", choices=c.NAMES, help="the command: " + ", ".join(c.NAMES))
    s.add_argument("arg", nargs="*", metavar="NAME=VALUE",
                   help="the command's arguments: NAME=VALUE (text; digits of count and "
                        "max_devices are numbers), NAME=@FILE (the file's text), NAME:=JSON "
                        "(e.g. plan:=null); see the examples below")
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
    s.add_argument("--seal-key", help="vouchers.create: the X25519 key the codes are sealed "
                   "to and opened with (default: KEY.x25519 beside --key)")
    s.add_argument("--json", action="store_true", help="print the answer as JSON (a "
                   "vouchers.create's codes opened, as result.codes)")
