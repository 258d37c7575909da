"""dSFT step benchmark: zephyr's SFTModule under a Lightning Trainer vs ``trl.SFTTrainer``, same packed data.

Both sides get the same tokenized toy-world dialogues (assistant-only labels, ``zephyr.data.sft``) and pack
them into rows of ``max_length`` tokens, each with its own best-fit packer (zephyr ``pack_best_fit``, TRL
``packing_strategy="bfd"``), padding-free with position ids restarting per conversation. fp32 weights, AdamW,
constant learning rate, no activation checkpointing, no logging, saving or eval on either side. With
``p["lora"]`` both sides train the same LoRA adapters (zephyr ``apply_adapter``, TRL ``peft_config=`` with the
same ``LoraConfig``). Each step's model FLOPs (:func:`bench.flops.sft_step_flops`) come from the conversation
lengths of its collated rows, on each side from its own collator.
"""

from __future__ import annotations

from typing import Any

from bench.common import (
    LEARNING_RATE,
    SEED,
    StepClock,
    TokenQueue,
    build_policy,
    flop_model,
    peak_rss_mb,
    setup_process,
    trl_peft_config,
    trl_training_args,
    zephyr_policy,
    zephyr_trainer,
)


def _num_dialogues(p: dict[str, Any]) -> int:
    # toy dialogues average ~90 tokens: enough for every step's packed rows with a margin
    return max(64, int(p["batch_size"] * p["max_length"] * (p["warmup"] + p["steps"]) / 70) + 32)


def run_zephyr(p: dict[str, Any]) -> dict[str, Any]:
    """Train ``warmup + steps`` optimizer steps with :class:`zephyr.modules.sft.SFTModule` and time them."""
    setup_process(p["threads"])
    from functools import partial

    import pytorch_lightning as pl
    import torch

    from bench.flops import sft_step_flops
    from zephyr.data.sft import SFTDataModule
    from zephyr.modules.sft import SFTModule
    from zephyr.tokenizer import load_tokenizer
    from zephyr.toy.teacher import sft_dialogues

    fm, queue = flop_model(p), TokenQueue()

    class CountingSFTData(SFTDataModule):
        @property
        def collate(self):
            inner = super().collate

            def counting(items):  # each item is one row: its conversations' (input_ids, labels)
                queue.push(sft_step_flops(fm, [len(ids) for row in items for ids, _ in row]))
                return inner(items)

            return counting

    tok = load_tokenizer()
    dm = CountingSFTData(
        tok,
        batch_size=p["batch_size"],
        max_length=p["max_length"],
        packing=p.get("packing", True),
        seed=SEED,
        on_overlong="skip",
        toy=partial(sft_dialogues, _num_dialogues(p), SEED),
    )
    dm.setup("fit")
    model = zephyr_policy(p)
    module = SFTModule(
        model,
        partial(torch.optim.AdamW, lr=LEARNING_RATE, weight_decay=0.0),
        {"name": "constant", "warmup_ratio": 0.0},
        chunked_loss=p.get("chunked_loss", True),
    )
    clock = StepClock()

    class Clock(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            clock.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.step_end(int(batch["num_tokens"]), queue.pop())

    trainer = zephyr_trainer(p, [Clock()])
    trainer.fit(module, datamodule=dm)
    return {**clock.summary(p["warmup"]), "peak_rss_mb": peak_rss_mb()}


def run_trl(p: dict[str, Any]) -> dict[str, Any]:
    """Train ``warmup + steps`` steps with ``trl.SFTTrainer`` on the same tokenized dialogues and time them."""
    setup_process(p["threads"])
    import tempfile

    import datasets
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from bench.flops import sft_step_flops
    from zephyr.tokenizer import load_tokenizer

    tok = load_tokenizer()
    fm = flop_model(p)
    examples = _examples(tok, p)
    ds = datasets.Dataset.from_dict(
        {"input_ids": [ex.input_ids for ex in examples], "labels": [ex.labels for ex in examples]}
    )
    model = build_policy(p["model_config"])
    clock, queue = StepClock(), TokenQueue()

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.start()

        def on_step_end(self, args, state, control, **kwargs):
            clock.step_end(*queue.pop())

    with tempfile.TemporaryDirectory(prefix="zephyr-bench-trl-") as out:
        cfg = SFTConfig(**trl_training_args(p, out), packing=True, packing_strategy="bfd", dataset_num_proc=None)
        trainer = SFTTrainer(
            model=model,
            args=cfg,
            train_dataset=ds,
            processing_class=tok,
            callbacks=[Clock()],
            peft_config=trl_peft_config(model, p),
        )
        collate = trainer.data_collator

        def counting_collator(batch):  # bfd packing: each example is one row with its conversations' seq_lengths
            lengths = [int(n) for ex in batch for n in (ex.get("seq_lengths") or [len(ex["input_ids"])])]
            queue.push((sum(len(ex["input_ids"]) for ex in batch), sft_step_flops(fm, lengths)))
            return collate(batch)

        trainer.data_collator = counting_collator
        trainer.train()
    return {**clock.summary(p["warmup"]), "peak_rss_mb": peak_rss_mb()}


def _examples(tok, p: dict[str, Any]):
    from bench.common import sft_examples

    return sft_examples(tok, _num_dialogues(p), SEED, p["max_length"])
