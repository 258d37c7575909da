"""dDPO step benchmark: zephyr's DPOModule under a Lightning Trainer vs ``trl.DPOTrainer``, same pairs.

Both sides train on the same toy-world pairs (:func:`bench.common.preference_rows`: prompt ~115 tokens,
completions ~100, as in the environment note's TRL measurement), fp32, AdamW at a constant learning rate, beta
0.1, sigmoid loss, no activation checkpointing, no logging, saving or eval.

TRL keeps a live reference model (a second copy of the initial weights) and runs it on every step, as the
handbook does. Zephyr's default is the reference log-prob cache: one no-grad pass over the data before
training (:meth:`zephyr.modules.reference.Reference.prepare`). That pass is timed and charged to the
measured steps pro rata (``ref_fill_s × measured pairs / all pairs``), so ``tokens_per_s`` is the cost of a
single run including its reference; ``cached_tokens_per_s`` is the rate once the cache is warm (every later run
and sweep point on the same data and weights). Building the reference's copy of the weights is set-up on both
sides (TRL builds its live copy when the trainer is created, outside its timed steps), so ``ref_fill_s`` counts
the reference forwards only and the build is reported apart as ``ref_build_s``.

With ``p["lora"]`` both sides train the same LoRA adapters and both references are the base with the adapters
off (zephyr's :class:`~zephyr.modules.reference.Reference` of a PEFT policy; TRL with ``peft_config=`` and no
``ref_model``). Pair lengths come from ``p["prompt_tokens"]`` / ``p["completion_tokens"]`` (default 115 / 100).
Each step's model FLOPs are :func:`bench.flops.dpo_step_flops` of its pairs' lengths, so the fill pass is
not counted twice (its FLOPs are the reference term of the steps).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench.common import (
    LEARNING_RATE,
    SEED,
    StepClock,
    TokenQueue,
    build_policy,
    flop_model,
    pair_tokens,
    peak_rss_mb,
    preference_rows,
    setup_process,
    trl_peft_config,
    trl_preference_row,
    trl_training_args,
    zephyr_policy,
    zephyr_trainer,
)

PROMPT_TOKENS, COMPLETION_TOKENS = 115, 100  # the tiny shape's pair lengths (--shape realistic: 150 / 250)


def pair_lengths(p: dict[str, Any]) -> tuple[int, int]:
    """``(prompt_tokens, completion_tokens)`` targets of the run's pairs."""
    return int(p.get("prompt_tokens", PROMPT_TOKENS)), int(p.get("completion_tokens", COMPLETION_TOKENS))


def bench_rows(tok, p: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's preference pairs (:func:`bench.common.preference_rows` at the run's lengths)."""
    return preference_rows(tok, num_pairs(p), SEED, *pair_lengths(p))


class LengthGroupedBatchSampler:
    """Batches of similar total length: the seeded order cut into groups of ``group`` batches, each sorted by length.

    Wraps a :class:`zephyr.data.collate.ResumableBatchSampler` (same seed, epochs and resume state) and only
    reorders within each group, so every item is still drawn once per epoch (the ``length_grouped`` ablation).
    """

    def __init__(self, inner, lengths: list[int], group: int = 8):
        self.inner, self.lengths, self.group = inner, lengths, group

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        batches = list(iter(self.inner))
        for g in range(0, len(batches), self.group):
            chunk = [i for b in batches[g : g + self.group] for i in b]
            chunk.sort(key=lambda i: -self.lengths[i])
            sizes = [len(b) for b in batches[g : g + self.group]]
            at = 0
            for n in sizes:
                yield chunk[at : at + n]
                at += n


def num_pairs(p: dict[str, Any]) -> int:
    """Exactly one epoch of pairs for the run: ``(warmup + steps) × batch_size``."""
    return (p["warmup"] + p["steps"]) * p["batch_size"]


def write_pairs(tok, p: dict[str, Any], folder: Path) -> Path:
    """Write the benchmark pairs as jsonl (the zephyr side reads them through its real data module)."""
    rows = bench_rows(tok, p)
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def zephyr_dpo_fit(
    tok, p: dict[str, Any], data_path: Path, cache_dir: Path, *, beta: float, clock: StepClock | None
) -> dict[str, float]:
    """Build the data module, the policy and a DPOModule, fill or load the reference cache, fit.

    Returns:
        ``fill_s``: the reference forwards of the fill (0-ish on a cache hit); ``build_s``: building the
        reference's copy of the weights for the fill (0 when none was built).
    """
    from functools import partial

    import pytorch_lightning as pl
    import torch

    from bench.flops import dpo_step_flops
    from zephyr.data.collate import ResumableDataLoader
    from zephyr.data.preference import PreferenceDataModule
    from zephyr.modules.dpo import DPOModule
    from zephyr.modules.reference import Reference

    class BenchPreferenceData(PreferenceDataModule):
        def train_loader(self, rank: int = 0, world_size: int = 1):
            loader = super().train_loader(rank, world_size)
            if not p.get("length_grouped"):
                return loader
            lengths = [len(it["prompt"]) + len(it["chosen"]) + len(it["rejected"]) for it in self.train_items]
            return ResumableDataLoader(
                self.train_items,
                LengthGroupedBatchSampler(loader.batch_sampler, lengths),
                progress=self._progress,
                collate_fn=self.collate,
                num_workers=0,
            )

    dm = BenchPreferenceData(
        tok,
        path=str(data_path),
        batch_size=p["batch_size"],
        max_length=p["max_length"],
        max_prompt_length=p["max_length"] // 2,
        seed=SEED,
        layout=p.get("data_layout", "prefix_shared"),
    )
    dm.setup("fit")
    fm = flop_model(p)
    lengths = [(len(it["prompt"]), len(it["chosen"]), len(it["rejected"])) for it in dm.train_items]
    model = zephyr_policy(p)
    build_s: list[float] = []

    def reference_copy():
        t0 = time.perf_counter()
        copy = build_policy(p["model_config"])
        build_s.append(time.perf_counter() - t0)
        return copy

    module = DPOModule(
        model,
        partial(torch.optim.AdamW, lr=LEARNING_RATE, weight_decay=0.0),
        {"name": "constant", "warmup_ratio": 0.0},
        beta=beta,
        loss_type="sigmoid",
        reference=partial(
            Reference,
            mode=p.get("reference", "cache"),
            cache_dir=str(cache_dir),
            batch_size=16,
            model=reference_copy,  # random init: weights keyed by the state dict
        ),
        chunked_loss=p.get("chunked_loss", True),
    )
    started = time.perf_counter()
    module.prepare_reference(dm)  # cache mode: fills (or loads) the table; live mode: builds the frozen copy
    fill_s = time.perf_counter() - started - sum(build_s)

    class Clock(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            if clock is not None:
                clock.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if clock is not None:
                flops = dpo_step_flops(fm, [lengths[int(i)] for i in batch["index"]])
                clock.step_end(int(batch["num_tokens"]), flops)

    trainer = zephyr_trainer(p, [Clock()])
    trainer.fit(module, datamodule=dm)
    return {"fill_s": fill_s, "build_s": sum(build_s)}


def run_zephyr(p: dict[str, Any]) -> dict[str, Any]:
    """Time ``steps`` DPO optimizer steps (after ``warmup``) of zephyr's DPOModule (or a bare loop, see below)."""
    if "layout" in p:
        return run_zephyr_layout(p)
    setup_process(p["threads"])
    import tempfile

    from zephyr.tokenizer import load_tokenizer

    tok = load_tokenizer()
    clock = StepClock()
    with tempfile.TemporaryDirectory(prefix="zephyr-bench-dpo-") as tmp:
        data = write_pairs(tok, p, Path(tmp))
        fit = zephyr_dpo_fit(tok, p, data, Path(tmp) / "ref_cache", beta=0.1, clock=clock)
    fill_s = fit["fill_s"]
    s = clock.summary(p["warmup"])
    measured_time = sum(s["step_s"])
    tokens = s["tokens_per_step"] * s["steps"]
    fill_share = fill_s * s["steps"] / (p["warmup"] + p["steps"]) if p.get("reference", "cache") == "cache" else 0.0
    return {
        **s,
        "cached_tokens_per_s": s["tokens_per_s"],
        "tokens_per_s": tokens / (measured_time + fill_share),
        "flops_per_s": s["flops_per_step"] * s["steps"] / (measured_time + fill_share),
        "ref_fill_s": fill_s,
        "ref_build_s": fit["build_s"],
        "peak_rss_mb": peak_rss_mb(),
    }


def run_zephyr_layout(p: dict[str, Any]) -> dict[str, Any]:
    """A bare DPO loop (no Lightning) in one batch layout, to measure what prefix sharing gains.

    ``p["layout"]``: ``concat`` (:func:`zephyr.data.collate.collate_pairs`, 2B rows, the DPOModule's
    layout) or ``prefix`` (:func:`zephyr.data.collate.collate_pairs_prefix_shared`, B rows). Each step:
    collate, policy forward, chunked completion log-probs, sigmoid DPO loss against reference log-probs computed
    beforehand (untimed, as with the cache), backward, AdamW step. Same pairs, same order for both layouts.
    """
    setup_process(p["threads"])
    import torch

    from zephyr.data.collate import collate_pairs, collate_pairs_prefix_shared
    from zephyr.data.preference import tokenize_pair
    from zephyr.modules.pair_forward import pair_logps
    from zephyr.objectives.dpo import preference_loss
    from zephyr.tokenizer import load_tokenizer

    if p["layout"] not in ("concat", "prefix"):
        raise ValueError(f"bench layout {p['layout']!r} must be 'concat' or 'prefix'")
    from bench.flops import dpo_step_flops

    tok = load_tokenizer()
    fm = flop_model(p)
    rows = bench_rows(tok, p)
    items = []
    for i, row in enumerate(rows):
        ex = tokenize_pair(tok, row, max_length=p["max_length"], max_prompt_length=p["max_length"] // 2)
        items.append(
            {
                "prompt": ex["prompt_input_ids"],
                "chosen": ex["chosen_input_ids"],
                "rejected": ex["rejected_input_ids"],
                "index": i,
            }
        )
    model = zephyr_policy(p)
    bs = p["batch_size"]
    batches = [items[k : k + bs] for k in range(0, len(items), bs)]

    def logps(group):
        if p["layout"] == "concat":
            batch = collate_pairs(group, pad_id=tok.pad_token_id)
            return pair_logps(model, batch).logps, int(batch["num_tokens"])
        batch = collate_pairs_prefix_shared(group, pad_id=tok.pad_token_id)
        return pair_logps(model, batch).logps, int(batch["num_pair_tokens"])

    with torch.no_grad():
        refs = [logps(g)[0] for g in batches]
    opt = torch.optim.AdamW([w for w in model.parameters() if w.requires_grad], lr=LEARNING_RATE, weight_decay=0.0)
    clock = StepClock()
    clock.start()
    for group, ref in zip(batches, refs):
        b = len(group)
        policy, tokens = logps(group)
        losses, _, _ = preference_loss(policy[:b], policy[b:], ref[:b], ref[b:], beta=0.1)
        losses.mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        clock.step_end(
            tokens, dpo_step_flops(fm, [(len(g["prompt"]), len(g["chosen"]), len(g["rejected"])) for g in group])
        )
    s = clock.summary(p["warmup"])
    return {**s, "cached_tokens_per_s": s["tokens_per_s"], "ref_fill_s": 0.0, "peak_rss_mb": peak_rss_mb()}


def trl_dpo_train(tok, p: dict[str, Any], rows: list[dict[str, Any]], *, beta: float, clock: StepClock | None):
    """One ``trl.DPOTrainer`` run of ``warmup + steps`` steps with a live reference copy."""
    import tempfile

    import datasets
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from bench.flops import dpo_step_flops

    queue, fm = TokenQueue(), flop_model(p)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if clock is not None:
                clock.start()

        def on_step_end(self, args, state, control, **kwargs):
            n, flops = queue.pop()
            if clock is not None:
                clock.step_end(n, flops)

    ds = datasets.Dataset.from_list([trl_preference_row(r) for r in rows])
    model = build_policy(p["model_config"])
    # the reference: a second copy of the same initial weights; with LoRA, TRL's own base-with-adapters-off
    ref = None if p.get("lora") else build_policy(p["model_config"])
    with tempfile.TemporaryDirectory(prefix="zephyr-bench-trl-") as out:
        cfg = DPOConfig(**trl_training_args(p, out), beta=beta, loss_type=["sigmoid"])
        trainer = DPOTrainer(
            model=model,
            ref_model=ref,
            args=cfg,
            train_dataset=ds,
            processing_class=tok,
            callbacks=[Clock()],
            peft_config=trl_peft_config(model, p),
        )
        collate = trainer.data_collator

        def counting_collator(batch):
            lengths = [(len(ex["prompt_ids"]), len(ex["chosen_ids"]), len(ex["rejected_ids"])) for ex in batch]
            queue.push((sum(2 * a + b + c for a, b, c in lengths), dpo_step_flops(fm, lengths)))
            return collate(batch)

        trainer.data_collator = counting_collator
        trainer.train()


def run_trl(p: dict[str, Any]) -> dict[str, Any]:
    """Time ``steps`` DPO steps (after ``warmup``) of ``trl.DPOTrainer``."""
    setup_process(p["threads"])
    from zephyr.tokenizer import load_tokenizer

    tok = load_tokenizer()
    rows = bench_rows(tok, p)
    clock = StepClock()
    trl_dpo_train(tok, p, rows, beta=0.1, clock=clock)
    return {**clock.summary(p["warmup"]), "peak_rss_mb": peak_rss_mb()}


__all__ = [
    "LengthGroupedBatchSampler",
    "bench_rows",
    "pair_lengths",
    "num_pairs",
    "pair_tokens",
    "run_trl",
    "run_zephyr",
    "trl_dpo_train",
    "write_pairs",
    "zephyr_dpo_fit",
]
