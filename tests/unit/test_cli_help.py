"""Every argument of every `desanet` command (plugins included) says what it is for."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from desanet_lab.cli import split_exec_args
from gateway import cli


def _name(action: argparse.Action) -> str:
    return "/".join(action.option_strings) if action.option_strings else str(
        action.metavar or action.dest)


def undocumented(parser: argparse.ArgumentParser, path: str) -> Iterator[str]:
    """"desanet clients auth mac" for each argument, option or command without help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            if not (action.help or "").strip():
                yield f"{path} {_name(action)}"
            # A command added without help= has no entry here at all.
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if not (helps.get(name) or "").strip():
                    yield f"{path} {name}"
                yield from undocumented(sub, f"{path} {name}")
        elif not (action.help or "").strip():
            yield f"{path} {_name(action).split('/')[-1]}"


def commands(parser: argparse.ArgumentParser, path: str = "desanet") -> Iterator[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{path} {name}"
                yield from commands(sub, f"{path} {name}")


def test_every_argument_of_every_command_has_help() -> None:
    parser = cli.build_parser()
    walked = set(commands(parser))
    # The walk reaches plugin commands and the deepest levels, or it proves nothing.
    assert {"desanet lab exec", "desanet clients auth", "desanet config apply"} <= walked
    missing = sorted(set(undocumented(parser, "desanet")))
    assert missing == []


def test_the_walk_finds_an_argument_without_help() -> None:
    # Positive control: the same walk on a parser with one silent argument.
    parser = argparse.ArgumentParser(prog="x")
    sub = parser.add_subparsers(dest="c", help="what to do")
    one = sub.add_parser("one", help="the first")
    one.add_argument("--loud", help="says so")
    one.add_argument("quiet")
    sub.add_parser("two")
    assert sorted(undocumented(parser, "x")) == ["x one quiet", "x two"]


@pytest.mark.parametrize(("argv", "prefix", "cmd"), [
    (["lab", "exec", "--prefix", "p7", "c1", "--", "curl", "-i", "http://x/"], "p7",
     ["curl", "-i", "http://x/"]),
    (["lab", "exec", "c1", "--prefix", "p7", "--", "curl", "-i", "http://x/"], "p7",
     ["curl", "-i", "http://x/"]),
    (["lab", "exec", "c1", "--prefix=p7", "--", "curl"], "p7", ["curl"]),
    (["lab", "exec", "c1", "--prefix", "p7", "curl"], "p7", ["curl"]),
    # After the "--" (or the command's first word) options are the command's own.
    (["lab", "exec", "c1", "--", "curl", "--prefix", "x"], "dn", ["curl", "--prefix", "x"]),
    (["lab", "exec", "c1", "curl", "--prefix", "x"], "dn", ["curl", "--prefix", "x"]),
    (["lab", "exec", "c1", "--prefix"], "dn", []),
])
def test_lab_exec_takes_prefix_before_or_after_the_member(
        argv: list[str], prefix: str, cmd: list[str]) -> None:
    args = cli.build_parser().parse_args(argv)
    assert args.member == "c1"
    assert split_exec_args(args.prefix, list(args.cmd)) == (prefix, cmd)
