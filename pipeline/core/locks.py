"""One writer per output: an exclusive ``fcntl.flock`` on a small lock file, removed again when the writer is done.

:class:`FileLock` is what the cache writer (``<cache>.lock.rank<N>``), a training run (``runs/NAME/.lock``) and
every script that writes an output folder (:func:`pipeline.core.outputs.claim_output_dir`) hold while they write.
A second writer is refused at once (:class:`LockedError`, naming the holder's pid and host) instead of interleaving
its files with the first one's. The OS drops the lock when its process dies, even by ``kill -9``, so a stale lock
file never blocks a rerun.

On release the file is deleted *while still locked*, then unlocked. A process that opened the old file just before
it was deleted may then lock that deleted file; :meth:`FileLock.acquire` therefore checks, once it holds a lock, that
the file it locked is still the one at the path (same device and inode) and starts over otherwise — so two
processes can never both believe they hold the lock.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import IO

from pipeline.core.errors import ToolkitError

__all__ = ["FileLock", "LockedError"]


class LockedError(ToolkitError, RuntimeError):
    """Another process holds the lock (``holder``: what it wrote into the lock file, e.g. ``pid 123 on host``)."""

    def __init__(self, path: Path, holder: str) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"{path} is held by {holder}")


class FileLock:
    """An exclusive, non-blocking lock on ``path`` (created, with its folder, when missing)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fh: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def acquire(self) -> FileLock:
        """Take the lock or raise :class:`LockedError` at once; returns ``self``."""
        if self._fh is not None:
            return self
        for _ in range(100):  # each retry means another process released (and deleted) the file meanwhile
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fh = open(self.path, "a+")  # noqa: SIM115 - held until release()
            except FileNotFoundError:  # the folder was removed between mkdir and open
                continue
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                fh.close()
                raise LockedError(self.path, holder) from None
            try:
                same = os.path.samestat(os.fstat(fh.fileno()), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:  # we locked a file its holder had just deleted: try the one at the path now
                fh.close()
                continue
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            fh.flush()
            self._fh = fh
            return self
        raise LockedError(self.path, "other processes that keep replacing it")

    def release(self) -> None:
        """Delete the lock file (while still holding it), then unlock; a no-op when not held."""
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            if os.path.samestat(os.fstat(fh.fileno()), os.stat(self.path)):
                self.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
