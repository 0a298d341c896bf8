"""`desanet fleet serve` arguments: every problem named by its option, at once."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gateway.fleet import serve
from gateway.fleet.watch import BadArguments


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    serve.register(sub)
    return p.parse_args(["serve", *argv])


def test_good_options(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\nignored\n")
    o = serve.options(parse("--broker", "mqtt://broker.example", "--db", f"sqlite://{tmp_path}/f.db",
                            "--group", "fleet", "--metrics", "[::1]:9108", "--username", "fleet",
                            "--password-file", str(pw)))
    assert (o.target.host, o.target.port, o.group, o.metrics) == ("broker.example", 1883, "fleet",
                                                                  ("::1", 9108))
    assert (o.username, o.password) == ("fleet", "s3cret")
    assert o.client_id.startswith("desanet-serve-") and o.client_id.endswith("-fleet")


def test_every_problem_at_once(tmp_path: Path) -> None:
    with pytest.raises(BadArguments) as caught:
        serve.options(parse("--broker", "mqtt://b.example", "--db", "sqlite://", "--metrics", "a:b",
                            "--client-id", "x/y", "--password-file", str(tmp_path / "none"),
                            "--prefix", "a/+"))
    fields = [line.split(":", 1)[0] for line in caught.value.problems]
    assert fields == ["--prefix", "--db", "--client-id", "--metrics", "--password-file",
                      "--password-file"]


def test_filters_share_telemetry_and_events_but_not_statuses(tmp_path: Path) -> None:
    o = serve.options(parse("--broker", "mqtt://b", "--db", f"sqlite://{tmp_path}/f.db",
                            "--group", "g", "--prefix", "r/v1"))
    store = serve.open_store(o.db, o.client_id)
    try:
        c = serve.Consumer(o, store, serve.ServeMetrics(serve.CollectorRegistry()))
        assert c.filters == ["r/v1/+/status", "$share/g/r/v1/+/telemetry", "$share/g/r/v1/+/event"]
    finally:
        store.close()
