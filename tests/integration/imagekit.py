"""One image build per test run, shared by every test that needs the gateway's rootfs.

``built_image("amd64")`` returns the directory of an ``images/build`` output
(rootfs.tar, packages.txt, wheels.txt, build-info.json) plus ``rootfs/``, the tar
extracted. The cache is keyed by a hash of what goes into the image (images/, the
package's sources, pyproject.toml), so an unchanged tree is not built twice; an
exclusive file lock makes a second xdist worker wait for the first one's build
instead of starting its own. Older keys are removed when a new one is built.

``RootfsChroot`` gives a test a writable view of that rootfs (overlayfs over the
cached tree, a fresh /proc, a few device nodes, no host bind mounts) and runs
commands in it with chroot; ``close()`` unmounts. Mounts live under MOUNT_BASE, and
a run first unmounts whatever a crashed run left there.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("DESANET_IMAGE_CACHE", "/var/tmp/desanet-image-cache"))
MOUNT_BASE = Path("/run/desanet-image-test")
INPUTS = ("images", "gateway", "provisioning", "pyproject.toml", "README.md")
DONE = ".complete"


def input_hash(arch: str) -> str:
    """sha256 over the tracked and changed files that go into the image."""
    names = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z", "--", *INPUTS],
        cwd=ROOT, check=True, capture_output=True).stdout.split(b"\0")
    digest = hashlib.sha256(arch.encode())
    for name in sorted(n for n in names if n):
        path = ROOT / os.fsdecode(name)
        # images/*.md are notes for people, not part of the image.
        notes = path.suffix == ".md" and path.parent.name == "images"
        if path.is_file() and "__pycache__" not in path.parts and not notes:
            digest.update(name + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
        yield


def _mounts_under(base: Path) -> list[str]:
    prefix = str(base) + "/"
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            point = line.split()[4].encode().decode("unicode_escape")
            if point.startswith(prefix):
                points.append(point)
    return points


def unmount_all(base: Path) -> None:
    """Unmount everything below ``base``, deepest first (a crashed run's leftovers)."""
    for point in sorted(_mounts_under(base), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def remove_tree(path: Path) -> None:
    # --one-file-system: never descend into something still mounted below it.
    if path.exists():
        unmount_all(path)
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


# Shared locks on the keys this process uses, held until it exits: another tree's run
# (a CI clone, a teammate's worktree) removes only keys nobody holds.
_IN_USE: list[int] = []


def _hold(key_dir: Path) -> None:
    fd = os.open(f"{key_dir}.use", os.O_CREAT | os.O_RDWR, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _IN_USE.append(fd)


def _remove_if_unused(key_dir: Path) -> None:
    with Path(f"{key_dir}.use").open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another run is using it
        remove_tree(key_dir)


def built_image(arch: str = "amd64") -> Path:
    """The build output for ``arch`` (built now if the cache has none for this tree)."""
    key = f"{arch}-{input_hash(arch)}"
    out = CACHE / key
    with _locked(CACHE / f"{arch}.lock"):
        _hold(out)
        if (out / DONE).exists():
            return out
        for old in CACHE.glob(f"{arch}-*"):
            if old.is_dir() and old != out:
                _remove_if_unused(old)
        remove_tree(out)  # a build that died half-way
        out.mkdir(parents=True)
        build = subprocess.run([str(ROOT / "images" / "build"), "--arch", arch, "--out", str(out)],
                               check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if build.returncode != 0:
            log = (out / "build.log").read_text(errors="replace") if (out / "build.log").exists() \
                else ""
            raise AssertionError(f"images/build --arch {arch} exited {build.returncode}; "
                                 f"the end of {out}/build.log:\n{log[-3000:]}")
        (out / "rootfs").mkdir()
        subprocess.run(["tar", "-C", str(out / "rootfs"), "--numeric-owner", "-xpf",
                        str(out / "rootfs.tar")], check=True)
        (out / DONE).write_text(json.dumps({"key": key}))
        return out


class RootfsChroot:
    """A writable overlay of a built rootfs, with commands run in it by chroot."""

    def __init__(self, lower: Path) -> None:
        MOUNT_BASE.mkdir(parents=True, exist_ok=True)
        # The pid in the name: a later run cleans up only after processes that are gone.
        self.base = MOUNT_BASE / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.root = self.base / "merged"
        for name in ("upper", "work", "merged"):
            (self.base / name).mkdir(parents=True)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={lower},upperdir={self.base / 'upper'},"
                        f"workdir={self.base / 'work'}", str(self.root)], check=True)
        subprocess.run(["mount", "-t", "proc", "proc", str(self.root / "proc")], check=True)
        for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("random", 1, 8),
                                   ("urandom", 1, 9)):
            node = self.root / "dev" / name
            node.unlink(missing_ok=True)
            os.mknod(node, 0o20666, os.makedev(major, minor))
            os.chmod(node, 0o666)
        # What the image has in RAM at boot (tmpfs there; here, the overlay's upper layer).
        for name in ("run/sshd", "run/desanet", "tmp"):
            (self.root / name).mkdir(parents=True, exist_ok=True)

    def run(self, argv: Sequence[str], check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the chroot with a clean environment; output captured as text."""
        clean = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                 "LC_ALL": "C.UTF-8", "HOME": "/root", **(env or {})}
        proc = subprocess.run(["chroot", str(self.root), *argv], capture_output=True, text=True,
                              env=clean, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def close(self) -> None:
        unmount_all(self.base)
        remove_tree(self.base)


def clean_stale_mounts() -> None:
    """Unmount and remove what crashed runs left under MOUNT_BASE (their process is gone;
    another live worker's chroots are left alone)."""
    if not MOUNT_BASE.exists():
        return
    for child in MOUNT_BASE.iterdir():
        pid = child.name.split("-", 1)[0]
        if child.is_dir() and not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
            with contextlib.suppress(subprocess.CalledProcessError):
                remove_tree(child)


def have_build_tools() -> list[str]:
    """What ``images/build`` needs and this machine lacks."""
    return [t for t in ("mmdebstrap", "chroot", "tar") if shutil.which(t) is None]
