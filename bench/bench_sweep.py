"""Five-point beta sweep, total wall time: zephyr (reference log-probs cached once, shared) vs five TRL runs.

Each sweep point trains a fresh policy from the same initial weights for ``sweep_steps`` DPO steps (one epoch
of ``sweep_steps × batch_size`` pairs) at one beta. Both sides run their five points one after another in one
process; the clock starts after imports and after the pairs are generated, and stops when the fifth point ends,
so it covers per-point data preparation (tokenisation), model construction, the reference and training.

* zephyr: :func:`bench.bench_dpo.zephyr_dpo_fit` per point with one shared cache folder: the first point fills
  the reference log-probs (one no-grad pass), the other four hit the cache and never build a reference model.
* TRL: :func:`bench.bench_dpo.trl_dpo_train` per point, each with its live reference copy (the handbook's way).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.common import peak_rss_mb, setup_process

BETAS = (0.01, 0.05, 0.1, 0.3, 0.5)


def _point_params(p: dict[str, Any]) -> dict[str, Any]:
    return {**p, "warmup": 0, "steps": p["sweep_steps"]}


def run_zephyr(p: dict[str, Any]) -> dict[str, Any]:
    """Wall time of the five-point sweep with zephyr's DPOModule and the shared reference cache."""
    setup_process(p["threads"])
    import tempfile

    import pytorch_lightning  # noqa: F401  (imported before the clock starts, as TRL is on its side)

    from bench.bench_dpo import write_pairs, zephyr_dpo_fit
    from zephyr.tokenizer import load_tokenizer

    tok = load_tokenizer()
    q = _point_params(p)
    betas = BETAS[: p.get("points", len(BETAS))]
    with tempfile.TemporaryDirectory(prefix="zephyr-bench-sweep-") as tmp:
        data = write_pairs(tok, q, Path(tmp))
        started = time.perf_counter()
        fills = [zephyr_dpo_fit(tok, q, data, Path(tmp) / "ref_cache", beta=b, clock=None)["fill_s"] for b in betas]
        total = time.perf_counter() - started
    return {"total_s": total, "points": len(betas), "ref_fill_s": fills, "peak_rss_mb": peak_rss_mb()}


def run_trl(p: dict[str, Any]) -> dict[str, Any]:
    """Wall time of five ``trl.DPOTrainer`` runs, one per beta."""
    setup_process(p["threads"])
    import trl  # noqa: F401  (imported before the clock starts)

    from bench.bench_dpo import bench_rows, trl_dpo_train
    from zephyr.tokenizer import load_tokenizer

    tok = load_tokenizer()
    q = _point_params(p)
    betas = BETAS[: p.get("points", len(BETAS))]
    rows = bench_rows(tok, q)
    started = time.perf_counter()
    for b in betas:
        trl_dpo_train(tok, q, rows, beta=b, clock=None)
    total = time.perf_counter() - started
    return {"total_s": total, "points": len(betas), "peak_rss_mb": peak_rss_mb()}
