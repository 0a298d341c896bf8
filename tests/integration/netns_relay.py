"""Run chromedriver inside a network namespace and relay WebDriver HTTP to it.

Started by ``tests/integration/browser.py`` as
``ip netns exec NS python netns_relay.py --listen-fd N -- chromedriver --port={port} ...``.
``ip netns exec`` puts this process (and so chromedriver and Chromium) into
the lab client's network namespace with its /etc/netns/NS/resolv.conf, so the
browser resolves names through the lab's DNS like a phone would.

The test process stays in the root namespace and cannot reach the namespace's
loopback. It hands us a listening TCP socket it created in the root namespace
(inherited as fd N): a socket belongs to the namespace it was created in, so
connections the test makes to it arrive here, and we forward each one to
chromedriver's port on this namespace's loopback.

Protocol with the parent: one line on stdout, ``ready PORT`` or ``error ...``.
When our stdin reaches EOF (the parent closed it, or died) we stop chromedriver
and every process in our process group (Chromium included), then exit.

Standard library only: this runs as a plain script, not as a package module.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

READY_TIMEOUT = 20.0


def free_port() -> int:
    """A free TCP port on this namespace's loopback (it holds only our own listeners)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    """None once ``port`` accepts connections; else why not (exited, or timed out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"chromedriver exited with code {proc.returncode} before listening"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return None
        time.sleep(0.05)
    return f"chromedriver did not listen on 127.0.0.1:{port} within {timeout:g} s"


def pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy bytes from ``src`` to ``dst`` until EOF, then half-close ``dst``."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def serve(listener: socket.socket, port: int) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", port), 5)
        except OSError:
            client.close()
            continue
        upstream.settimeout(None)
        threads = [threading.Thread(target=pump, args=(client, upstream), daemon=True),
                   threading.Thread(target=pump, args=(upstream, client), daemon=True)]
        for t in threads:
            t.start()
        threading.Thread(target=_close_after, args=(threads, client, upstream), daemon=True).start()


def _close_after(threads: list[threading.Thread], *socks: socket.socket) -> None:
    for t in threads:
        t.join()
    for s in socks:
        s.close()


def stop_group(driver: subprocess.Popen[bytes]) -> None:
    """End chromedriver, then everything left in our process group (Chromium's processes)."""
    with contextlib.suppress(ProcessLookupError):
        driver.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        driver.wait(3)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(0, signal.SIGTERM)
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        driver.wait(2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(0, signal.SIGKILL)  # ends us too: nothing of this browser outlives the relay


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen-fd", type=int, required=True,
                        help="inherited listening socket (created in the parent's namespace)")
    parser.add_argument("driver", nargs=argparse.REMAINDER,
                        help="chromedriver argv after --; {port} is replaced by its port")
    args = parser.parse_args()
    argv = [a for a in args.driver if a != "--"] if args.driver[:1] == ["--"] else args.driver
    if not argv:
        print("error no chromedriver command given", flush=True)
        return 2
    listener = socket.socket(fileno=args.listen_fd)
    port = free_port()
    driver = subprocess.Popen([a.replace("{port}", str(port)) for a in argv],
                              stdin=subprocess.DEVNULL, stdout=sys.stderr)  # stdout is ours
    problem = wait_listening(port, driver, READY_TIMEOUT)
    if problem:
        print(f"error {problem}", flush=True)
        stop_group(driver)
        return 1
    threading.Thread(target=serve, args=(listener, port), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: stop_group(driver))
    print(f"ready {port}", flush=True)
    sys.stdin.buffer.read()  # until the parent closes our stdin or dies
    stop_group(driver)
    return 0


if __name__ == "__main__":
    sys.exit(main())
