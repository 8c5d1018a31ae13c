"""One way to replace a file so that a power cut leaves the old version or the new one, never a
torn mix: write a temporary file beside it, fsync, rename over it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".tmp"  # leftovers of a cut write end so (the outbox deletes them at start)


def write_atomically(path: Path, data: bytes) -> None:
    """Raises OSError (disk full, read-only) with nothing left behind but the old file."""
    path = Path(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
