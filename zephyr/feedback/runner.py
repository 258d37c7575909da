"""Bounded-concurrency execution of many keyed jobs against a ``ResultStore``, with a Rich progress bar.

A job is ``Job(keys, fn)``: ``fn()`` returns one value per key (a single-key job returns a one-element list).
Multi-key jobs let a batched backend (a local checkpoint's ``chat_batch``) answer several prompts in one call
while the store still records one row per ``(prompt_id, model)``. Keys already in the store are skipped before
anything runs; an exception becomes a ``failed`` row carrying the error text (retried on the next run), never a
silent drop. At most ``max_workers`` jobs run at once and at most ``2 * max_workers`` are queued, so a 64k-prompt
collection does not build 64k futures up front.

A value may carry ``{"usage": {"prompt_tokens": p, "completion_tokens": c}}``; the bar sums these as tokens used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from zephyr.feedback.store import ResultStore

log = logging.getLogger(__name__)


@dataclass
class Job:
    """``keys`` finished together by one call of ``fn`` (which returns one value per key, in order)."""

    keys: Sequence[tuple[str, ...]]
    fn: Callable[[], list[Any]]


@dataclass
class RunSummary:
    """Counts of one ``run_jobs`` call."""

    total: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    tokens: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Keys finished per second in this run."""
        return self.done / self.seconds if self.seconds > 0 else 0.0


def _tokens(value: Any) -> int:
    if isinstance(value, dict) and isinstance(value.get("usage"), dict):
        u = value["usage"]
        return int(u.get("prompt_tokens", 0) or 0) + int(u.get("completion_tokens", 0) or 0)
    return 0


def run_jobs(
    jobs: Iterable[Job],
    store: ResultStore,
    *,
    max_workers: int = 4,
    desc: str = "jobs",
    progress: bool = True,
) -> RunSummary:
    """Run every job whose keys are not all in ``store``; record results and failures as they arrive.

    Args:
        jobs: the work; jobs whose keys are all finished are skipped.
        store: where results go (one row per key).
        max_workers: concurrent calls (threads).
        desc: label of the progress bar.
        progress: show a Rich progress bar (ETA, done/failed counters, tokens used).

    Returns:
        A ``RunSummary``; ``failed`` counts keys recorded as failures in this run.
    """
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    pending: list[Job] = []
    summary = RunSummary()
    for job in jobs:
        summary.total += len(job.keys)
        todo = [k for k in job.keys if k not in store]
        if not todo:
            summary.skipped += len(job.keys)
            continue
        if len(todo) < len(job.keys):
            # A multi-key job that finished partly (a crash between its rows) reruns whole; keys already stored
            # keep their first row, so nothing is written twice.
            summary.skipped += len(job.keys) - len(todo)
        pending.append(job)

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ok {task.fields[ok]}  failed {task.fields[failed]}  tokens {task.fields[tokens]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not progress,
        transient=False,
    )
    n_keys = sum(len(j.keys) for j in pending)
    start = time.perf_counter()
    with bar, ThreadPoolExecutor(max_workers=max_workers) as pool:
        task = bar.add_task(desc, total=n_keys, ok=0, failed=0, tokens=0)
        queue = iter(pending)
        inflight: dict[Future, Job] = {}

        def submit_more() -> None:
            while len(inflight) < 2 * max_workers:
                job = next(queue, None)
                if job is None:
                    return
                inflight[pool.submit(job.fn)] = job

        submit_more()
        try:
            while inflight:
                finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for fut in finished:
                    job = inflight.pop(fut)
                    try:
                        values = fut.result()
                        if len(values) != len(job.keys):
                            raise RuntimeError(f"job returned {len(values)} values for {len(job.keys)} keys")
                    except Exception as e:  # noqa: BLE001 - every failure is recorded, none is dropped
                        err = f"{type(e).__name__}: {e}"
                        for key in job.keys:
                            if key not in store:
                                store.put_failure(key, err)
                                summary.failed += 1
                        summary.errors.append(err)
                        log.debug("job %s failed: %s", job.keys[0], err)
                    else:
                        for key, value in zip(job.keys, values):
                            if key in store:
                                continue
                            store.put(key, value)
                            summary.done += 1
                            summary.tokens += _tokens(value)
                    bar.update(
                        task,
                        advance=len(job.keys),
                        ok=summary.done,
                        failed=summary.failed,
                        tokens=summary.tokens,
                    )
                submit_more()
        except BaseException:
            for fut in inflight:
                fut.cancel()
            raise
    summary.seconds = time.perf_counter() - start
    return summary
