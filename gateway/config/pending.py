"""The durable record of a config trial (``config apply --confirm``).

Written (and fsynced, with its directory) *before* anything changes, so a
power cut or a kill -9 during the confirm window finds it at the next start,
which then rolls back to ``previous_text``. Removed once the trial is
confirmed or rolled back. Also keeps the config that ran before the last
apply, for ``desanet config rollback`` when no trial is pending.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway.config.loader import write_config_atomic, write_file_atomic
from gateway.errors import StoreError

TRIAL_FILE = "config-trial.json"
PREVIOUS_FILE = "config-previous.toml"
REFUSED_FILE = "config-refused.toml"
GOOD_FILE = "config-last-good.toml"


@dataclass(frozen=True, slots=True)
class TrialRecord:
    started: int
    deadline: int
    previous_text: str
    previous_version: str
    version: str
    by: str

    def public_json(self) -> dict[str, object]:
        return {"started": self.started, "deadline": self.deadline,
                "previous_version": self.previous_version, "version": self.version,
                "by": self.by}


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` durably (see write_file_atomic); blocks (fsync).

    Raises StoreError naming the file.
    """
    try:
        write_file_atomic(path, text)
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}; check the disk "
                         "(SD card) and that its directory is writable by root") from exc


class TrialStore:
    """Files under the state directory; every method blocks (fsync).

    With ``config_path``, the last config that ran and a refused one live beside
    the config file (``gateway.toml.last-good``, ``gateway.toml.refused``): a
    start that cannot even parse the file still finds them, where the state
    directory (named in that file) would be unknown.
    """

    def __init__(self, state_dir: Path, config_path: str | None = None) -> None:
        self.trial_path = state_dir / TRIAL_FILE
        self.previous_path = state_dir / PREVIOUS_FILE
        if config_path is not None:
            self.refused_path = Path(config_path + ".refused")
            self.good_path = Path(config_path + ".last-good")
        else:
            self.refused_path = state_dir / REFUSED_FILE
            self.good_path = state_dir / GOOD_FILE

    def save(self, record: TrialRecord) -> None:
        write_atomic(self.trial_path, json.dumps(asdict(record)))

    def load(self) -> TrialRecord | None:
        try:
            data = json.loads(self.trial_path.read_text(encoding="utf-8"))
            return TrialRecord(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            raise StoreError(f"config trial record {self.trial_path} is unreadable ({exc}); "
                             "remove it to start with the config file as it is") from exc

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.trial_path.unlink()
            dir_fd = os.open(self.trial_path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def save_previous(self, text: str) -> None:
        write_atomic(self.previous_path, text)

    def save_good(self, text: str) -> None:
        """The last config that ran (and, for a trial, was confirmed): the fallback at start."""
        try:
            if self.good_path.read_text(encoding="utf-8") == text:
                return  # no fsync when nothing changed (every start lands here)
        except FileNotFoundError:
            pass
        write_atomic(self.good_path, text)

    def load_good(self) -> str | None:
        try:
            return self.good_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def save_refused(self, text: str) -> None:
        """Keep a config that failed at start, for the technician to look at."""
        write_atomic(self.refused_path, text)

    def forget_previous(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.previous_path.unlink()

    def load_previous(self) -> str | None:
        try:
            return self.previous_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None


def recover_trial(trials: TrialStore, config_path: str) -> TrialRecord | None:
    """At start: a trial still on disk means the box stopped during its confirm window.

    Puts the previous config text back into ``config_path`` and removes the
    record; returns it (None when there was no trial). Blocks (fsync).
    """
    record = trials.load()
    if record is None:
        return None
    write_config_atomic(config_path, record.previous_text)
    trials.clear()
    return record


def recover_unreadable(config_path: str) -> str | None:
    """At start, when the config file does not parse (a hand edit gone wrong): put the
    last config that ran back in its place, keep the refused text beside it, and
    return the refused file's path; None when there is no last good config to use.
    Blocks (fsync).
    """
    good = Path(config_path + ".last-good")
    try:
        text = good.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    refused = Path(config_path + ".refused")
    with contextlib.suppress(OSError):  # a copy of the broken file is a courtesy only
        write_file_atomic(refused, Path(config_path).read_text(encoding="utf-8"))
    write_config_atomic(config_path, text)
    return str(refused)
