"""``make bench``: zephyr vs TRL on this machine, side by side, written to ``bench/results/*.json`` and printed.

Usage::

    python -m bench.run --out bench/results            # the full run (about 15 minutes on 2 CPU cores)
    python -m bench.run --shape realistic              # SmolLM2-135M dims at 20 layers -> latest_realistic.json
    python -m bench.run --out /tmp/b --tiny --skip-trl --repeats 1 --steps 1 --warmup 1   # smoke mode
    python -m bench.run --shape realistic --ablation compile   # one zephyr-only variant -> "ablations" in the JSON

Every measurement is a fresh worker process (:mod:`bench.worker`); zephyr and TRL repeats alternate so a load
spike from elsewhere hits both sides alike. Reported per side: the median over repeats of tokens/s (see
:mod:`bench.common` for the token unit), s/step and peak RSS. The sweep is measured once per side (its five
points already repeat the work). The table's last column is the ratio zephyr/TRL. Each run also measures this
machine's fp32 matmul peak (:func:`bench.flops.matmul_peak_gflops`, before and after, the higher kept) and
reports each side's model FLOP/s (:mod:`bench.flops`) as a fraction of it (``*_utilisation``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import LORA, SHAPES, TINY_MODEL_CONFIG, median_result, run_worker

KINDS = ("sft", "dpo", "sweep", "sft_lora", "dpo_lora")
DEFAULT_KINDS = {"tiny": KINDS, "realistic": ("sft", "dpo", "sft_lora", "dpo_lora")}
LABELS = {"sft": "SFT", "dpo": "DPO", "sft_lora": "LoRA SFT", "dpo_lora": "LoRA DPO"}

# ``--ablation NAME``: a zephyr-only variant of the default, per kind, timed against the default in the same run
ABLATION_VARIANTS: dict[str, dict[str, Any]] = {
    "bf16_autocast": {"kinds": ("sft", "dpo"), "setting": {"precision": "bf16-mixed"}},
    "compile": {"kinds": ("sft", "dpo"), "setting": {"compile": True}},
    "length_grouped": {"kinds": ("dpo",), "setting": {"length_grouped": True}},
    "activation_checkpointing": {"kinds": ("sft", "dpo"), "setting": {"activation_checkpointing": True}},
    "no_fused_head": {"kinds": ("sft", "dpo"), "setting": {"fused_head": False}},
    "no_fused_mlp": {"kinds": ("sft", "dpo"), "setting": {"fused_mlp": False}},
    "no_segment_attention": {"kinds": ("sft",), "setting": {"segment_attention": False}},
    "fused_rmsnorm": {"kinds": ("sft", "dpo"), "setting": {"fused_rmsnorm": True}},
    "system_allocator": {"kinds": ("sft", "dpo"), "setting": {"host_allocator": "system"}},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results", help="folder for latest.json and a timestamped copy")
    ap.add_argument(
        "--shape",
        choices=tuple(SHAPES),
        default="tiny",
        help="tiny: 4-layer Mistral, 32k head (latest.json); realistic: Llama at SmolLM2-135M dims, 20 layers, "
        "DPO prompts ~150 / completions ~250, 1024-token SFT rows (latest_realistic.json)",
    )
    ap.add_argument(
        "--only", default=None, help=f"comma-separated subset of {','.join(KINDS)} (default: all; realistic: no sweep)"
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="fresh-process repeats per side, median reported (tiny: 3, realistic: 1)",
    )
    ap.add_argument("--warmup", type=int, default=1, help="steps run but not timed, per repeat")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per repeat (tiny: 5, realistic: 2)")
    ap.add_argument("--layers", type=int, default=None, help="override the shape's decoder layers (smoke runs)")
    ap.add_argument("--sweep-steps", type=int, default=4, help="DPO steps per sweep point")
    ap.add_argument("--points", type=int, default=5, help="beta values in the sweep (at most 5)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=None, help="row / pair length (tiny: 512, realistic: 1024)")
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
        help="also time zephyr with each optimisation switched off (chunked loss; fused head; SFT packing; "
        "DPO reference cache)",
    )
    ap.add_argument(
        "--ablation",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only this zephyr variant vs zephyr's default ({', '.join(ABLATION_VARIANTS)}; repeatable) and "
        "record it under 'ablations' in the shape's JSON (the other figures there are kept)",
    )
    args = ap.parse_args(argv)
    only = [k.strip() for k in (args.only or ",".join(DEFAULT_KINDS[args.shape])).split(",") if k.strip()]
    bad = [k for k in only if k not in KINDS]
    if bad:
        ap.error(f"--only: unknown {', '.join(bad)} (choose from {', '.join(KINDS)})")
    bad = [a for a in args.ablation if a not in ABLATION_VARIANTS]
    if bad:
        ap.error(f"--ablation: unknown {', '.join(bad)} (choose from {', '.join(ABLATION_VARIANTS)})")
    if args.layers is not None and args.layers < 1:
        ap.error("--layers must be >= 1")
    shape = SHAPES[args.shape]
    args.steps = shape["steps"] if args.steps is None else args.steps
    args.repeats = shape["repeats"] if args.repeats is None else args.repeats
    args.max_length = shape["max_length"] if args.max_length is None else args.max_length
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


def kind_task(kind: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The worker kind and parameters of a bench kind: ``sft_lora`` is ``sft`` with :data:`bench.common.LORA`."""
    if kind.endswith("_lora"):
        return kind.removesuffix("_lora"), {**params, "lora": LORA}
    return kind, params


def utilisation(flops_per_s: float | None, peak_gflops: float | None) -> float | None:
    """Model FLOP/s as a fraction of the measured matmul peak (``None`` when either is missing)."""
    if flops_per_s is None or not peak_gflops:
        return None
    return flops_per_s / (peak_gflops * 1e9)


def measure_peak(params: dict[str, Any], log) -> dict[str, Any]:
    """The fp32 matmul peak at the bench's thread count, in a fresh worker (:func:`bench.flops.matmul_peak_gflops`)."""
    res = run_worker("peak:zephyr", params)
    log(f"  matmul peak: {res['gflops']:.1f} GFLOP/s (median {res['median_gflops']:.1f}; {res['threads']} threads)")
    return res


def measure_steps(
    kind: str, params: dict[str, Any], repeats: int, skip_trl: bool, log, peak_gflops: float | None = None
) -> dict[str, Any]:
    """Alternate zephyr and TRL workers ``repeats`` times and return the medians for one kind (sft | dpo | *_lora)."""
    runs: dict[str, list[dict[str, Any]]] = {"zephyr": [], "trl": []}
    sides = ["zephyr"] if skip_trl else ["zephyr", "trl"]
    task, params = kind_task(kind, params)
    for r in range(repeats):
        for side in sides:
            t0 = time.perf_counter()
            res = run_worker(f"{task}:{side}", params)
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
        "zephyr_model_gflops_per_s": z["flops_per_s"] / 1e9,
        "trl_model_gflops_per_s": t["flops_per_s"] / 1e9 if t else None,
        "zephyr_utilisation": utilisation(z["flops_per_s"], peak_gflops),
        "trl_utilisation": utilisation(t["flops_per_s"], peak_gflops) if t else None,
    }
    if params.get("lora"):
        out["lora"] = {k: params["lora"][k] for k in ("r", "alpha", "dropout", "target_modules")}
    if task == "dpo":
        out["zephyr_cached_ref_tokens_per_s"] = float(_median([r["cached_tokens_per_s"] for r in runs["zephyr"]]))
        out["zephyr_ref_fill_s"] = float(_median([r["ref_fill_s"] for r in runs["zephyr"]]))
        out["zephyr_ref_build_s"] = float(_median([r.get("ref_build_s", 0.0) for r in runs["zephyr"]]))
    out["ratio_tokens_per_s"] = _ratio(out["zephyr_tokens_per_s"], out["trl_tokens_per_s"])
    out["ratio_peak_rss"] = _ratio(out["zephyr_peak_rss_mb"], out["trl_peak_rss_mb"])
    return out


def _median(xs: list[float]) -> float:
    import statistics

    return statistics.median(xs)


ABLATIONS = {
    "sft": {
        "no_chunked_loss": {"chunked_loss": False},
        "no_fused_head": {"fused_head": False},
        "no_fused_mlp": {"fused_mlp": False},
        "no_segment_attention": {"segment_attention": False},
        "fused_rmsnorm": {"fused_rmsnorm": True},
        "system_allocator": {"host_allocator": "system"},
        "no_packing": {"packing": False},
    },
    "dpo": {
        "no_chunked_loss": {"chunked_loss": False},
        "no_fused_head": {"fused_head": False},
        "no_fused_mlp": {"fused_mlp": False},
        "fused_rmsnorm": {"fused_rmsnorm": True},
        "system_allocator": {"host_allocator": "system"},
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


def measure_ablation(
    name: str, kinds: list[str], params: dict[str, Any], repeats: int, log, peak_gflops: float | None
) -> dict[str, Any]:
    """zephyr's default vs the ``name`` variant (:data:`ABLATION_VARIANTS`), alternating, for each of ``kinds``."""
    spec = ABLATION_VARIANTS[name]
    out: dict[str, Any] = {"setting": spec["setting"], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for kind in [k for k in kinds if k in spec["kinds"]]:
        runs: dict[str, list[dict[str, Any]]] = {"default": [], "variant": []}
        for _ in range(repeats):
            runs["default"].append(run_worker(f"{kind}:zephyr", params))
            runs["variant"].append(run_worker(f"{kind}:zephyr", {**params, **spec["setting"]}))
        d, v = median_result(runs["default"]), median_result(runs["variant"])
        out[kind] = {
            "tokens_per_s": v["tokens_per_s"],
            "peak_rss_mb": v["peak_rss_mb"],
            "utilisation": utilisation(v["flops_per_s"], peak_gflops),
            "default_tokens_per_s": d["tokens_per_s"],
            "default_peak_rss_mb": d["peak_rss_mb"],
            "ratio_tokens_per_s": _ratio(v["tokens_per_s"], d["tokens_per_s"]),
            "ratio_peak_rss": _ratio(v["peak_rss_mb"], d["peak_rss_mb"]),
            "repeats": repeats,
        }
        log(
            f"  ablation {name} {kind}: {v['tokens_per_s']:.1f} tokens/s vs default {d['tokens_per_s']:.1f} "
            f"({out[kind]['ratio_tokens_per_s']:.2f}×), peak RSS {v['peak_rss_mb']:.0f} vs {d['peak_rss_mb']:.0f} MiB"
        )
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
    for kind in ("sft", "dpo", "sft_lora", "dpo_lora"):
        r = results.get(kind)
        if not r:
            continue
        label = LABELS[kind]
        lines.append(
            f"| {label} tokens/s | {_fmt(r['zephyr_tokens_per_s'], '.0f')} | "
            f"{_fmt(r['trl_tokens_per_s'], '.0f')} | {_fmt(r['ratio_tokens_per_s'], '.2f')}× |"
        )
        lines.append(
            f"| {label} s/step | {_fmt(r['zephyr_s_per_step'], '.2f')} | "
            f"{_fmt(r['trl_s_per_step'], '.2f')} | "
            f"{_fmt(_ratio(r['zephyr_s_per_step'], r['trl_s_per_step']), '.2f')}× |"
        )
        lines.append(
            f"| {label} peak RSS (MiB) | {_fmt(r['zephyr_peak_rss_mb'], '.0f')} | "
            f"{_fmt(r['trl_peak_rss_mb'], '.0f')} | {_fmt(r['ratio_peak_rss'], '.2f')}× |"
        )
        if r.get("zephyr_utilisation") is not None:
            zu, tu = r["zephyr_utilisation"], r.get("trl_utilisation")
            lines.append(
                f"| {label} utilisation of matmul peak | {_fmt(zu, '.2f')} | {_fmt(tu, '.2f')} | "
                f"{_fmt(_ratio(zu, tu), '.2f')}× |"
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

    shape = SHAPES[args.shape]
    model_config = dict(TINY_MODEL_CONFIG if args.tiny else shape["model_config"])
    if args.layers is not None:
        model_config["num_hidden_layers"] = args.layers
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
        "prompt_tokens": shape["prompt_tokens"],
        "completion_tokens": shape["completion_tokens"],
    }
    from bench.flops import model_flops

    started = time.perf_counter()
    out = Path(args.out)
    path = out / shape["results"]
    if args.ablation:
        return run_ablations(args, params, path, log)
    fm = model_flops(model_config)
    results: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "cpu_count": _cpu_count(), **_versions()},
        "settings": {
            **{k: v for k, v in params.items() if k != "model_config"},
            "shape": args.shape,
            "repeats": args.repeats,
            "model_config": model_config,
            "head_share_of_matmul_flops": fm.head_share,
            "tiny": args.tiny,
            "skip_trl": args.skip_trl,
            "lora": LORA,
            "data": {
                "sft": "toy-world dialogues (zephyr.toy.teacher.sft_dialogues, seed 1234), assistant-only labels, "
                "packed into rows of max_length tokens (zephyr: best fit; TRL: bfd), padding-free",
                "dpo": f"toy-world pairs (bench.common.preference_rows, seed 1234): prompt ~{shape['prompt_tokens']} "
                "tokens (multi-turn toy history + question, empty system turn), chosen/rejected "
                f"~{shape['completion_tokens']} tokens each",
                "token_unit": "SFT: non-pad tokens; DPO: 2*prompt + chosen + rejected tokens per pair",
                "model_flops": "bench/flops.py: 6*N_matmul per trained token + causal attention 12*L*d_attn per "
                "(query, key) pair (SFT: every token; DPO: prompt once, head at completion positions, plus one "
                "reference forward 2*N; LoRA: 4*N_frozen + 6*N_lora)",
            },
            "optimizer": "AdamW lr 1e-5 constant, weight decay 0; fp32 weights and compute; no activation "
            "checkpointing; logging, saving and eval off on both sides",
            "reference": "TRL: live reference copy run every step; zephyr: reference log-prob cache filled "
            "once before training, fill time charged pro rata to the timed steps",
        },
    }
    log("[bench] matmul peak ...")
    peaks = [measure_peak(params, log)]
    peak = peaks[0]["gflops"]
    for kind in args.only:
        log(f"[bench] {kind} ...")
        if kind == "sweep":
            results["sweep"] = measure_sweep(params, args.skip_trl, log)
        else:
            results[kind] = measure_steps(kind, params, args.repeats, args.skip_trl, log, peak)
            if args.ablations and kind in ABLATIONS:
                results[kind]["zephyr_ablations"] = measure_ablations(kind, params, args.repeats, log)
    peaks.append(measure_peak(params, log))
    best = max(x["gflops"] for x in peaks)
    results["machine"].update(matmul_peak_gflops=best, matmul_peak_runs=peaks)
    for kind in args.only:  # utilisation against the higher of the two peak measurements
        r = results[kind]
        if kind != "sweep":
            r["zephyr_utilisation"] = utilisation(r["zephyr_model_gflops_per_s"] * 1e9, best)
            r["trl_utilisation"] = (
                utilisation(r["trl_model_gflops_per_s"] * 1e9, best) if r["trl_model_gflops_per_s"] else None
            )
    if suspect := peak_suspect(results, args.only):
        results["machine"]["matmul_peak_suspect"] = suspect
        log(f"[bench] warning: {suspect}")
    if path.is_file():  # ablation rows recorded earlier carry their own default, measured in their own run
        previous = json.loads(path.read_text()).get("ablations")
        if previous:
            results["ablations"] = previous
    results["wall_s"] = time.perf_counter() - started
    write_results(results, path, args.shape)
    log(f"[bench] wrote {path} ({results['wall_s']:.0f} s in all)")
    log("")
    log(table(results))
    return 0


def peak_suspect(results: dict[str, Any], kinds: list[str]) -> str | None:
    """The warning when a side's utilisation exceeds 1: the GEMM peak was measured low (a busy or throttled
    host), so no utilisation figure of the run is evidence; ``None`` when every figure is at most 1."""
    over = [
        f"{kind} {side} {results[kind][f'{side}_utilisation']:.2f}"
        for kind in kinds
        if kind != "sweep"
        for side in ("zephyr", "trl")
        if (results[kind].get(f"{side}_utilisation") or 0.0) > 1.0
    ]
    if not over:
        return None
    return (
        f"utilisation above 1 ({', '.join(over)}): the matmul peak measured "
        f"{results['machine']['matmul_peak_gflops']:.0f} GFLOP/s, below what training reached; "
        "this run's utilisation figures are not evidence (its tokens/s and ratios are)"
    )


def write_results(results: dict[str, Any], path: Path, shape: str) -> None:
    """Write ``results`` to ``path`` and a timestamped copy beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2)
    path.write_text(text + "\n")
    stem = "bench" if shape == "tiny" else f"bench-{shape}"
    (path.parent / time.strftime(f"{stem}-%Y%m%d-%H%M%S.json")).write_text(text + "\n")


def run_ablations(args: argparse.Namespace, params: dict[str, Any], path: Path, log) -> int:
    """``--ablation NAME``: time each variant against zephyr's default and merge the rows into ``path``."""
    started = time.perf_counter()
    log("[bench] matmul peak ...")
    peak = measure_peak(params, log)["gflops"]
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.setdefault("machine", {"platform": platform.platform(), "cpu_count": _cpu_count(), **_versions()})
    ablations = results.setdefault("ablations", {})
    for name in args.ablation:
        log(f"[bench] ablation {name} ...")
        row = measure_ablation(name, [k for k in args.only if k in ("sft", "dpo")], params, args.repeats, log, peak)
        ablations[name] = {**row, "matmul_peak_gflops": peak, "steps": params["steps"], "shape": args.shape}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    log(f"[bench] wrote ablations {', '.join(args.ablation)} to {path} ({time.perf_counter() - started:.0f} s)")
    return 0


def _cpu_count() -> int | None:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    sys.exit(main())
