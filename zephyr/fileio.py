"""Atomic file writes: a temporary file in the target's directory, fsynced, then renamed onto the target.

Readers see either the old file or the complete new one, never a torn one, even after ``kill -9`` or a power
cut mid-write (the rename is atomic on POSIX file systems; the fsync makes the new content durable first).
Checkpoints, metrics, resolved configs and finished JSONL datasets are all written through ``atomic_open``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces ``path`` when the ``with`` block ends without an error.

    Args:
        path: the file to (re)place; its parent directories are created.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        encoding: text encoding (``"utf-8"`` when ``mode`` is text and none is given).

    Yields:
        The open temporary file (named ``.NAME.<random>.tmp`` next to ``path``). When the block raises, the
        temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
