"""Locks that many processes share, on one machine or over a shared filesystem.

`held(path)` is a non-blocking exclusive lock on a lock file, through the `filelock` package
(flock on Unix, msvcrt on Windows; torch already depends on it). The kernel drops it when its
process dies, so a killed trainer never leaves a stale lock. Beside the lock file, `<lock>.owner`
records who holds it (host, pid, since), for messages and for `sgtool runs`.

Some filesystems (certain NFS and Lustre mounts) do not support flock: there the lock falls back
to a lock *file* created exclusively (O_EXCL), holding the owner's host and pid. The kernel does
not clean such a file up: a process that crashed leaves it behind. On its own host sgtool sees
that the pid is gone and breaks it; from another host it cannot tell, and says how to break it
(`sgtool unlock RUN`).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import filelock

from .errors import LockHeld


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}


def owner(path: Path) -> dict | None:
    """Who holds the lock at `path` (host, pid, since), as it recorded itself; None if unknown."""
    for p in (Path(f"{path}.owner"), Path(f"{path}.soft")):
        try:
            d = json.loads(p.read_text())
            if isinstance(d, dict):
                return d
        except (OSError, ValueError):
            continue
    return None


def describe(info: dict | None) -> str:
    return f"{info.get('host', '?')}, pid {info.get('pid', '?')}" if info else "another process"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _file_lock(path: Path):
    """filelock's lock, told not to fall back to its own soft lock (sgtool's records its owner)."""
    try:
        return filelock.FileLock(str(path), timeout=0, fallback_to_soft=False)
    except TypeError:  # filelock < 4 has no such option, and no fallback either
        return filelock.FileLock(str(path), timeout=0)


def _no_flock(e: OSError) -> bool:
    return e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


@contextmanager
def _soft(path: Path, what: str):
    """The fallback: an exclusively created file holding the owner; stale ones of this host break."""
    soft = Path(f"{path}.soft")
    for attempt in (1, 2):
        try:
            fd = os.open(soft, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            info = owner(path) or {}
            if attempt == 1 and info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1))):
                soft.unlink(missing_ok=True)  # its process is gone: a stale lock of this host
                continue
            raise LockHeld(f"{what} is held by {describe(info)} (a lock file on a filesystem without flock); "
                              f"if that process is gone, run `sgtool unlock {path.parent.name}`") from None
    with os.fdopen(fd, "w") as f:
        json.dump(_me(), f)
    try:
        yield
    finally:
        soft.unlink(missing_ok=True)


@contextmanager
def held(path: Path, what: str = "the lock", doing: str = "used"):
    """Hold the exclusive lock at `path` for the block, or fail at once with one line naming the
    holder: "<what> is being <doing> by another process (host, pid N)"."""
    path = Path(path)
    lock = _file_lock(path)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise LockHeld(f"{what} is being {doing} by another process ({describe(owner(path))})") from None
    except OSError as e:
        if not _no_flock(e):
            raise
        with _soft(path, what):
            yield
        return
    try:
        if Path(f"{path}.soft").exists():  # a fallback lock from a process on a host without flock
            info = owner(path)
            raise LockHeld(f"{what} is held by {describe(info)}; if that process is gone, "
                              f"run `sgtool unlock {path.parent.name}`")
        Path(f"{path}.owner").write_text(json.dumps(_me()))
        yield
    finally:
        Path(f"{path}.owner").unlink(missing_ok=True)
        lock.release()


def is_held(path: Path) -> bool:
    """Whether some process holds the lock at `path` right now (either kind)."""
    path = Path(path)
    if Path(f"{path}.soft").exists():
        info = owner(path) or {}
        return not (info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1))))
    if not path.exists():
        return False
    lock = _file_lock(path)
    try:
        lock.acquire()
    except filelock.Timeout:
        return True
    except OSError:
        return False
    lock.release()
    return False


def unlock(path: Path) -> bool:
    """Break a fallback lock file left by a crashed process (flock locks need no breaking).
    Returns whether there was one."""
    soft = Path(f"{path}.soft")
    if soft.exists():
        soft.unlink()
        Path(f"{path}.owner").unlink(missing_ok=True)
        return True
    return False
