"""Writing a file so that no reader ever sees half of it: checkpoints (tasks/callbacks.py) and cache entries
(data/cache.py) both go through `write_atomically`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: Path, data: bytes | memoryview, sync: bool = True) -> None:
    """Write `data` to a temporary file beside `path` (same file system, so the rename is atomic), flush it (and with
    `sync`, fsync it and the folder), then rename it over `path`: the file at `path` is always either the old one or
    the whole new one. Its mode follows the umask (mkstemp's would be 0600). Raises OSError, the temporary file
    removed and `path` untouched."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            if sync:
                os.fsync(out.fileno())
        os.chmod(temporary, 0o666 & ~umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if sync:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)
