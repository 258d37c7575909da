"""Atomic file writes: a temporary file in the target's directory, fsynced, then renamed onto the target.

Readers see either the old file or the complete new one, never a torn one, even after ``kill -9`` or a power
cut mid-write (the rename is atomic on POSIX file systems; the fsync makes the new content durable first).
Checkpoints, metrics, resolved configs and finished JSONL datasets are all written through ``atomic_open``.

Append-only JSONL logs of paid work (MT-Bench answers and judgments) go through ``append_jsonl``: each call's
rows are written, flushed and fsynced before it returns, so a crash loses at most the row being written;
``cut_torn_tail`` drops the torn last line such a crash can leave, before the file is read back.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (``os.umask`` sets while it reads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces ``path`` when the ``with`` block ends without an error.

    Args:
        path: the file to (re)place; its parent directories are created.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        encoding: text encoding (``"utf-8"`` when ``mode`` is text and none is given).

    Yields:
        The open temporary file (named ``.NAME.<random>.tmp`` next to ``path``). When the block raises, the
        temporary file is removed and ``path`` is left as it was. The new file gets the mode a plain ``open()``
        would give it: the existing file's mode when ``path`` exists, else ``0o666`` minus the umask (0644
        under umask 022), not ``mkstemp``'s private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    try:
        mode_bits = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode_bits = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode_bits)
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_open` (no torn files)."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Append ``rows`` to the JSONL file ``path`` (created with its parents), flushed and fsynced on return."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def cut_torn_tail(path: str | os.PathLike) -> int:
    """Cut off a torn last line of the JSONL file ``path`` (no trailing newline, or not JSON) left by a crash.

    Returns:
        1 when a torn line was removed (and logged), else 0 (also when ``path`` does not exist).
    """
    path = Path(path)
    if not path.is_file():
        return 0
    data = path.read_bytes()
    body = data.rstrip(b"\n")
    if not body:
        return 0
    start = body.rfind(b"\n") + 1
    last = body[start:]
    torn = not data.endswith(b"\n")
    if not torn:
        try:
            json.loads(last)
        except ValueError:
            torn = True
    if not torn:
        return 0
    log.warning("%s: torn last line (%d bytes) from an interrupted write; cut off", path, len(last))
    with open(path, "r+b") as f:
        f.truncate(start)
        f.flush()
        os.fsync(f.fileno())
    return 1
