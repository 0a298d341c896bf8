"""The write-then-publish life of a stored body file, shared by the store's writers."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, BinaryIO, Self

from gateway.errors import StoreError

if TYPE_CHECKING:
    from gateway.cache.store import Entry


class StagedFile:
    """What both body writers share (BodyWriter here, PartialWriter in partial.py): a
    file written first, then fsynced and published by ``commit``, or dropped by ``abort``
    (also when an exception leaves the ``with`` block). Subclasses say whether anything
    is worth keeping, how it is published and what dropping it removes."""

    _file: BinaryIO | None
    failed: OSError | None  # the disk refused a write: not stored
    _done: bool

    def _worth_keeping(self) -> bool:
        raise NotImplementedError

    def _publish(self) -> Entry | None:
        raise NotImplementedError

    def _discard(self) -> None:
        raise NotImplementedError

    def commit(self) -> Entry | None:
        """fsync, publish and index what was written; None if nothing is stored. Blocking."""
        if self._done:
            raise StoreError(f"{type(self).__name__} committed twice; start a new one")
        self._done = True
        if self._file is None or self.failed is not None or not self._worth_keeping():
            self._discard()
            return None
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            return self._publish()
        except BaseException:
            self._discard()
            raise

    def abort(self) -> None:
        self._done = True
        self._discard()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._done:
            self.abort()
