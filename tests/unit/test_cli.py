"""Human output of the `desanet` command, against canned control API answers."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from gateway import cli
from gateway.config.units import format_left, parse_duration
from gateway.errors import ApplyFailed, ConfigError, Conflict, ControlError
from gateway.timefmt import format_time, iso

NOW = 1_700_000_000


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (45, "45s"), (60, "1m"), (75, "1m15s"), (3600, "1h"), (14399, "3h59m"),
    (14400, "4h"), (86400, "1d"), (90061, "1d1h"), (-5, "0s"),
])
def test_format_left(seconds: int, text: str) -> None:
    assert format_left(seconds) == text


@pytest.mark.parametrize("value", [1.5, None, ["4h"], {"h": 4}, True])
def test_parse_duration_refuses_other_types_with_value_error(value: Any) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(value)


class CannedClient:
    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers

    def request(self, method: str, path: str, body: Any = None) -> Any:
        return self.answers[path]


def test_clients_table_shows_readable_time_left(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = {"/v1/clients": {"clients": [
        {"mac": "02:00:00:00:00:01", "ip": "10.42.0.101", "authorized": True,
         "source": "voucher", "remaining": 14399, "idle_left": 1799, "plan": "school"},
        {"mac": "02:00:00:00:00:02", "ip": "10.42.0.102", "authorized": False},
    ]}}
    monkeypatch.setattr(cli, "_client", lambda args: CannedClient(answers))
    assert cli.main(["clients"]) == 0
    out = capsys.readouterr().out
    line = out.splitlines()[1]
    assert "3h59m" in line and "29m59s" in line and "school" in line
    assert "14399s" not in out and "1799s" not in out
    assert "portal" in out.splitlines()[2]


def test_vouchers_list_encodes_batch_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asked: list[str] = []

    class Recorder:
        def request(self, method: str, path: str, body: Any = None) -> Any:
            asked.append(path)
            return {"vouchers": []}

    monkeypatch.setattr(cli, "_client", lambda args: Recorder())
    assert cli.main(["vouchers", "list", "--batch", "posyandu mei&x=1"]) == 0
    assert asked == ["/v1/vouchers?batch=posyandu+mei%26x%3D1"]


STATUS = {"site": "Hotspot", "village": "Desa", "ready": True, "portal_url": "http://portal.desa/",
          "portal_mode": "both", "lan_ip": "10.42.0.1", "sessions_active": 3, "uptime": 3700,
          "firewall": {"backend": "libnftables"},
          "dnsmasq": {"running": True, "pid": 42, "restarts": 0}}


@pytest.mark.parametrize(("shaping", "expected"), [
    ({"enabled": True, "uplink_down": 20_000_000, "uplink_up": 5_000_000, "leaf_qdisc": "pfifo"},
     "20mbit down / 5mbit up, leaf qdisc pfifo"),
    ({"enabled": False}, "shaping:         off"),
])
def test_status_shows_shaping(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                              shaping: dict[str, Any], expected: str) -> None:
    answers = {"/v1/status": {**STATUS, "shaping": shaping}}
    monkeypatch.setattr(cli, "_client", lambda args: CannedClient(answers))
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert expected in out
    assert "1h1m" in out  # uptime


# -- config apply / confirm / rollback / show / diff, reload, events -----------------------
# Against a tiny fake daemon: an aiohttp app on a unix socket, in a thread. Its errors are
# the real domain errors mapped by gateway.control.errors, as the daemon maps them.

VALID_TOML = """\
[site]
name = "Hotspot Desa Uji"
village = "Desa Uji"

[network]
lan_interface = "br-lan"
wan_interface = "wan0"
lan_address = "10.42.0.1/24"

[dhcp]
range_start = "10.42.0.100"
range_end = "10.42.0.250"
"""

INVALID_TOML = VALID_TOML.replace('"br-lan"', '"not a name!"').replace(
    'range_end = "10.42.0.250"', 'range_end = "nope"')

CHANGES = [{"path": "portal.terms_text", "old": "Setuju", "new": "Saya setuju"},
           {"path": "mqtt.password", "old": "a", "new": "b"},
           {"path": "portal.idle_timeout", "old": None, "new": "30m"}]


class FakeDaemon:
    """Records every request; answers from ``answers`` or raises ``errors[path]``."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.requests: list[tuple[str, str, Any]] = []
        self.errors: dict[str, Exception] = {}
        self.events: list[dict[str, Any]] = [
            {"seq": 1, "time": float(NOW), "type": "session_started", "mac": "02:00:00:00:00:01",
             "ip": "10.42.0.101", "source": "voucher", "plan": None},
            {"seq": 2, "time": float(NOW + 5), "type": "config_applied", "version": "bbbbbbbbbbbb",
             "by": "budi cli", "source": "cli", "changes": ["portal.terms_text"]},
        ]
        self.answers: dict[str, Any] = {
            "/v1/config/apply": {"applied": True, "version": "bbbbbbbbbbbb",
                                 "previous_version": "aaaaaaaaaaaa", "changes": CHANGES,
                                 "trial": None},
            "/v1/config/confirm": {"confirmed": True, "version": "bbbbbbbbbbbb"},
            "/v1/config/rollback": {"rolled_back": True, "version": "aaaaaaaaaaaa"},
            "/v1/config/diff": {"changes": CHANGES[:1]},
            "/v1/config": {"version": "aaaaaaaaaaaa", "path": "/etc/desanet/gateway.toml",
                           "config": {"site": {"name": "x"}}, "text": '[site]\nname = "x"\n'},
            "/v1/reload": {"reloaded": True, "version": "aaaaaaaaaaaa", "changes": []},
            "/v1/status": {**STATUS, "shaping": {"enabled": False}},
        }

    def app(self) -> Any:
        from aiohttp import web

        from gateway.control.errors import error_body

        async def handle(request: web.Request) -> web.Response:
            body = await request.json() if request.can_read_body else None
            self.requests.append((request.method, request.path_qs, body))
            try:
                if request.path in self.errors:
                    raise self.errors[request.path]
                if request.path == "/v1/events":
                    since = int(request.query.get("since", "0"))
                    found = [e for e in self.events if e["seq"] > since]
                    nxt = found[-1]["seq"] if found else since
                    return web.json_response({"events": found, "next": nxt})
                return web.json_response(self.answers[request.path])
            except Exception as exc:
                status, data = error_body(exc)
                return web.json_response(data, status=status)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app


@pytest.fixture
def daemon(tmp_path: Any) -> Iterator[FakeDaemon]:
    import asyncio
    import tempfile
    import threading

    from aiohttp import web

    sock_dir = tempfile.mkdtemp(prefix="dn-cli-", dir="/tmp")  # short: sun_path is 108 bytes
    fake = FakeDaemon(os.path.join(sock_dir, "c.sock"))
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(fake.app())
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.UnixSite(runner, fake.socket_path).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(5)
    yield fake
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()
    shutil.rmtree(sock_dir, ignore_errors=True)


def run(daemon: FakeDaemon, *args: str) -> int:
    return cli.main(["--socket", daemon.socket_path, *args])


@pytest.fixture
def valid_file(tmp_path: Any) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(VALID_TOML, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(("argv", "expected"), [
    (["config", "apply", "f.toml"], {"file": "f.toml", "confirm": None, "json": False}),
    (["config", "apply", "f.toml", "--confirm", "5m", "--json"],
     {"file": "f.toml", "confirm": "5m", "json": True}),
    (["config", "diff", "f.toml", "--json"], {"file": "f.toml", "json": True}),
    (["config", "confirm"], {"json": False}),
    (["config", "rollback", "--json"], {"json": True}),
    (["config", "show"], {"json": False}),
    (["reload"], {"json": False}),
    (["events"], {"since": 0, "no_follow": False, "json": False}),
    (["events", "--since", "7", "--no-follow", "--json"],
     {"since": 7, "no_follow": True, "json": True}),
])
def test_parser(argv: list[str], expected: dict[str, Any]) -> None:
    args = cli.build_parser().parse_args(argv)
    assert {k: getattr(args, k) for k in expected} == expected
    assert callable(args.func)


@pytest.mark.parametrize("argv", [["config", "apply"], ["events", "--since", "x"],
                                  ["config", "diff"]])
def test_parser_refuses(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(argv)
    assert info.value.code == 2


def test_apply_invalid_file_lists_every_problem_and_sends_nothing(
    daemon: FakeDaemon, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(INVALID_TOML, encoding="utf-8")
    assert run(daemon, "config", "apply", str(path), "--confirm", "5m") == 2
    err = capsys.readouterr().err
    assert "2 problem(s)" in err
    assert "network.lan_interface" in err and "dhcp.range_end" in err
    assert daemon.requests == []


def test_apply_missing_file_is_2(daemon: FakeDaemon, tmp_path: Any,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert run(daemon, "config", "apply", str(tmp_path / "nope.toml")) == 2
    assert "file not found" in capsys.readouterr().err
    assert daemon.requests == []


def test_apply_bad_confirm_window_sends_nothing(
    daemon: FakeDaemon, valid_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(daemon, "config", "apply", valid_file, "--confirm", "soon") == 2
    assert "field confirm:" in capsys.readouterr().err
    assert daemon.requests == []


def test_apply_sends_text_and_prints_changes(
    daemon: FakeDaemon, valid_file: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUDO_USER", "budi")
    monkeypatch.setenv("SSH_CONNECTION", "10.0.0.5 52000 10.0.0.1 22")
    assert run(daemon, "config", "apply", valid_file) == 0
    assert daemon.requests == [("POST", "/v1/config/apply",
                                {"text": VALID_TOML, "confirm": None, "by": "budi@10.0.0.5"})]
    out = capsys.readouterr().out
    assert "config bbbbbbbbbbbb (was aaaaaaaaaaaa)" in out
    assert "  portal.terms_text: 'Setuju' -> 'Saya setuju'" in out
    assert "  mqtt.password: (changed)" in out
    assert "  portal.idle_timeout: added '30m'" in out
    assert "confirm" not in out


def test_apply_with_trial_prints_deadline(
    daemon: FakeDaemon, valid_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    deadline = int(time.time()) + 300
    daemon.answers["/v1/config/apply"]["trial"] = {
        "started": deadline - 300, "deadline": deadline, "previous_version": "aaaaaaaaaaaa",
        "by": "budi"}
    assert run(daemon, "config", "apply", valid_file, "--confirm", "5m") == 0
    assert daemon.requests[0][2]["confirm"] == 300
    out = capsys.readouterr().out
    # The site's zone, as the daemon's status answer names it, not this machine's.
    daemon.answers["/v1/status"]["timezone"] = "Asia/Makassar"
    hhmm = format_time(deadline, "Asia/Jakarta")
    assert (f"run `desanet config confirm` from a new connection (a new SSH login) before {hhmm} "
            "or the previous config comes back") in out
    assert run(daemon, "config", "apply", valid_file, "--confirm", "5m") == 0
    assert f"before {format_time(deadline, 'Asia/Makassar')} or" in capsys.readouterr().out
    assert "WITA" in format_time(deadline, "Asia/Makassar")
    assert run(daemon, "config", "apply", valid_file, "--confirm", "5m", "--json") == 0
    trial = json.loads(capsys.readouterr().out)["trial"]
    assert trial["deadline"] == deadline  # epoch kept; ISO beside it, in the site's zone
    assert trial["deadline_iso"] == iso(deadline, "Asia/Makassar")
    assert trial["deadline_iso"].endswith("+08:00")


def test_apply_json_is_the_answer(daemon: FakeDaemon, valid_file: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert run(daemon, "config", "apply", valid_file, "--json") == 0
    assert json.loads(capsys.readouterr().out) == daemon.answers["/v1/config/apply"]


@pytest.mark.parametrize(("error", "code", "text"), [
    (ApplyFailed("dnsmasq", "dnsmasq --test: bad option"), 1, "step dnsmasq failed"),
    (ConfigError(["portal.mode: bad"], "<request>"), 2, "portal.mode: bad"),
    (Conflict("a config trial is pending; confirm or roll it back first"), 1, "trial is pending"),
    (RuntimeError("bug"), 1, "internal error (RuntimeError)"),
])
def test_apply_refused_by_the_daemon(
    daemon: FakeDaemon, valid_file: str, capsys: pytest.CaptureFixture[str],
    error: Exception, code: int, text: str
) -> None:
    daemon.errors["/v1/config/apply"] = error
    assert run(daemon, "config", "apply", valid_file) == code
    assert text in capsys.readouterr().err


def test_confirm_rollback_show_diff(daemon: FakeDaemon, valid_file: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert run(daemon, "config", "confirm") == 0
    assert "confirmed config bbbbbbbbbbbb" in capsys.readouterr().out
    assert run(daemon, "config", "rollback") == 0
    assert "config aaaaaaaaaaaa is running again" in capsys.readouterr().out
    assert run(daemon, "config", "show") == 0
    assert capsys.readouterr().out == '[site]\nname = "x"\n'
    assert run(daemon, "config", "show", "--json") == 0
    assert json.loads(capsys.readouterr().out)["config"] == {"site": {"name": "x"}}
    assert run(daemon, "config", "diff", valid_file) == 0
    assert "portal.terms_text: 'Setuju' -> 'Saya setuju'" in capsys.readouterr().out
    asked = [r for r in daemon.requests if r[1] != "/v1/status"]  # status: the time zone
    assert [r[1] for r in asked] == ["/v1/config/confirm", "/v1/config/rollback",
                                     "/v1/config", "/v1/config", "/v1/config/diff"]
    assert asked[4][2] == {"text": VALID_TOML}


def test_confirm_without_trial_is_1(daemon: FakeDaemon,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    daemon.errors["/v1/config/confirm"] = Conflict("no config trial is pending")
    assert run(daemon, "config", "confirm") == 1
    assert "error: no config trial is pending" in capsys.readouterr().err


def test_reload(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(daemon, "reload") == 0
    assert "reloaded: config aaaaaaaaaaaa" in capsys.readouterr().out
    daemon.errors["/v1/reload"] = ApplyFailed("portal", "cannot listen on :80")
    assert run(daemon, "reload") == 1
    assert "cannot listen on :80" in capsys.readouterr().err


def test_unreachable_daemon_is_1(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--socket", str(tmp_path / "none.sock"), "reload"]) == 1
    assert "cannot reach the daemon" in capsys.readouterr().err


def test_events_no_follow(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(daemon, "events", "--no-follow", "--json") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # Every key as the daemon sent it, and the time also in ISO 8601 (site zone).
    assert [{k: v for k, v in e.items() if k != "time_iso"} for e in lines] == daemon.events
    assert lines[0]["time_iso"] == iso(NOW, "Asia/Jakarta")
    assert daemon.requests[0][1] == "/v1/events?since=0&timeout=0"
    assert run(daemon, "events", "--no-follow", "--since", "1") == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    assert out[0].split(" ", 2)[2] == ('config_applied version=bbbbbbbbbbbb by="budi cli" '
                                       'source=cli changes=["portal.terms_text"]')
    assert out[0].split(" ", 2)[:2] == format_time(NOW + 5, "Asia/Jakarta", seconds=True).split()


def test_events_follow_until_ctrl_c(daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.control.client import ControlClient

    polls: list[tuple[int, float]] = []
    real = ControlClient.events

    def events(self: ControlClient, since: int = 0, timeout: float = 25.0) -> Any:
        polls.append((since, timeout))
        if len(polls) == 3:
            raise KeyboardInterrupt
        return real(self, since, 0)

    monkeypatch.setattr(ControlClient, "events", events)
    assert run(daemon, "events") == 0
    assert polls == [(0, 25), (2, 25), (2, 25)]
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_format_event_plain() -> None:
    from gateway.control.schema import EventOut

    event = EventOut.model_validate({"seq": 9, "time": float(NOW), "type": "session_ended",
                                     "mac": "02:00:00:00:00:01", "reason": "idle",
                                     "voucher": None})
    text = cli.format_event(event, "Asia/Jayapura")
    assert text == "07:13:20 WIT session_ended mac=02:00:00:00:00:01 reason=idle"


@pytest.mark.parametrize(("config", "expected", "absent"), [
    (None, [], ["config:", "trial:"]),
    ({"version": "aaaaaaaaaaaa", "path": "/etc/desanet/gateway.toml", "last_change": None,
      "trial": None, "last_refusal": None},
     ["config:          aaaaaaaaaaaa  /etc/desanet/gateway.toml"], ["trial:", "last"]),
    ({"version": "bbbbbbbbbbbb", "path": None,
      "trial": {"started": NOW, "deadline": NOW + 300, "previous_version": "aaaaaaaaaaaa",
                "by": "budi"},
      "last_change": {"seq": 4, "time": float(NOW), "type": "config_applied",
                      "version": "bbbbbbbbbbbb", "by": "budi", "source": "cli"},
      "last_refusal": {"time": NOW - 60, "reason": "step dnsmasq failed: bad option"}},
     ["trial:           PENDING until", "by budi", "aaaaaaaaaaaa comes back",
      "last change:     applied bbbbbbbbbbbb at", "by budi source cli",
      "last refused:", "step dnsmasq failed: bad option"], []),
])
def test_status_config_lines(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                             config: Any, expected: list[str], absent: list[str]) -> None:
    answer: dict[str, Any] = {**STATUS, "shaping": {"enabled": False}}
    if config is not None:
        answer["config"] = config
    monkeypatch.setattr(cli, "_client", lambda args: CannedClient({"/v1/status": answer}))
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    for text in expected:
        assert text in out
    for text in absent:
        assert text not in out


# -- the clients themselves ------------------------------------------------------------------


def test_client_error_answer_becomes_control_error(daemon: FakeDaemon) -> None:
    from gateway.control.client import ControlClient

    daemon.errors["/v1/config/apply"] = ApplyFailed("dnsmasq", "bad option")
    with ControlClient(daemon.socket_path) as client, pytest.raises(ControlError) as info:
        client.config_apply(VALID_TOML, "5m", "budi")
    exc = info.value
    assert (exc.status, exc.kind, exc.reason) == (422, "refused", "apply_failed")
    assert "step dnsmasq failed" in str(exc)


def test_client_checks_requests_before_sending(daemon: FakeDaemon) -> None:
    from gateway.control.client import ControlClient
    from gateway.errors import Invalid

    with ControlClient(daemon.socket_path) as client:
        with pytest.raises(Invalid, match="field confirm"):
            client.config_apply(VALID_TOML, confirm="2d")
        with pytest.raises(Invalid, match="field timeout"):
            client.events(0, 600)
        assert client.request("GET", "/v1/config")["version"] == "aaaaaaaaaaaa"
    assert [r[1] for r in daemon.requests] == ["/v1/config"]


def test_client_unexpected_answer_is_502(daemon: FakeDaemon) -> None:
    from gateway.control.client import ControlClient

    daemon.answers["/v1/config/confirm"] = {"ok": 1}
    with ControlClient(daemon.socket_path) as client, pytest.raises(ControlError) as info:
        client.config_confirm()
    assert info.value.status == 502 and "same version" in str(info.value)


async def test_async_client(daemon: FakeDaemon) -> None:
    from gateway.control.aclient import AsyncControlClient

    async with AsyncControlClient(daemon.socket_path) as api:
        out = await api.config_apply(VALID_TOML, "5m", "budi")
        assert out.version == "bbbbbbbbbbbb" and out.changes[0].path == "portal.terms_text"
        assert (await api.config_show()).text.startswith("[site]")
        page = await api.events(0, 0)
        assert [e.seq for e in page.events] == [1, 2] and page.next == 2
        seen = []
        async for event in api.follow_events(since=1, timeout=0):
            seen.append(event.type)
            break
        assert seen == ["config_applied"]
        assert (await api.status())["site"] == "Hotspot"
        daemon.errors["/v1/reload"] = ApplyFailed("portal", "cannot listen")
        with pytest.raises(ControlError) as info:
            await api.reload()
        assert (info.value.status, info.value.kind) == (422, "refused")
    assert daemon.requests[0][2] == {"text": VALID_TOML, "confirm": 300, "by": "budi"}


async def test_async_client_unreachable(tmp_path: Any) -> None:
    from gateway.control.aclient import AsyncControlClient

    async with AsyncControlClient(str(tmp_path / "none.sock")) as api:
        with pytest.raises(ControlError) as info:
            await api.status()
    assert (info.value.status, info.value.kind) == (503, "unavailable")
    assert "cannot reach the daemon" in str(info.value)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("desanet ")


def test_a_closed_pipe_ends_quietly(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    def reader_left(args: argparse.Namespace) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_status", reader_left)
    assert cli.main(["status"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_printing_an_unknown_batch_is_an_error(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    answers = {"/v1/vouchers?batch=posyandu+mie": {"vouchers": []}}
    monkeypatch.setattr(cli, "_client", lambda args: CannedClient(answers))
    assert cli.main(["vouchers", "print", "--batch", "posyandu mie"]) == 1
    err = capsys.readouterr().err
    assert "no batch named 'posyandu mie'" in err


# config (Step 6): a moved state dir or socket is "needs restart", never "reloaded"
def test_reload_and_apply_of_a_restart_only_setting_say_needs_restart(
        daemon: FakeDaemon, valid_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.control.errors import error_body
    from gateway.core.configuration import RestartNeeded

    refusal = RestartNeeded([("store.state_dir", "/var/lib/desanet", "/srv/desanet")])
    status, body = error_body(refusal)
    assert (status, body["reason"]) == (409, "restart_needed")
    assert body["problems"] == ["store.state_dir: '/var/lib/desanet' -> '/srv/desanet' "
                                "needs a restart"]
    for path, argv, verb in (("/v1/reload", ["reload"], "reloaded"),
                             ("/v1/config/apply", ["config", "apply", valid_file], "applied")):
        daemon.errors[path] = refusal
        assert run(daemon, *argv) == 1
        out, err = capsys.readouterr()
        assert f"not {verb}: needs restart: store.state_dir cannot change" in err
        assert "nothing was changed" in err and "systemctl restart desanet" in err
        assert "reloaded:" not in out and "applied " not in out
        del daemon.errors[path]
    # positive control: the same commands without the refusal
    assert run(daemon, "reload") == 0
    assert "reloaded: config aaaaaaaaaaaa" in capsys.readouterr().out


def test_diff_marks_settings_that_need_a_restart(
        daemon: FakeDaemon, valid_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.answers["/v1/config/diff"] = {"changes": [
        {"path": "control.socket", "old": "/run/desanet/control.sock", "new": "/run/x.sock"},
        CHANGES[0]]}
    assert run(daemon, "config", "diff", valid_file) == 0
    out = capsys.readouterr().out
    assert "control.socket: '/run/desanet/control.sock' -> '/run/x.sock'  (needs restart)" in out
    assert "portal.terms_text: 'Setuju' -> 'Saya setuju'\n" in out  # no mark
