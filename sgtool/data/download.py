"""Finding dataset files under a data dir, and downloading the canonical ones when a network
exists. Offline (no network, or SGTOOL_OFFLINE=1) a missing file is one line naming the file
and --data-dir.

Every download goes to a temp file of its own in the target folder (several processes may fetch
the same file at once) and is renamed into place only after its checksum matched, so a kill or a
bad mirror never leaves half a file under the real name."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from ..errors import SgtoolError


def offline() -> bool:
    return os.environ.get("SGTOOL_OFFLINE", "") not in ("", "0")


def file_hash(path: Path, algo: str = "md5") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find(name: str, fname: str, data_dir: Path) -> Path | None:
    """Look in DIR/<name>/ then DIR/, for the file or its uncompressed form."""
    for d in (data_dir / name, data_dir):
        for cand in (fname, fname.removesuffix(".gz")):
            if (d / cand).is_file():
                return d / cand
    return None


def download(name: str, fname: str, mirrors: list[str], dest_dir: Path, md5: str | None = None,
             check=None) -> Path:
    """Fetch one file into dest_dir from the first mirror that serves it. md5 (or `check(path)`,
    which raises or returns False) decides whether what came is the file; no checksum at all is
    accepted only with a `check`."""
    dest = dest_dir / fname
    errors = []
    for mirror in [] if offline() else mirrors:
        try:
            # The folder is made only once a mirror answers, so that a failed fetch leaves nothing.
            with urllib.request.urlopen(mirror + fname, timeout=20) as r:
                dest_dir.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{fname}.", suffix=".part")
                try:
                    with os.fdopen(fd, "wb") as f:
                        while chunk := r.read(1 << 20):
                            f.write(chunk)
                    ok = (md5 is None or file_hash(Path(tmp)) == md5) and (check is None or check(Path(tmp)) is not False)
                    if not ok:
                        errors.append(f"{mirror}: checksum mismatch")
                        continue
                    os.replace(tmp, dest)
                    return dest
                finally:
                    Path(tmp).unlink(missing_ok=True)
        except (OSError, SgtoolError) as e:
            errors.append(f"{mirror}: {e}")
    why = "offline" if offline() else "download failed"
    raise SgtoolError(f"{name}: missing file {fname} in {dest_dir} ({why}); put it there or pass --data-dir DIR")
