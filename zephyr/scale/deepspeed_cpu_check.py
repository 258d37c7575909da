"""Hand the DeepSpeed config that ``strategy=deepspeed_stage_3`` builds to the real engine, on CPU.

Lightning refuses its DeepSpeed strategy without CUDA, but DeepSpeed itself runs on CPU (gloo) under a
launcher. This script checks the generated config end to end, the way accelerate uses it in the recipe:

1. compose the train config (``strategy=deepspeed_stage_3`` and the tiny model unless overridden);
2. build the DeepSpeed dict with :func:`zephyr.scale.strategies.deepspeed_config` (the same call Lightning's
   path makes, plus ``gradient_accumulation_steps`` / ``train_batch_size`` that Lightning would add);
3. zero3 init: rank 0 writes a random-init checkpoint, every rank loads it with ``from_pretrained`` while a
   ``HfDeepSpeedConfig`` is alive, so the weights arrive already partitioned (``deepspeed.zero.Init``);
4. ``deepspeed.initialize`` with the objective's AdamW, then a few optimizer steps of dSFT on this rank's share
   of the toy batches (the same data module and rank split as ``train.py``) with the chunked loss of
   ``train.py`` (``objective.chunked_loss``: the decoder body, then the vocabulary projection chunk by chunk
   through the ``lm_head`` module, whose ZeRO-3 hook gathers the partitioned weight); on the first batch the
   full-logits loss of the engine's own forward is computed too and the difference reported;
5. gather the 16-bit weights on rank 0 (``stage3_gather_16bit_weights_on_model_save``) and write a JSON report.

Run (first run JIT-compiles a small DeepSpeed comm extension, 30-60 s)::

    torchrun --nproc_per_node 2 -m zephyr.scale.deepspeed_cpu_check --steps 3 --report runs/ds_check.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

TINY = [
    "model.config.hidden_size=64",
    "model.config.intermediate_size=128",
    "model.config.num_hidden_layers=2",
    "data.toy.n=200",
    "data.eval_size=0",
    "data.batch_size=2",
    "trainer.global_batch_size=8",
    "logger=none",
]


def compose_config(overrides: list[str]):
    """The train config with ``strategy=deepspeed_stage_3``, the tiny-model overrides, then ``overrides``."""
    from zephyr.conf import compose

    return compose("train", ["strategy=deepspeed_stage_3", *TINY, *overrides])


def run(steps: int, overrides: list[str], precision: str) -> dict[str, Any]:
    """Train ``steps`` optimizer steps under DeepSpeed on this rank; return the report (complete on rank 0)."""
    import deepspeed
    import torch.distributed as dist
    from hydra.utils import instantiate
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    from zephyr.models.mistral import build_model
    from zephyr.modules.base import lm_parts
    from zephyr.objectives.sft import sft_loss, sft_loss_from_hidden
    from zephyr.scale.batch import plan_batches
    from zephyr.scale.memory import count_parameters
    from zephyr.scale.strategies import deepspeed_config
    from zephyr.tokenizer import load_tokenizer

    cfg = compose_config(overrides)
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    plan = plan_batches(
        global_batch_size=cfg.trainer.get("global_batch_size"),
        micro_batch_size=int(cfg.data.batch_size),
        world_size=world,
    )
    ds_config = deepspeed_config(
        cfg.strategy,
        precision=precision,
        hidden_size=int(cfg.model.config.hidden_size),
        micro_batch_size=plan.micro_batch_size,
        gradient_clip_val=cfg.trainer.get("gradient_clip_val"),
        accumulate=plan.accumulate,
        world_size=world,
    )
    torch.manual_seed(int(cfg.seed))

    # zero3 init: one checkpoint on disk, loaded partitioned by every rank
    shared = [tempfile.mkdtemp(prefix="zephyr_ds_init_") if rank == 0 else None]
    dist.broadcast_object_list(shared, src=0)
    init_dir = shared[0]
    if rank == 0:
        mcfg = dict(instantiate(cfg.model.config, _convert_="all"))
        build_model(config=mcfg, init_seed=int(cfg.seed)).save_pretrained(init_dir)
    dist.barrier()
    zero3_init = bool(cfg.strategy.get("zero3_init", False)) and int(cfg.strategy.stage) == 3
    hf_ds = HfDeepSpeedConfig(ds_config) if zero3_init else None  # must stay alive while the model loads
    model = AutoModelForCausalLM.from_pretrained(init_dir, attn_implementation="sdpa")
    local_numel = sum(p.numel() for p in model.parameters())
    full_numel = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())

    tokenizer = load_tokenizer()
    datamodule = instantiate(cfg.data, tokenizer=tokenizer, _convert_="all")
    datamodule.setup("fit")
    loader = datamodule.train_loader(rank, world)
    optimizer = instantiate(cfg.objective.optimizer)(model.parameters())
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)

    losses: list[float] = []
    chunked_vs_full: float | None = None
    body, head = lm_parts(engine.module)
    batches = iter(loader)
    for _ in range(steps):
        step_loss = torch.zeros(())
        for _ in range(plan.accumulate):
            batch = next(batches)
            inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
            hidden = body(**inputs).last_hidden_state
            loss = sft_loss_from_hidden(hidden, head, batch["labels"], chunk_size=int(cfg.objective.loss_chunk_size))
            loss = loss.loss
            if chunked_vs_full is None:
                with torch.no_grad():
                    full = sft_loss(engine(**inputs).logits.float(), batch["labels"]).loss
                chunked_vs_full = abs(float(full) - float(loss.detach()))
            engine.backward(loss)
            engine.step()  # DeepSpeed steps the optimizer only at accumulation boundaries
            step_loss += loss.detach().float() / plan.accumulate
        dist.all_reduce(step_loss)
        losses.append(float(step_loss) / world)

    state_dict = engine._zero3_consolidated_16bit_state_dict() if zero3_init else None
    report: dict[str, Any] = {
        "world_size": world,
        "plan": plan.describe(),
        "ds_config": ds_config,
        "zero3_init_partitioned": zero3_init and local_numel < full_numel,
        "local_numel_after_init": local_numel,
        "full_numel": full_numel,
        "expected_numel": count_parameters(dict(instantiate(cfg.model.config, _convert_="all"))),
        "losses": losses,
        "chunked_loss": True,
        "chunked_vs_full_loss_abs_diff": chunked_vs_full,
        "optimizer_steps": int(engine.global_steps),
    }
    if rank == 0 and state_dict is not None:
        report["gathered"] = {
            "num_tensors": len(state_dict),
            "numel": sum(t.numel() for t in state_dict.values()),
            "dtypes": sorted({str(t.dtype) for t in state_dict.values()}),
        }
    del hf_ds
    dist.barrier()
    if rank == 0:
        import shutil

        shutil.rmtree(init_dir, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    """Parse ``--steps``, ``--report``, ``--precision`` and Hydra overrides; run; write the report on rank 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps")
    parser.add_argument("--report", type=Path, default=None, help="JSON report path (rank 0)")
    parser.add_argument("--precision", default="bf16-mixed", help="bf16-mixed (the recipe) or 32-true")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml")
    args = parser.parse_args(argv)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        print(
            "deepspeed_cpu_check: run under torchrun, e.g. `torchrun --nproc_per_node 2 -m "
            "zephyr.scale.deepspeed_cpu_check`",
            file=sys.stderr,
        )
        return 2
    report = run(args.steps, list(args.overrides), args.precision)
    if int(os.environ["RANK"]) == 0:
        text = json.dumps(report, indent=2, sort_keys=True)
        if args.report:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            args.report.write_text(text + "\n")
        print(text)
        if not all(math.isfinite(x) for x in report["losses"]):
            print("deepspeed_cpu_check: non-finite loss", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
