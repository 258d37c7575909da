"""Append-only JSONL result store: the crash-safe memory of a data collection.

Every finished unit of work (one completion, one judged prompt, one dialogue) is one JSON line keyed by a tuple
of strings such as ``(prompt_id, model)``. A line is written, flushed and fsynced the moment its result arrives,
so a ``kill -9`` loses at most the call in flight. On restart the store reads the file back: keys with an ``ok``
row are skipped, keys whose last row is a ``failed`` row are run again. A kill in the middle of a write leaves a
torn last line (no trailing newline, or JSON that does not parse); it is reported and cut off before anything
new is appended, so it can never be glued to the next row or counted twice. A bad line *before* the last one
cannot come from a crash of this writer and raises, naming the file and line.

Durability: ``flush`` after every row is what makes a ``kill -9`` safe (the bytes are in the kernel's page cache
the moment ``write`` returns); ``fsync`` also survives a power cut or an OS crash. By default every row is
fsynced (``fsync_interval=0``); on slow shared disks an fsync costs milliseconds and dominates cheap backends, so
``fsync_interval=S`` fsyncs at most every S seconds (and at close), bounding what an OS crash could lose.

One process writes a store at a time: an exclusive ``flock`` on the file is taken at open (the kernel drops it
when the holder dies, even by ``kill -9``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from zephyr.data.io import read_jsonl_numbered
from zephyr.fileio import atomic_open

log = logging.getLogger(__name__)

Key = tuple[str, ...]


def _key(key: Iterable[str]) -> Key:
    out = tuple(str(k) for k in key) if not isinstance(key, str) else (key,)
    if not out:
        raise ValueError("a store key needs at least one part")
    return out


class ResultStore:
    """A JSONL file of ``{"key": [...], "status": "ok"|"failed", ...}`` rows, read back on open.

    Args:
        path: the JSONL file (created with its parent folders when missing).
        redact: optional function applied to error strings before they are written (hides secrets).
        fsync_interval: seconds between fsyncs; 0 fsyncs every row (rows are always flushed).

    Attributes:
        done: key -> value of the latest ``ok`` row.
        failures: key -> error of the latest ``failed`` row, for keys without a later ``ok`` row.
        torn_lines: how many torn trailing lines were found and cut off at open (0 or 1).
    """

    def __init__(self, path: str | os.PathLike, *, redact=None, fsync_interval: float = 0.0):
        self.path = Path(path)
        self.fsync_interval = float(fsync_interval)
        self._last_sync = 0.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._redact = redact or (lambda s: s)
        self._lock = threading.Lock()
        self.done: dict[Key, Any] = {}
        self.failures: dict[Key, str] = {}
        self.torn_lines = 0
        self._fh = open(self.path, "a+b")  # noqa: SIM115 - held open for the store's lifetime
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            self._fh.close()
            raise RuntimeError(f"{self.path}: another process is writing this store") from e
        self._load()

    # -- reading --------------------------------------------------------------------------------------------
    def _load(self) -> None:
        self._fh.seek(0)
        data = self._fh.read()
        good_end = 0
        lines = data.split(b"\n")
        offset = 0
        for lineno, raw in enumerate(lines, start=1):
            is_last = lineno == len(lines)
            end = offset + len(raw) + (0 if is_last else 1)
            if is_last and raw == b"":
                break
            try:
                if is_last:  # no trailing newline: the write was cut short
                    raise ValueError("no trailing newline")
                row = json.loads(raw)
                key = _key(row["key"])
                status = row["status"]
            except (ValueError, KeyError, TypeError) as e:
                trailing = all(not rest.strip() for rest in lines[lineno:])
                if not trailing:
                    raise ValueError(f"{self.path}:{lineno}: unreadable row in the middle of the store ({e})") from e
                self.torn_lines += 1
                log.warning(
                    "%s:%d: torn last line (%d bytes, %s) from an interrupted write; ignored and cut off",
                    self.path,
                    lineno,
                    len(raw),
                    e,
                )
                break
            if status == "ok":
                self.done[key] = row.get("value")
                self.failures.pop(key, None)
            elif status == "failed":
                if key not in self.done:
                    self.failures[key] = row.get("error", "")
            else:
                raise ValueError(f"{self.path}:{lineno}: unknown status {status!r}")
            good_end = end
            offset = end
        if good_end < len(data):
            self._fh.truncate(good_end)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def __contains__(self, key) -> bool:
        return _key(key) in self.done

    def __len__(self) -> int:
        return len(self.done)

    def get(self, key, default=None):
        return self.done.get(_key(key), default)

    def items(self) -> Iterator[tuple[Key, Any]]:
        return iter(list(self.done.items()))

    # -- writing --------------------------------------------------------------------------------------------
    def _append(self, row: dict) -> None:
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self._fh.seek(0, os.SEEK_END)
            self._fh.write(line)
            self._fh.flush()
            now = time.monotonic()
            if self.fsync_interval <= 0 or now - self._last_sync >= self.fsync_interval:
                os.fsync(self._fh.fileno())
                self._last_sync = now

    def put(self, key, value: Any) -> None:
        """Record a finished result for ``key`` (durable when this returns)."""
        key = _key(key)
        self._append({"key": list(key), "status": "ok", "time": round(time.time(), 3), "value": value})
        with self._lock:
            self.done[key] = value
            self.failures.pop(key, None)

    def put_failure(self, key, error: str) -> None:
        """Record that ``key`` failed with ``error``; the next run tries it again."""
        key = _key(key)
        error = self._redact(str(error))
        self._append({"key": list(key), "status": "failed", "time": round(time.time(), 3), "error": error})
        with self._lock:
            if key not in self.done:
                self.failures[key] = error

    def compact(self) -> int:
        """Rewrite the file with one row per key (latest ok, else latest failure); returns rows written."""
        rows = [{"key": list(k), "status": "ok", "value": v} for k, v in self.done.items()]
        rows += [{"key": list(k), "status": "failed", "error": e} for k, e in self.failures.items()]
        with self._lock:
            with atomic_open(self.path, "wb") as f:
                for row in rows:
                    f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
            old = self._fh
            self._fh = open(self.path, "a+b")  # noqa: SIM115
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            old.close()
        return len(rows)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write a final dataset file atomically (temp file + rename); returns the number of rows."""
    n = 0
    with atomic_open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL dataset file of objects; a bad line raises ``ValueError`` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return [row for _, row in read_jsonl_numbered(path)]
