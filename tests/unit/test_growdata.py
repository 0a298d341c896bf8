"""The Pi card's data partition grown to the end of a bigger card (the MBR rewrite)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.system import growdata
from tests.unit.test_mkdisk import mkdisk
from tests.unit.test_mkdisk_rpi import pi_root

pytestmark = pytest.mark.skipif(
    shutil.which("sfdisk") is None or shutil.which("mkimage") is None,
    reason="needs sfdisk and mkimage (bash .ci/setup)")


def table(disk: Path) -> list[dict[str, object]]:
    out = subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout)["partitiontable"]["partitions"])


@pytest.fixture
def card(tmp_path: Path) -> Path:
    pi_root(tmp_path / "rootfs")
    assert mkdisk(tmp_path, "--arch", "arm64", "--board", "rpi").returncode == 0
    return tmp_path / "disk.img"


def grow_file(disk: Path) -> int | None:
    """growdata.grown applied to a card image file, as grow() does on the block device."""
    with disk.open("r+b") as f:
        result = growdata.grown(f.read(512), disk.stat().st_size // 512, 4)
        if result is None:
            return None
        f.seek(0)
        f.write(result[0])
    return result[1]


def test_the_data_partition_reaches_the_end_of_a_bigger_card(card: Path) -> None:
    before = table(card)
    assert grow_file(card) is None  # positive control: the image as made has nothing to grow
    with card.open("r+b") as f:
        f.truncate(card.stat().st_size + (100 << 20))  # flashed onto a bigger card
    sectors = grow_file(card)
    after = table(card)
    assert after[:3] == before[:3]  # boot, root-a, root-b untouched
    data = after[3]
    assert (data["start"], data["type"]) == (before[3]["start"], before[3]["type"])
    end = (int(str(data["start"])) + int(str(data["size"]))) * 512
    assert data["size"] == sectors
    assert card.stat().st_size - (4 << 20) < end <= card.stat().st_size
    assert grow_file(card) is None  # the next boot: nothing more to do


def test_gpt_disks_and_partitions_that_are_not_last_are_left_alone(
        card: Path, tmp_path: Path) -> None:
    # mkdisk's GPT disk (x86) is refused: systemd-repart grows that one.
    with card.open("rb") as f:
        mbr = f.read(512)
    with pytest.raises(growdata.GrowError, match="not the last"):
        growdata.grown(mbr, 1 << 30, 2)  # root-a: root-b and the data come after it
    with pytest.raises(growdata.GrowError, match="not a Linux partition"):
        growdata.grown(mbr, 1 << 30, 1)  # the FAT boot partition
    with pytest.raises(growdata.GrowError, match="no MBR"):
        growdata.grown(bytes(512), 1 << 30, 4)
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    assert mkdisk(gpt).returncode == 0
    with (gpt / "disk.img").open("rb") as f, pytest.raises(growdata.GrowError, match="GPT"):
        growdata.grown(f.read(512), 1 << 30, 4)
