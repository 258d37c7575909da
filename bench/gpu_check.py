"""The GPU check kit: dSFT and dDPO of a ~1B random-init Mistral on one GPU, three strategies, then ``tests/gpu``.

``make gpu-check`` (``python -m bench.gpu_check``) runs, on one CUDA GPU, without network and within a time budget
(8 minutes by default, ``--budget-s``):

1. dSFT and dDPO of a random-init Mistral of ~1B parameters (:data:`ONE_B`: hidden 2048, 18 layers, GQA 16/8
   heads, SwiGLU 5632, the 32k vocabulary) in bf16 mixed precision with FlashAttention-2 (when flash-attn is
   not installed it says so in one line and uses SDPA), first with ``strategy=auto``, then ``strategy=fsdp`` and
   ``strategy=deepspeed_stage_3`` on 1 device;
2. QLoRA dSFT and dDPO (``adapter=qlora``: the NF4 4-bit base, bf16 compute, LoRA r=16 on every decoder linear,
   gradient checkpointing) on the same shape, saved once as a random-init bf16 checkpoint (:func:`write_base`):
   the peak-memory figure of the one-GPU adapter path;
3. then ``pytest tests/gpu``.

Each case is one ``python train.py <overrides>`` process (the training entry itself, no second loop): the kit
only adds the :class:`StepMeter` callback through ``+callbacks.gpu_meter``. The meter records the wall time
between consecutive optimizer-step ends after ``warmup`` steps (so the DPO reference fill, model build and
compilation are outside the timing), the batch's ``num_tokens`` (the same unit as ``bench/``: non-pad tokens;
for DPO ``2·prompt + chosen + rejected``), and the process's peak GPU memory (``torch.cuda.max_memory_allocated``
at the end of training: weights, optimizer states, the reference fill and the steps).

Figures, printed and written to ``bench/results/gpu.json``:

- ``tokens_per_s``: ``num_tokens`` summed over the timed steps / their wall time.
- ``peak_gpu_mem_gb``: peak allocated memory of that process (GB = 1e9 bytes).
- ``mfu``: ``6 · N · tokens / time`` / the detected GPU's dense bf16 peak (:data:`PEAK_BF16_FLOPS`). ``N`` is
  every parameter that is a matmul weight (decoder layers and LM head; the input embedding, a lookup, is left
  out). **Attention FLOPs (QKᵀ and AV) are not counted**: the kit's rows pack short toy dialogues (~90 tokens,
  attention only within a dialogue), where that term is under 1 % of ``6·N``. The token count is the rows the
  model actually ran (``num_row_tokens`` for prefix-shared DPO rows, else ``num_tokens``). The QLoRA cases keep
  the same ``6·N`` so the rows compare; a frozen base skips the weight-gradient matmuls (about ``4·N`` of real
  work) and recomputes the forward under checkpointing (about ``+2·N``), so ``6·N`` is close to what runs.

Where no GPU is lent: ``--dry-run`` composes every case's config through Hydra (as ``train.py`` would), plans it
(:func:`zephyr.scale.plan.launch_plan`, unchecked: GPU presets on a CPU machine) and asserts the shapes: ~1B
parameters counted from the config and equal to the meta-device model's. ``--cpu-smoke`` runs the same code path
(``train.py`` processes with the meter) for 2 steps (1 warm-up, 1 timed) of dSFT and dDPO with a tiny model
(:data:`bench.common.TINY_MODEL_CONFIG`) on the CPU. ``--cases sft_auto,dpo_fsdp`` runs a subset.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from bench.common import REPO_ROOT, TINY_MODEL_CONFIG, peak_rss_mb

# ~1B Mistral (0.98 B parameters): TinyLlama-like width, Mistral's GQA ratio and vocabulary
ONE_B: dict[str, Any] = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 18,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
}
ONE_B_RANGE = (0.9e9, 1.2e9)
STRATEGIES = ("auto", "fsdp", "deepspeed_stage_3")
OBJECTIVES = ("sft", "dpo")

# dense bf16 tensor-core peaks (no 2:4 sparsity), FLOP/s; first pattern that matches torch's device name wins
PEAK_BF16_FLOPS: list[tuple[str, str, float]] = [
    (r"h200.*nvl", "H200 NVL", 835.5e12),
    (r"h200", "H200 SXM", 989.4e12),
    (r"h100.*pcie", "H100 PCIe", 756.0e12),
    (r"h100.*nvl", "H100 NVL", 835.5e12),
    (r"h100", "H100 SXM", 989.4e12),
    (r"gh200", "GH200", 989.4e12),
    (r"a100", "A100", 312.0e12),
    (r"a10g", "A10G", 125.0e12),
    (r"\ba10\b", "A10", 125.0e12),
    (r"l40s", "L40S", 362.05e12),
    (r"l40", "L40", 181.05e12),
    (r"\bl4\b", "L4", 121.0e12),
    (r"rtx 4090", "RTX 4090", 165.2e12),
    (r"rtx 3090", "RTX 3090", 71.0e12),
    (r"a6000", "RTX A6000", 154.8e12),
]


def peak_bf16_flops(device_name: str) -> tuple[str, float] | None:
    """``(GPU, dense bf16 FLOP/s)`` for a ``torch.cuda.get_device_name()`` string; ``None`` if not in the table."""
    name = device_name.lower()
    for pattern, label, flops in PEAK_BF16_FLOPS:
        if re.search(pattern, name):
            return label, flops
    return None


def matmul_parameters(model_config: dict[str, Any]) -> int:
    """``N`` of the ``6·N`` count: every parameter minus the input embedding (``V·h``, a lookup, not a matmul)."""
    from zephyr.scale.memory import count_parameters

    return count_parameters(model_config) - int(model_config["vocab_size"]) * int(model_config["hidden_size"])


@dataclass(frozen=True)
class Case:
    """One run of the kit: an objective under a strategy, full fine-tuning or an adapter on a saved base."""

    objective: str
    strategy: str
    adapter: str = "none"

    @property
    def name(self) -> str:
        """``sft_auto``, ``dpo_deepspeed_stage_3``, ``sft_qlora``, ..."""
        return f"{self.objective}_{self.strategy if self.adapter == 'none' else self.adapter}"


ADAPTERS = ("qlora",)
CASES = [Case(o, s) for s in STRATEGIES for o in OBJECTIVES]
CASES += [Case(o, "auto", a) for a in ADAPTERS for o in OBJECTIVES]


@dataclass(frozen=True)
class Mode:
    """Where the kit runs: the full GPU kit or the CPU smoke run of the same path."""

    hardware: str
    model: dict[str, Any]
    steps: int
    warmup: int
    sft: tuple[str, ...]  # data overrides per objective
    dpo: tuple[str, ...]


GPU = Mode(
    hardware="gpu1",
    model=ONE_B,
    steps=10,
    warmup=3,
    sft=("data.packing=true", "data.max_length=2048", "data.batch_size=4"),
    dpo=("data.max_length=1024", "data.batch_size=8", "objective.reference.batch_size=32"),
)
CPU = Mode(
    hardware="cpu",
    model={k: TINY_MODEL_CONFIG[k] for k in ONE_B},
    steps=1,
    warmup=1,
    sft=("data.packing=true", "data.max_length=256", "data.batch_size=2", "data.toy.n=200", "data.eval_size=16"),
    dpo=("data.max_length=256", "data.batch_size=2", "data.limit=64", "data.eval_size=16"),
)


def case_overrides(case: Case, mode: Mode, out: Path, *, attn: str, base: Path | None = None) -> list[str]:
    """The ``train.py`` overrides of one case: the model shape, data, strategy, the meter; no export or eval.

    An adapter case trains on the saved random-init checkpoint ``base`` (:func:`write_base`, the mode's shape):
    QLoRA quantizes a pretrained ``model.path``, never a random init.

    Raises:
        ValueError: an adapter case without ``base``.
    """
    if case.adapter == "none":
        model = [*(f"model.config.{k}={v}" for k, v in mode.model.items())]
    elif base is None:
        raise ValueError(f"{case.name}: an adapter case needs the saved base checkpoint (base=...)")
    else:
        model = [f"adapter={case.adapter}", f"model.path={base}"]
    ov = [
        f"hardware={mode.hardware}",
        f"strategy={case.strategy}",
        *model,
        f"model.attn_implementation={attn}",
        "logger=none",
        "callbacks.model_checkpoint=null",
        "trainer.enable_progress_bar=false",
        f"trainer.max_steps={mode.warmup + mode.steps}",
        "final_eval=false",
        "export=false",
        f"paths.output_dir={out}",
        "+callbacks.gpu_meter._target_=bench.gpu_check.StepMeter",
        f"+callbacks.gpu_meter.out={out / 'meter.json'}",
        f"+callbacks.gpu_meter.warmup={mode.warmup}",
    ]
    if case.objective == "dpo":
        ov += ["objective=dpo", f"objective.reference.cache_dir={out / 'ref_cache'}", *mode.dpo]
    else:
        ov += list(mode.sft)
    return ov


def write_base(mode: Mode, out: Path, *, device: str = "cpu") -> Path:
    """Save the adapter cases' base: a random-init model of the mode's shape (seed 0, bf16) with the embedded tokenizer.

    Built on ``device`` (on the GPU a ~1B init takes a second, not a minute of CPU time); returns the export dir.
    """
    import torch

    from zephyr.models.export import export_hf
    from zephyr.models.mistral import build_model
    from zephyr.tokenizer import load_tokenizer

    config = {**compose_case([]).model.config, **mode.model}
    with torch.device(device):
        model = build_model(config=config, init_seed=0, fused_mlp=False)
    return export_hf(model, load_tokenizer(), out, dtype="bfloat16")


def compose_case(overrides: list[str]):
    """The train config ``train.py`` would run with ``overrides`` (Hydra compose of ``conf/train.yaml``)."""
    from zephyr.conf import compose

    return compose("train", overrides)


class StepMeter(pl.Callback):
    """Lightning callback: per-step wall time and tokens after ``warmup`` steps, and the peak GPU memory.

    Writes ``out`` (JSON) at the end of training on rank 0: ``step_s``, ``tokens``, ``row_tokens``,
    ``peak_gpu_mem_bytes`` (``None`` on CPU) and ``peak_rss_mb``.
    """

    def __init__(self, out: str, warmup: int = 1) -> None:
        """Write the measurements to ``out``; drop the first ``warmup`` steps."""
        self.out, self.warmup = Path(out), int(warmup)
        self.step_s: list[float] = []
        self.tokens: list[int] = []
        self.row_tokens: list[int] = []
        self._last: float | None = None
        self._seen = 0

    def _sync(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: D102
        self._sync()
        self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        self._sync()
        now = time.perf_counter()
        self._seen += 1
        if self._seen > self.warmup:
            self.step_s.append(now - self._last)
            self.tokens.append(int(batch["num_tokens"]))
            self.row_tokens.append(int(batch.get("num_row_tokens", batch["num_tokens"])))
        self._last = now

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: D102
        import torch

        if not trainer.is_global_zero:
            return
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        record = {
            "step_s": self.step_s,
            "tokens": self.tokens,
            "row_tokens": self.row_tokens,
            "peak_gpu_mem_bytes": peak,
            "peak_rss_mb": peak_rss_mb(),
        }
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(record))


def summarize(meter: dict[str, Any], *, n_matmul: int, peak_flops: float | None) -> dict[str, Any]:
    """Tokens/s, s/step, peak memory and MFU of one case from its meter record.

    Raises:
        RuntimeError: no step was timed (the run ended within the warm-up).
    """
    total = sum(meter["step_s"])
    if not meter["step_s"] or total <= 0:
        raise RuntimeError("no timed step: the run ended within the warm-up steps")
    flops = 6.0 * n_matmul * sum(meter["row_tokens"]) / total
    peak = meter.get("peak_gpu_mem_bytes")
    return {
        "tokens_per_s": sum(meter["tokens"]) / total,
        "s_per_step": total / len(meter["step_s"]),
        "timed_steps": len(meter["step_s"]),
        "tokens_per_step": sum(meter["tokens"]) / len(meter["tokens"]),
        "peak_gpu_mem_gb": peak / 1e9 if peak is not None else None,
        "peak_rss_mb": meter.get("peak_rss_mb"),
        "model_flops_per_s": flops,
        "mfu": flops / peak_flops if peak_flops else None,
    }


def attention_kernel(on_gpu: bool) -> tuple[str, str]:
    """``(attn_implementation, the one line saying which kernel the kit uses and why)``."""
    if not on_gpu:
        return "sdpa", "attention: sdpa (CPU smoke run)"
    if importlib.util.find_spec("flash_attn") is None:
        return "sdpa", "attention: sdpa fallback (flash-attn is not installed: pip install flash-attn)"
    return "flash_attention_2", "attention: flash_attention_2"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for key, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_OFFLINE", "1"),
        ("HF_DATASETS_OFFLINE", "1"),
        ("WANDB_MODE", "disabled"),
        ("TOKENIZERS_PARALLELISM", "false"),
        ("HYDRA_FULL_ERROR", "1"),  # a failing case's last stderr line is then the exception, not Hydra's hint
    ):
        env.setdefault(key, value)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def run_case(
    case: Case,
    mode: Mode,
    work: Path,
    *,
    attn: str,
    n_matmul: int,
    peak_flops: float | None,
    timeout: float,
    base: Path | None = None,
):
    """One ``train.py`` process for ``case``; its summary, or ``{"error": ...}`` naming the failure."""
    out = work / case.name
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), *case_overrides(case, mode, out, attn=attn, base=base)]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s (time budget)", "wall_s": time.perf_counter() - started}
    wall = time.perf_counter() - started
    meter = out / "meter.json"
    if proc.returncode != 0 or not meter.is_file():
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["(no stderr)"]
        error = f"train.py exit {proc.returncode}: {lines[-1][:300]}"
        return {"error": error, "stderr_tail": lines[-30:], "wall_s": wall}
    try:
        return {**summarize(json.loads(meter.read_text()), n_matmul=n_matmul, peak_flops=peak_flops), "wall_s": wall}
    except RuntimeError as e:
        return {"error": str(e), "wall_s": wall}


def dry_run(mode: Mode = GPU) -> dict[str, Any]:
    """Compose and plan every case's config and check the model shape; no model is built (meta device only).

    Returns:
        ``{case name: {strategy, sharded, world_size, precision, n_params, ...}}``.

    Raises:
        AssertionError: a config that does not hold the kit's shape, strategy or precision.
    """
    from omegaconf import OmegaConf

    from zephyr.scale.memory import count_parameters, meta_model
    from zephyr.scale.plan import launch_plan

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="zephyr-gpu-dry-") as tmp:
        base = Path(tmp) / "base"
        for case in CASES:
            cfg = compose_case(case_overrides(case, mode, Path(tmp) / case.name, attn="flash_attention_2", base=base))
            mcfg = OmegaConf.to_container(cfg.model.config, resolve=True)
            if case.adapter != "none":  # the shape lives in the saved base (write_base): the mode's shape
                assert cfg.adapter.name == case.adapter and cfg.model.path == str(base), case.name
                mcfg |= mode.model
            n = count_parameters(mcfg)
            plan = launch_plan(cfg, check=False)
            assert plan.option == case.strategy and plan.world_size == 1, (case.name, plan)
            assert plan.precision == "bf16-mixed" and cfg.model.attn_implementation == "flash_attention_2", case.name
            assert ONE_B_RANGE[0] <= n <= ONE_B_RANGE[1], f"{case.name}: {n / 1e9:.2f} B params, not ~1B"
            assert cfg.callbacks.gpu_meter._target_ == "bench.gpu_check.StepMeter", case.name
            want = "DPOModule" if case.objective == "dpo" else "SFTModule"
            assert cfg.objective._target_.endswith(want), (case.name, cfg.objective._target_)
            out[case.name] = {
                "objective": case.objective,
                "strategy": plan.option,
                "adapter": case.adapter,
                "sharded": plan.sharded,
                "world_size": plan.world_size,
                "precision": plan.precision,
                "n_params": n,
                "n_matmul_params": matmul_parameters(mcfg),
                "micro_batch_size": plan.micro_batch_size,
                "max_length": int(cfg.data.max_length),
            }
        model = meta_model(mcfg)  # every case has the same shape: build it once
        built = sum(p.numel() for p in model.parameters())
        assert built == n, f"meta model has {built} parameters, the config count says {n}"
    return out


def _print_table(cases: dict[str, Any]) -> None:
    print(f"{'case':<24}{'tokens/s':>12}{'s/step':>9}{'peak GB':>9}{'MFU':>8}")
    for name, r in cases.items():
        if "error" in r:
            print(f"{name:<24} FAILED: {r['error']}")
            continue
        peak = f"{r['peak_gpu_mem_gb']:.2f}" if r["peak_gpu_mem_gb"] is not None else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(f"{name:<24}{r['tokens_per_s']:>12.0f}{r['s_per_step']:>9.3f}{peak:>9}{mfu:>8}")


def run_kit(mode: Mode, cases: list[Case], out: Path, *, budget_s: float, tests_reserve_s: float, run_tests: bool):
    """Run ``cases`` under ``mode`` (then ``pytest tests/gpu`` when ``run_tests``); write and return the results."""
    import torch

    started = time.perf_counter()
    on_gpu = mode.hardware != "cpu"
    attn, attn_line = attention_kernel(on_gpu)
    print(attn_line, flush=True)
    gpu_name = torch.cuda.get_device_name(0) if on_gpu else None
    detected = peak_bf16_flops(gpu_name) if gpu_name else None
    if on_gpu and detected is None:
        print(f"GPU {gpu_name!r} is not in the peak-FLOP/s table (bench/gpu_check.py): MFU not computed", flush=True)
    mcfg = {**compose_case([]).model.config, **mode.model}
    from zephyr.scale.memory import count_parameters

    n_matmul = matmul_parameters(mcfg)
    results: dict[str, Any] = {
        "mode": "gpu" if on_gpu else "cpu-smoke",
        "gpu": gpu_name,
        "gpu_table_entry": detected[0] if detected else None,
        "peak_bf16_flops": detected[1] if detected else None,
        "attn_implementation": attn,
        "model": {**mode.model, "n_params": count_parameters(mcfg), "n_matmul_params": n_matmul},
        "steps": {"warmup": mode.warmup, "timed": mode.steps},
        "mfu_formula": "6 * n_matmul_params * tokens / time / peak_bf16_flops (attention FLOPs not counted)",
        "cases": {},
    }
    with tempfile.TemporaryDirectory(prefix="zephyr-gpu-check-") as tmp:
        base = None
        for case in cases:
            left = budget_s - (time.perf_counter() - started) - (tests_reserve_s if run_tests else 0.0)
            if left < 20:
                results["cases"][case.name] = {"error": "skipped: the time budget is spent"}
                continue
            if case.adapter != "none" and base is None:
                base = write_base(mode, Path(tmp) / "base", device="cuda" if on_gpu else "cpu")
            print(f"running {case.name} ...", flush=True)
            results["cases"][case.name] = run_case(
                case,
                mode,
                Path(tmp),
                attn=attn,
                n_matmul=n_matmul,
                peak_flops=results["peak_bf16_flops"],
                timeout=left,
                base=base,
            )
            _write(out, results)  # after every case: a kit stopped from outside keeps what it measured
    _print_table(results["cases"])
    if run_tests:
        left = max(30.0, budget_s - (time.perf_counter() - started))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-rfEs", "tests/gpu"],
                cwd=REPO_ROOT,
                env=_env(),
                capture_output=True,
                text=True,
                timeout=left,
            )
            lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
            results["tests_gpu"] = {"exit": proc.returncode, "summary": lines[-1] if lines else ""}
            if proc.returncode != 0:
                results["tests_gpu"]["output_tail"] = lines[-60:]
        except subprocess.TimeoutExpired:
            results["tests_gpu"] = {"exit": None, "summary": f"timed out after {left:.0f} s (time budget)"}
        print(f"pytest tests/gpu: {results['tests_gpu']['summary']}", flush=True)
    results["elapsed_s"] = time.perf_counter() - started
    _write(out, results)
    print(f"wrote {out}", flush=True)
    return results


def _write(out: Path, results: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.gpu_check [--dry-run | --cpu-smoke] [--out FILE] [--budget-s S]``."""
    ap = argparse.ArgumentParser(prog="bench/gpu_check.py", description=__doc__.split("\n\n")[0])
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--dry-run", action="store_true", help="compose and check every case's config; train nothing")
    what.add_argument("--cpu-smoke", action="store_true", help="2 steps of dSFT and dDPO, tiny model, on the CPU")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default bench/results/gpu.json)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget of the whole kit (s)")
    ap.add_argument("--no-tests", action="store_true", help="skip pytest tests/gpu at the end")
    ap.add_argument("--cases", default=None, help=f"comma-separated subset of {', '.join(c.name for c in CASES)}")
    args = ap.parse_args(argv)
    chosen = CASES
    if args.cases:
        names = {c.name: c for c in CASES}
        unknown = [n for n in args.cases.split(",") if n not in names]
        if unknown:
            print(
                f"bench/gpu_check.py: error: --cases {','.join(unknown)}: not a case ({', '.join(names)})",
                file=sys.stderr,
            )
            return 2
        chosen = [names[n] for n in args.cases.split(",")]
    if args.dry_run:
        checked = dry_run()
        for name, c in checked.items():
            print(
                f"{name:<24} strategy={c['strategy']:<18} sharded={str(c['sharded']):<5} "
                f"{c['n_params'] / 1e9:.3f} B params, micro-batch {c['micro_batch_size']} x {c['max_length']}"
            )
        print(f"dry run: {len(checked)} configs composed and checked")
        return 0
    if args.cpu_smoke:
        cases = [c for c in chosen if c.strategy == "auto"]  # DeepSpeed is CUDA-only; FSDP is checked in tests
        out = args.out or REPO_ROOT / "bench" / "results" / "gpu_cpu_smoke.json"
        res = run_kit(CPU, cases, out, budget_s=args.budget_s, tests_reserve_s=0.0, run_tests=False)
    else:
        import torch

        if not torch.cuda.is_available():
            print(
                "bench/gpu_check.py: error: no CUDA device here; use --dry-run or --cpu-smoke on this machine",
                file=sys.stderr,
            )
            return 2
        out = args.out or REPO_ROOT / "bench" / "results" / "gpu.json"
        res = run_kit(GPU, chosen, out, budget_s=args.budget_s, tests_reserve_s=150.0, run_tests=not args.no_tests)
    failed = [n for n, r in res["cases"].items() if "error" in r]
    tests_ok = res.get("tests_gpu", {"exit": 0})["exit"] == 0
    return 0 if not failed and tests_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
