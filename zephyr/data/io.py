"""Reading dataset rows: local jsonl/json/parquet files, or a Hugging Face dataset by name.

Local JSON is read line by line by us (not by Arrow) so a malformed line or a row of the wrong shape is reported
as ``FILE: row N: ...`` instead of an Arrow casting traceback. Rows are numbered from 1 (the line number in a
jsonl file). Hub datasets keep the real loading code (``datasets.load_dataset(name, split=...)``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


class DataError(ValueError):
    """Bad input data or a bad ``data.*`` option; the message names the file (or dataset) and row, or the key."""


@dataclass
class RowReport:
    """What happened to the rows of one source: how many were read, kept, skipped and truncated, and why."""

    source: str
    read: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    first_errors: list[str] = field(default_factory=list)

    def skip(self, reason: str, where: str) -> None:
        # one key per kind of problem: numbers (turn, token counts) vary per row, the words do not; never cut
        key = re.sub(r"\d+", "N", reason.split(": ")[0] if reason.startswith("over-long") else reason)
        self.skipped[key] = self.skipped.get(key, 0) + 1
        if len(self.first_errors) < 5:
            self.first_errors.append(f"{where}: {reason}")

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        parts = [f"{self.source}: {self.kept}/{self.read} rows kept"]
        if self.n_skipped:
            reasons = ", ".join(f"{k} x{v}" for k, v in sorted(self.skipped.items()))
            parts.append(f"{self.n_skipped} skipped ({reasons})")
        if self.truncated:
            parts.append(f"{self.truncated} truncated to max_length")
        return "; ".join(parts)


def read_jsonl_numbered(
    path: str | os.PathLike, *, where: str = "{path}:{line}", error: type[ValueError] = ValueError
) -> list[tuple[int, dict[str, Any]]]:
    """Read a ``.jsonl`` file of JSON objects, keeping each row's 1-based line number (blank lines skipped).

    Args:
        path: the file.
        where: how an error names the place, formatted with ``path`` and ``line`` (``"{path}: row {line}"`` for
            the data loaders' wording).
        error: the ``ValueError`` subclass raised.

    Returns:
        ``(line_number, row)`` pairs in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError (``error``): a line that is not JSON or not an object, naming the file and line.
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                place = where.format(path=path, line=line_no)
                raise error(f"{place}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                place = where.format(path=path, line=line_no)
                raise error(f"{place}: expected a JSON object, got {type(row).__name__}")
            rows.append((line_no, row))
    return rows


def read_local_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read all rows of a local ``.jsonl``, ``.json`` (a list of objects) or ``.parquet`` file.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: unknown suffix, a line that is not JSON, or a row that is not an object (names file and row).
    """
    return [row for _, row in read_local_numbered(path)]


def read_local_numbered(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """:func:`read_local_rows` with each row's number: the 1-based file line in ``.jsonl`` (blank lines are not
    rows but keep the count), the 1-based position in a ``.json`` list or a ``.parquet`` file.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl_numbered(p, where="{path}: row {line}", error=DataError)
    if suffix == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(data, dict) and "data" in data:
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f"{p}: expected a list of row objects (or {{'data': [...]}})")
        for i, row in enumerate(data, 1):
            if not isinstance(row, dict):
                raise DataError(f"{p}: row {i}: expected a JSON object, got {type(row).__name__}")
        return list(enumerate(data, 1))
    if suffix == ".parquet":
        from datasets import load_dataset

        return list(enumerate(load_dataset("parquet", data_files=str(p), split="train"), 1))
    raise DataError(f"{p}: unsupported file type {suffix!r} (use one of {', '.join(LOCAL_SUFFIXES)})")


def load_hub(name: str, split: str, revision: str | None, limit: int | None) -> list[dict[str, Any]]:
    """``datasets.load_dataset(name, split=...)``; a dataset that cannot be reached is one :class:`DataError`."""
    from datasets import load_dataset

    try:
        ds = load_dataset(name, split=split, revision=revision)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"dataset {name!r} (split {split!r}) could not be loaded: {e}") from None
    except (ConnectionError, OSError) as e:  # offline (HF_DATASETS_OFFLINE=1, no network): not in the local cache
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"dataset {name!r} (split {split!r}) could not be loaded ({first}); it is not in the local cache: "
            "download it once with network access, or train on a local file with data.path=FILE"
        ) from None
    except ValueError as e:  # e.g. an unknown split name
        raise DataError(f"dataset {name!r} (split {split!r}) could not be loaded: {e}") from None
    return list(ds.select(range(min(limit, len(ds))))) if limit else list(ds)


def load_numbered_rows(
    *,
    path: str | None = None,
    name: str | None = None,
    split: str = "train",
    revision: str | None = None,
    limit: int | None = None,
    builtin: Callable[[], Iterable[dict[str, Any]]] | None = None,
) -> tuple[str, list[tuple[int, dict[str, Any]]]]:
    """Load rows from a local file, a hub dataset, or a built-in generator, in that order of preference.

    Args:
        path: local ``.jsonl``/``.json``/``.parquet`` file.
        name: Hugging Face dataset name (e.g. ``HuggingFaceH4/ultrachat_200k``), loaded with ``split``.
        split: the split to load from a hub dataset.
        revision: dataset revision (commit or tag) for reproducibility.
        limit: keep only the first ``limit`` rows.
        builtin: callable producing rows when neither ``path`` nor ``name`` is set.

    Returns:
        ``(source, [(number, row), ...])``: ``source`` names the file or ``name[split]`` for error messages, and
        ``number`` is what ``FILE: row N`` messages say (the file line, see :func:`read_local_numbered`; hub and
        built-in rows are numbered from 1).
    """
    if path:
        source, numbered = str(Path(path).expanduser()), read_local_numbered(path)
    elif name:
        source = f"{name}[{split}]"
        numbered = list(enumerate(load_hub(name, split, revision, limit), 1))
    elif builtin is not None:
        source, numbered = "builtin", list(enumerate(builtin(), 1))
    else:
        raise DataError("no data source: set data.path (local file) or data.name (hub dataset)")
    if limit:
        numbered = numbered[:limit]
    if not numbered:
        raise DataError(f"{source}: no rows")
    return source, numbered
