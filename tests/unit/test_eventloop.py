"""The daemon's event loop choice (gateway/daemon/eventloop.py), and that what the daemon
asks of its loop works on each loop it may run on."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import pytest

from gateway.daemon import eventloop
from gateway.errors import ConfigError

uvloop = pytest.importorskip("uvloop")


def test_uvloop_is_the_default_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(eventloop.ENV, raising=False)
    factory, which = eventloop.choose()
    assert factory is uvloop.new_event_loop
    assert which.startswith("uvloop ")


@pytest.mark.parametrize("value", ["asyncio", " AsyncIO "])
def test_asyncio_on_request(value: str) -> None:
    factory, which = eventloop.choose(value)
    assert factory is None
    assert "DESANET_EVENT_LOOP=asyncio" in which


def test_environment_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.ENV, "asyncio")
    assert eventloop.choose()[0] is None


def test_unknown_value_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="DESANET_EVENT_LOOP: found 'tokio'; expected one of"):
        eventloop.choose("tokio")


def test_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import fails
    factory, which = eventloop.choose("")
    assert factory is None and "uvloop is not installed" in which
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        eventloop.choose("uvloop")


async def _what_the_daemon_does() -> str:
    loop = asyncio.get_running_loop()
    # A reader on a non-blocking socket (netlink in the daemon; a socketpair here).
    a, b = socket.socketpair()
    a.setblocking(False)
    got: asyncio.Future[bytes] = loop.create_future()
    loop.add_reader(a.fileno(), lambda: got.done() or got.set_result(a.recv(16)))
    b.send(b"event")
    assert await asyncio.wait_for(got, 5) == b"event"
    loop.remove_reader(a.fileno())
    a.close()
    b.close()
    # A subprocess in its own session, its output read (dnsmasq --test).
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "print('ok')", stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, start_new_session=True)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert (proc.returncode, out.strip()) == (0, b"ok")
    # A child watched through a pidfd that is not our asyncio child (an adopted dnsmasq).
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)")
    pidfd = os.pidfd_open(child.pid)
    exited: asyncio.Future[None] = loop.create_future()
    loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
    signal.pidfd_send_signal(pidfd, signal.SIGTERM)
    await asyncio.wait_for(exited, 30)
    loop.remove_reader(pidfd)
    os.close(pidfd)
    await child.wait()
    # A signal handler (SIGHUP reloads the config).
    hup = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, hup.set)
    os.kill(os.getpid(), signal.SIGHUP)
    await asyncio.wait_for(hup.wait(), 5)
    loop.remove_signal_handler(signal.SIGHUP)
    # Blocking work on a thread.
    assert await asyncio.to_thread(sum, [1, 2]) == 3
    return type(loop).__module__


@pytest.mark.parametrize("value", ["uvloop", "asyncio"])
def test_the_daemons_uses_of_the_loop_work(value: str) -> None:
    factory, _ = eventloop.choose(value)
    # None is the default policy's loop (pinned here, in case a run sets another policy).
    module = eventloop.run(_what_the_daemon_does(),
                           factory or asyncio.DefaultEventLoopPolicy().new_event_loop)
    assert module.startswith(value)
