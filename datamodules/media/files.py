"""Writing a file so that a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """An open temporary file beside `path` (`.<name>.<pid>.tmp`, on the same filesystem); on a clean exit
    it is flushed, synced and moved onto `path` (`os.replace`, atomic), on an error removed. A killed
    writer leaves only the hidden temporary, whose pid says it is stale. Modes: "w" (text), "wb"."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
