"""The daemon's start does not load heavy modules it needs only for a feature or a tool.

Every module imported at start stays resident for the daemon's life (docs/benchmarks.md,
"The daemon's footprint"): cryptography alone is ~7 MB, loaded only when a portal
certificate is set or the first signed command arrives. Each check runs in a fresh
interpreter so what other tests imported does not count.
"""

from __future__ import annotations

import json
import subprocess
import sys

# heavy, and not needed by an idle daemon with telemetry and command keys configured
LAZY = ("cryptography", "scapy", "textual", "rich", "prometheus_client", "desanet_lab",
        "gateway.tui", "gateway.fleet", "gateway.diag", "provisioning")

KEY = "ed25519:oTGk9NsPtQuU+7rspgO9JW6YxyVuOISoU06MIRGPtJg="


def loaded_after(code: str) -> set[str]:
    script = (f"import json, sys\n{code}\n"
              "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in LAZY))


START = (
    "import gateway.daemon.main\n"
    "from gateway.config.telemetry import Telemetry\n"
    f"t = Telemetry(enabled=True, broker='mqtts://mqtt.example:8883', site_id='desa-1', "
    f"command_keys=[{KEY!r}])\n"
    "assert t.command_keys\n")


def test_the_daemon_start_and_its_telemetry_config_load_no_heavy_module() -> None:
    assert heavy(loaded_after(START)) == []


def test_desanet_run_parses_its_arguments_without_the_tools_commands() -> None:
    # `desanet run` (systemd, the lab) goes through the CLI's parser: it must not build
    # the fleet/diag/plugin commands, whose modules would stay resident in the daemon
    code = ("import contextlib\nfrom gateway import cli\n"
            "with contextlib.redirect_stdout(None), contextlib.suppress(SystemExit):\n"
            "    cli.main(['run', '--help'])\n" + START)
    assert heavy(loaded_after(code)) == []
    # positive control: any other command gets the whole CLI
    full = loaded_after("import contextlib\nfrom gateway import cli\n"
                        "with contextlib.redirect_stdout(None), contextlib.suppress(SystemExit):\n"
                        "    cli.main(['status', '--help'])\n")
    assert "gateway.fleet" in heavy(full)


def test_a_command_key_still_loads_cryptography_when_used() -> None:
    # positive control: the check above would see cryptography if it were loaded
    used = loaded_after(START + f"from gateway.telemetry import commands\n"
                        f"commands.parse_public_key({KEY!r})\n")
    assert "cryptography" in heavy(used)


def test_a_bad_command_key_is_still_refused_at_config_load() -> None:
    code = ("from pydantic import ValidationError\n"
            "from gateway.config.telemetry import Telemetry\n"
            "try:\n"
            "    Telemetry(enabled=True, broker='mqtts://m:8883', site_id='desa-1', "
            "command_keys=['ed25519:AAAA'])\n"
            "except ValidationError as exc:\n"
            "    assert 'is 32 bytes' in str(exc), exc\n"
            "else:\n"
            "    raise SystemExit('a 3-byte key was accepted')\n")
    assert "pydantic" in loaded_after(code)  # ran to the end (check=True: no SystemExit)
