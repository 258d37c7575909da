"""``make bench``: zephyr vs TRL on this machine, side by side, written to ``bench/results/*.json`` and printed.

Usage::

    python -m bench.run --out bench/results            # the full run (about 10 minutes on 2 CPU cores)
    python -m bench.run --out /tmp/b --tiny --skip-trl --repeats 1 --steps 1 --warmup 1   # smoke mode

Every measurement is a fresh worker process (:mod:`bench.worker`); zephyr and TRL repeats alternate so a load
spike from elsewhere hits both sides alike. Reported per side: the median over repeats of tokens/s (see
:mod:`bench.common` for the token unit), s/step and peak RSS. The sweep is measured once per side (its five
points already repeat the work). The table's last column is the ratio zephyr/TRL.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import MODEL_CONFIG, TINY_MODEL_CONFIG, median_result, run_worker

KINDS = ("sft", "dpo", "sweep")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results", help="folder for latest.json and a timestamped copy")
    ap.add_argument("--only", default=",".join(KINDS), help="comma-separated subset of sft,dpo,sweep")
    ap.add_argument("--repeats", type=int, default=3, help="fresh-process repeats per side (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="steps run but not timed, per repeat")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    ap.add_argument("--sweep-steps", type=int, default=4, help="DPO steps per sweep point")
    ap.add_argument("--points", type=int, default=5, help="beta values in the sweep (at most 5)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument(
        "--dpo-layout",
        choices=("prefix_shared", "concat"),
        default="prefix_shared",
        help="zephyr's DPO batch layout (data.layout): one row per pair, or 2B concatenated rows",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch threads in every worker")
    ap.add_argument("--tiny", action="store_true", help="a 1-layer, hidden-32 model (smoke tests)")
    ap.add_argument("--skip-trl", action="store_true", help="measure zephyr only (TRL values are null)")
    ap.add_argument(
        "--ablations",
        action="store_true",
        help="also time zephyr with each optimisation switched off (chunked loss; SFT packing; DPO reference cache)",
    )
    args = ap.parse_args(argv)
    only = [k.strip() for k in args.only.split(",") if k.strip()]
    bad = [k for k in only if k not in KINDS]
    if bad:
        ap.error(f"--only: unknown {', '.join(bad)} (choose from {', '.join(KINDS)})")
    if not 1 <= args.points <= 5:
        ap.error("--points must be between 1 and 5")
    if args.repeats < 1 or args.steps < 1 or args.warmup < 0 or args.sweep_steps < 1:
        ap.error("--repeats, --steps and --sweep-steps must be >= 1 and --warmup >= 0")
    args.only = only
    return args


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "pytorch-lightning", "trl"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def measure_steps(kind: str, params: dict[str, Any], repeats: int, skip_trl: bool, log) -> dict[str, Any]:
    """Alternate zephyr and TRL workers ``repeats`` times and return the medians for one kind (sft | dpo)."""
    runs: dict[str, list[dict[str, Any]]] = {"zephyr": [], "trl": []}
    sides = ["zephyr"] if skip_trl else ["zephyr", "trl"]
    for r in range(repeats):
        for side in sides:
            t0 = time.perf_counter()
            res = run_worker(f"{kind}:{side}", params)
            took = time.perf_counter() - t0
            runs[side].append(res)
            log(
                f"  {kind} {side:6s} repeat {r + 1}/{repeats}: {res['tokens_per_s']:8.1f} tokens/s, "
                f"{res['s_per_step']:.2f} s/step, peak RSS {res['peak_rss_mb']:.0f} MiB ({took:.0f} s)"
            )
    z = median_result(runs["zephyr"])
    t = median_result(runs["trl"]) if runs["trl"] else None
    out: dict[str, Any] = {
        "zephyr_tokens_per_s": z["tokens_per_s"],
        "trl_tokens_per_s": t["tokens_per_s"] if t else None,
        "zephyr_peak_rss_mb": z["peak_rss_mb"],
        "trl_peak_rss_mb": t["peak_rss_mb"] if t else None,
        "zephyr_s_per_step": z["s_per_step"],
        "trl_s_per_step": t["s_per_step"] if t else None,
        "zephyr_tokens_per_step": z["tokens_per_step"],
        "trl_tokens_per_step": t["tokens_per_step"] if t else None,
        "batch_size": params["batch_size"],
        "max_length": params["max_length"],
        "precision": "fp32",
        "repeats": repeats,
        "timed_steps": params["steps"],
        "warmup_steps": params["warmup"],
        "zephyr_all_tokens_per_s": z["all_tokens_per_s"],
        "trl_all_tokens_per_s": t["all_tokens_per_s"] if t else None,
        "zephyr_all_peak_rss_mb": z["all_peak_rss_mb"],
        "trl_all_peak_rss_mb": t["all_peak_rss_mb"] if t else None,
    }
    if kind == "dpo":
        out["zephyr_cached_ref_tokens_per_s"] = float(_median([r["cached_tokens_per_s"] for r in runs["zephyr"]]))
        out["zephyr_ref_fill_s"] = float(_median([r["ref_fill_s"] for r in runs["zephyr"]]))
    out["ratio_tokens_per_s"] = _ratio(out["zephyr_tokens_per_s"], out["trl_tokens_per_s"])
    out["ratio_peak_rss"] = _ratio(out["zephyr_peak_rss_mb"], out["trl_peak_rss_mb"])
    return out


def _median(xs: list[float]) -> float:
    import statistics

    return statistics.median(xs)


ABLATIONS = {
    "sft": {"no_chunked_loss": {"chunked_loss": False}, "no_packing": {"packing": False}},
    "dpo": {
        "no_chunked_loss": {"chunked_loss": False},
        "live_reference": {"reference": "live"},
        "concat_layout": {"data_layout": "concat"},
        "bare_loop_concat_layout": {"layout": "concat"},
        "bare_loop_prefix_shared": {"layout": "prefix"},
    },
}


def measure_ablations(kind: str, params: dict[str, Any], repeats: int, log) -> dict[str, Any]:
    """Median zephyr tokens/s with one optimisation off at a time (the gain of each is the ratio to the default)."""
    out = {}
    for name, change in ABLATIONS[kind].items():
        runs = [run_worker(f"{kind}:zephyr", {**params, **change}) for _ in range(repeats)]
        m = median_result(runs)
        out[name] = {"tokens_per_s": m["tokens_per_s"], "peak_rss_mb": m["peak_rss_mb"], "setting": change}
        log(f"  {kind} zephyr {name}: {m['tokens_per_s']:.1f} tokens/s, peak RSS {m['peak_rss_mb']:.0f} MiB")
    return out


def measure_sweep(params: dict[str, Any], skip_trl: bool, log) -> dict[str, Any]:
    """One zephyr sweep and (unless skipped) one five-run TRL sweep."""
    z = run_worker("sweep:zephyr", params)
    log(f"  sweep zephyr: {z['total_s']:.1f} s for {z['points']} points")
    t = None
    if not skip_trl:
        t = run_worker("sweep:trl", params)
        log(f"  sweep trl   : {t['total_s']:.1f} s for {t['points']} points")
    return {
        "zephyr_s": z["total_s"],
        "trl_s": t["total_s"] if t else None,
        "points": z["points"],
        "steps_per_point": params["sweep_steps"],
        "batch_size": params["batch_size"],
        "max_length": params["max_length"],
        "precision": "fp32",
        "zephyr_ref_fill_s": z["ref_fill_s"],
        "zephyr_peak_rss_mb": z["peak_rss_mb"],
        "trl_peak_rss_mb": t["peak_rss_mb"] if t else None,
        "ratio_s": _ratio(z["total_s"], t["total_s"] if t else None),
    }


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def table(results: dict[str, Any]) -> str:
    """The side-by-side table; the ratio zephyr/TRL is the last column."""
    lines = [
        "| measure | zephyr | TRL | zephyr/TRL |",
        "|---|---:|---:|---:|",
    ]
    for kind in ("sft", "dpo"):
        r = results.get(kind)
        if not r:
            continue
        lines.append(
            f"| {kind.upper()} tokens/s | {_fmt(r['zephyr_tokens_per_s'], '.0f')} | "
            f"{_fmt(r['trl_tokens_per_s'], '.0f')} | {_fmt(r['ratio_tokens_per_s'], '.2f')}× |"
        )
        lines.append(
            f"| {kind.upper()} s/step | {_fmt(r['zephyr_s_per_step'], '.2f')} | "
            f"{_fmt(r['trl_s_per_step'], '.2f')} | "
            f"{_fmt(_ratio(r['zephyr_s_per_step'], r['trl_s_per_step']), '.2f')}× |"
        )
        lines.append(
            f"| {kind.upper()} peak RSS (MiB) | {_fmt(r['zephyr_peak_rss_mb'], '.0f')} | "
            f"{_fmt(r['trl_peak_rss_mb'], '.0f')} | {_fmt(r['ratio_peak_rss'], '.2f')}× |"
        )
    s = results.get("sweep")
    if s:
        lines.append(
            f"| {s['points']}-point beta sweep wall time (s) | {_fmt(s['zephyr_s'], '.1f')} | "
            f"{_fmt(s['trl_s'], '.1f')} | {_fmt(s['ratio_s'], '.2f')}× |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    model_config = TINY_MODEL_CONFIG if args.tiny else MODEL_CONFIG
    params = {
        "threads": args.threads,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "warmup": args.warmup,
        "steps": args.steps,
        "sweep_steps": args.sweep_steps,
        "points": args.points,
        "model_config": model_config,
        "data_layout": args.dpo_layout,
    }
    started = time.perf_counter()
    results: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "cpu_count": _cpu_count(), **_versions()},
        "settings": {
            **{k: v for k, v in params.items() if k != "model_config"},
            "repeats": args.repeats,
            "model_config": model_config,
            "tiny": args.tiny,
            "skip_trl": args.skip_trl,
            "data": {
                "sft": "toy-world dialogues (zephyr.toy.teacher.sft_dialogues, seed 1234), assistant-only labels, "
                "packed into rows of max_length tokens (zephyr: best fit; TRL: bfd), padding-free",
                "dpo": "toy-world pairs (bench.common.preference_rows, seed 1234): prompt ~115 tokens (multi-turn "
                "toy history + question, empty system turn), chosen/rejected ~100 tokens each",
                "token_unit": "SFT: non-pad tokens; DPO: 2*prompt + chosen + rejected tokens per pair",
            },
            "optimizer": "AdamW lr 1e-5 constant, weight decay 0; fp32 weights and compute; no activation "
            "checkpointing; logging, saving and eval off on both sides",
            "reference": "TRL: live reference copy run every step; zephyr: reference log-prob cache filled "
            "once before training, fill time charged pro rata to the timed steps",
        },
    }
    for kind in args.only:
        log(f"[bench] {kind} ...")
        if kind == "sweep":
            results["sweep"] = measure_sweep(params, args.skip_trl, log)
        else:
            results[kind] = measure_steps(kind, params, args.repeats, args.skip_trl, log)
            if args.ablations:
                results[kind]["zephyr_ablations"] = measure_ablations(kind, params, args.repeats, log)
    results["wall_s"] = time.perf_counter() - started

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2)
    (out / "latest.json").write_text(text + "\n")
    (out / time.strftime("bench-%Y%m%d-%H%M%S.json")).write_text(text + "\n")
    log(f"[bench] wrote {out / 'latest.json'} ({results['wall_s']:.0f} s in all)")
    log("")
    log(table(results))
    return 0


def _cpu_count() -> int | None:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    sys.exit(main())
