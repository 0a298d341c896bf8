"""The `disk` diagnostic sees a data partition the kernel remounted read-only (what an SD
card with write errors gets), beside a positive control with the same partition writable.

Root and a private mount namespace (`unshare --mount`): the tmpfs standing in for the data
partition is seen by the diagnostic only, and goes with the namespace.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import desanet_argv, require_root, require_tools

pytestmark = [pytest.mark.integration, require_root, require_tools("unshare", "mount")]


def disk_check(tmp_path: Path, read_only: bool) -> dict[str, Any]:
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "gateway.toml"
    config.write_text("\n".join([
        "[site]", 'name = "T"', 'village = "T"', "[network]", 'lan_interface = "br-lan"',
        'wan_interface = "eth0"', 'lan_address = "10.42.0.1/24"', "[dhcp]",
        'range_start = "10.42.0.100"', 'range_end = "10.42.0.200"', "[store]",
        f'state_dir = "{data}/desanet"']) + "\n")
    steps = [f"mount -t tmpfs -o size=1g diagdata {data}"]  # sparse: costs no memory
    if read_only:
        steps.append(f"mount -o remount,ro {data}")
    diag = " ".join([*desanet_argv(), "diag", "--config", str(config), "--json", "disk"])
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec",
                           " && ".join([*steps, diag])],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    [result] = json.loads(proc.stdout)
    row = next(r for r in result["details"]["paths"] if r["mount"] == str(data))
    assert row["fstype"] == "tmpfs"
    return {"result": result, "row": row, "rc": proc.returncode}


def test_writable_data_partition_is_healthy(tmp_path: Path) -> None:
    seen = disk_check(tmp_path, read_only=False)
    assert seen["row"]["read_only"] is False
    assert seen["row"]["free"] > 900 * 1024 * 1024
    assert "read-only" not in seen["result"]["summary_en"]


def test_read_only_data_partition_fails_and_says_what_to_do(tmp_path: Path) -> None:
    seen = disk_check(tmp_path, read_only=True)
    result = seen["result"]
    assert seen["row"]["read_only"] is True
    assert result["status"] == "fail"
    assert f"{tmp_path / 'data'} is read-only" in result["summary_en"]
    assert "SD" in result["advice_en"] and "kartu SD" in result["advice_id"]
    assert seen["rc"] == 1
