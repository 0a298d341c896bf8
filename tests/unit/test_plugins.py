"""`desanet.plugins` entry points: loaded into the CLI; a broken one is skipped with a warning."""

from __future__ import annotations

import argparse
from importlib.metadata import EntryPoint

import pytest

from gateway import plugins


def _register_hello(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser("hello", help="a test plugin")


def _register_broken(subparsers: argparse._SubParsersAction) -> None:
    raise RuntimeError("plugin bug")


def _patch(monkeypatch: pytest.MonkeyPatch, eps: list[EntryPoint]) -> None:
    def fake(*, group: str) -> list[EntryPoint]:
        assert group == plugins.GROUP
        return eps

    monkeypatch.setattr(plugins, "entry_points", fake)


@pytest.mark.parametrize(
    ("value", "warning"),
    [
        ("no_such_module_xyz:register", "ModuleNotFoundError"),
        (f"{__name__}:no_such_function", "AttributeError"),
        (f"{__name__}:_register_broken", "plugin bug"),
    ],
)
def test_a_broken_plugin_is_skipped_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str, warning: str
) -> None:
    _patch(monkeypatch, [
        EntryPoint("broken", value, plugins.GROUP),
        EntryPoint("hello", f"{__name__}:_register_hello", plugins.GROUP),
    ])
    parser = argparse.ArgumentParser(prog="desanet")
    sub = parser.add_subparsers(dest="command")
    assert plugins.register_plugins(sub) == ["hello"]
    err = capsys.readouterr().err
    assert "plugin 'broken'" in err and warning in err
    assert parser.parse_args(["hello"]).command == "hello"


def test_the_lab_registers_through_the_entry_point() -> None:
    pytest.importorskip("desanet_lab")
    from gateway.cli import build_parser

    args = build_parser().parse_args(["lab", "status", "--prefix", "zz-"])
    assert args.lab_command == "status" and args.prefix == "zz-"
