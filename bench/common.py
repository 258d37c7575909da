"""What every benchmark shares: the model shape, the data, step timing, peak RSS and the subprocess protocol.

Each measurement runs in a fresh ``python -m bench.worker`` process so that peak RSS (``ru_maxrss`` of that
process) belongs to one trainer only and import caches, allocator state or threads never carry over. Inside a
worker a :class:`StepClock` records the wall time between consecutive optimizer-step ends (so data loading and
collation are inside a step, on both sides) and the non-pad tokens of each step; the first ``warmup`` steps are
dropped. The parent takes the median over repeats.

Token counts are the same unit for both frameworks:

* SFT: non-pad tokens of the packed rows (every token of every conversation in the batch).
* DPO: non-pad tokens of ``prompt + chosen`` plus ``prompt + rejected`` of each pair (the prompt counted twice,
  as in the concatenated ``(2B, T)`` layout), whatever layout the trainer uses internally.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

# The environment note's tiny Mistral (19.2 M parameters, 16.4 M of them the untied 32k embeddings and head).
MODEL_CONFIG: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 256,
    "intermediate_size": 704,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "sliding_window": 4096,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1.0e-5,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

# A much smaller shape for the smoke test (same vocabulary, so the real tokenizer still fits).
TINY_MODEL_CONFIG: dict[str, Any] = {
    **MODEL_CONFIG,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}

# ``--shape realistic``: a random-init Llama with SmolLM2-135M's published dims (hidden 576, intermediate 1536,
# 9 heads / 3 KV heads, 49,152 tied vocabulary) at 20 of its 30 layers, so the whole run fits a 2-core CPU;
# the vocabulary head is then 28.6 % of the linear-layer matmul FLOPs (21.1 % at 30 layers, 75 % for MODEL_CONFIG).
REALISTIC_MODEL_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 20,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "rms_norm_eps": 1.0e-5,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

# per shape: the model and the work (lengths, steps) that ``bench.run --shape`` defaults to
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {
        "model_config": MODEL_CONFIG,
        "max_length": 512,
        "prompt_tokens": 115,
        "completion_tokens": 100,
        "steps": 5,
        "repeats": 3,
        "results": "latest.json",
    },
    "realistic": {
        "model_config": REALISTIC_MODEL_CONFIG,
        "max_length": 1024,
        "prompt_tokens": 150,
        "completion_tokens": 250,
        "steps": 2,
        "repeats": 1,  # one zephyr + TRL pair is ~5 min per kind on 2 cores: 3 repeats would take an hour
        "results": "latest_realistic.json",
    },
}

# the LoRA rows (``sft_lora``, ``dpo_lora``): conf/adapter/lora.yaml's values on every decoder linear, both sides
LORA: dict[str, Any] = {
    "name": "lora",
    "r": 16,
    "alpha": 16,
    "dropout": 0.05,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "modules_to_save": None,
}

SEED = 1234
LEARNING_RATE = 1.0e-5


def trl_training_args(p: dict[str, Any], out: str) -> dict[str, Any]:
    """The ``TrainingArguments`` both TRL trainers share: fp32, no checkpointing, no logging/saving/eval, CPU."""
    return dict(
        output_dir=out,
        max_steps=p["warmup"] + p["steps"],
        per_device_train_batch_size=p["batch_size"],
        gradient_accumulation_steps=1,
        max_length=p["max_length"],
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        bf16=False,
        fp16=False,
        activation_checkpointing=False,
        use_cpu=True,
        seed=SEED,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )


def zephyr_trainer(p: dict[str, Any], callbacks: list[Any]):
    """The Lightning ``Trainer`` both zephyr sides run: CPU, ``warmup + steps`` steps, no logging/saving/eval."""
    import pytorch_lightning as pl

    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision=p.get("precision", "32-true"),
        max_steps=p["warmup"] + p["steps"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )


def setup_process(threads: int, seed: int = SEED) -> None:
    """Fix torch's thread count and every seed for this worker."""
    import random

    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    random.seed(seed)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_policy(
    model_config: dict[str, Any],
    seed: int = SEED,
    *,
    gradient_checkpointing: bool = False,
    fused_mlp: bool = False,
    fused_rmsnorm: bool = False,
    segment_attention: bool = False,
):
    """The random-init model (tiny Mistral or ``model_type``'s family) in fp32 with SDPA attention, same per seed.

    ``fused_mlp``, ``fused_rmsnorm`` and ``segment_attention`` are off by default: this is also TRL's model, which
    is the family's own code.
    """
    from zephyr.models.mistral import build_model

    return build_model(
        config=dict(model_config),
        dtype="float32",
        attn_implementation="sdpa",
        init_seed=seed,
        gradient_checkpointing=gradient_checkpointing,
        fused_mlp=fused_mlp,
        fused_rmsnorm=fused_rmsnorm,
        segment_attention=segment_attention,
    )


def zephyr_policy(p: dict[str, Any]):
    """zephyr's side of a worker: :func:`build_policy`, then the run's LoRA adapters and ablation switches.

    ``p["lora"]``: adapters via :func:`zephyr.models.adapters.apply_adapter`; ``p["compile"]``: ``torch.compile``
    of each decoder layer in place (what ``trainer.compile=true`` does); ``p["activation_checkpointing"]``;
    ``p["fused_mlp"]`` (default on, as in training), ``p["fused_rmsnorm"]`` (default off, as in training);
    ``p["segment_attention"]`` (default on, as in training);
    ``p["host_allocator"]`` (default
    ``auto``: ``retain`` on CPU, what ``hardware.host_allocator`` applies in training, before the model is built;
    ``system``: the ``system_allocator`` row).
    """
    from zephyr.scale.host_memory import configure_host_allocator

    configure_host_allocator(p.get("host_allocator", "auto"), accelerator="cpu")
    model = build_policy(
        p["model_config"],
        gradient_checkpointing=bool(p.get("activation_checkpointing")),
        fused_mlp=bool(p.get("fused_mlp", True)),  # zephyr's default (model.fused_mlp); off: the no_fused_mlp row
        fused_rmsnorm=bool(p.get("fused_rmsnorm", False)),  # model.fused_rmsnorm (opt-in): the fused_rmsnorm row
        # model.segment_attention (off under compile, as trainer.compile turns it off): the no_segment_attention row
        segment_attention=bool(p.get("segment_attention", True)) and not p.get("compile"),
    )
    if p.get("lora"):
        from zephyr.models.adapters import apply_adapter

        model = apply_adapter(model, p["lora"])
    if p.get("compile"):
        from zephyr.scale.fsdp2 import decoder_layers

        for layer in decoder_layers(model.get_base_model() if p.get("lora") else model):
            layer.compile()
    return model


def trl_peft_config(model, p: dict[str, Any]):
    """The ``peft.LoraConfig`` TRL gets (``peft_config=``): the very config zephyr's adapters are built from."""
    if not p.get("lora"):
        return None
    from zephyr.models.adapters import lora_config

    return lora_config(model, p["lora"])


def flop_model(p: dict[str, Any]):
    """:class:`bench.flops.ModelFlops` of the worker's model (with its LoRA adapters, if any)."""
    from bench.flops import model_flops

    return model_flops(p["model_config"], p.get("lora"))


@dataclass
class StepClock:
    """Wall time between consecutive optimizer-step ends and the tokens of each step.

    Call :meth:`start` just before the training loop and :meth:`step_end` after each optimizer step.
    """

    times: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)
    _last: float | None = None

    def start(self) -> None:
        self._last = time.perf_counter()

    def step_end(self, tokens: int, flops: float = 0.0) -> None:
        """Record one step: its ``tokens`` and its model FLOPs (:mod:`bench.flops`)."""
        now = time.perf_counter()
        if self._last is None:
            raise RuntimeError("StepClock.step_end called before start()")
        self.times.append(now - self._last)
        self.tokens.append(int(tokens))
        self.flops.append(float(flops))
        self._last = now

    def summary(self, warmup: int) -> dict[str, Any]:
        """Tokens/s and s/step over the steps after ``warmup``.

        Raises:
            RuntimeError: when no step is left after the warm-up (the run was too short).
        """
        times, tokens = self.times[warmup:], self.tokens[warmup:]
        flops = (self.flops or [0.0] * len(self.times))[warmup:]
        if not times:
            raise RuntimeError(f"only {len(self.times)} steps recorded, none left after {warmup} warm-up steps")
        total = sum(times)
        return {
            "tokens_per_s": sum(tokens) / total,
            "flops_per_s": sum(flops) / total,
            "flops_per_step": sum(flops) / len(flops),
            "s_per_step": total / len(times),
            "tokens_per_step": sum(tokens) / len(tokens),
            "steps": len(times),
            "step_s": times,
        }


@dataclass
class TokenQueue:
    """FIFO of per-batch token counts (or ``(tokens, flops)``) filled by a collator wrapper, one per step."""

    pending: list[Any] = field(default_factory=list)

    def push(self, n: Any) -> None:
        self.pending.append(n)

    def pop(self) -> Any:
        if not self.pending:
            raise RuntimeError("a step ended with no collated batch recorded")
        return self.pending.pop(0)


# ---- data -------------------------------------------------------------------------------------------------------


def sft_examples(tokenizer, n: int, seed: int, max_length: int):
    """Toy-world dSFT dialogues (``zephyr.toy.teacher.sft_dialogues``) tokenized with assistant-only labels."""
    from zephyr.data.sft import build_sft_examples
    from zephyr.toy.teacher import sft_dialogues

    rows = sft_dialogues(n, seed)
    examples, _ = build_sft_examples(tokenizer, rows, source="toy", max_length=max_length, on_overlong="skip")
    return examples


def _text_of_length(tokenizer, parts: list[str], target: int, sep: str) -> str:
    """Join ``parts`` (cycling) until the text has at least ``target`` tokens."""
    out: list[str] = []
    i = 0
    while len(tokenizer(sep.join(out), add_special_tokens=False)["input_ids"]) < target:
        out.append(parts[i % len(parts)])
        i += 1
    return sep.join(out)


def preference_rows(tokenizer, n: int, seed: int, prompt_tokens: int, completion_tokens: int) -> list[dict]:
    """Toy-world preference pairs sized like the environment note's TRL run (prompt ~115, completions ~100).

    The prompt is an empty system turn, a multi-turn history of toy dialogue exchanges (teacher replies) and a
    new toy question, grown exchange by exchange (skipping exchanges that do not fit) while the rendered prompt
    stays within ``prompt_tokens + 25`` tokens (the mean lands near ``prompt_tokens``). ``chosen`` joins correct
    toy replies and ``rejected`` wrong-answer replies to the same questions, each until it reaches
    ``completion_tokens`` tokens. Only the lengths matter for throughput; the text is real toy-world text.

    Returns:
        ``n`` rows in the ``ultrafeedback_binarized`` schema (``prompt``, ``chosen``, ``rejected``), without the
        system turn (zephyr's tokenizer step adds the empty one; :func:`trl_preference_row` adds it for TRL).
    """
    import random

    from zephyr.toy.tasks import render_reply, sample_tasks
    from zephyr.toy.teacher import sft_dialogues

    rng = random.Random(seed)
    exchanges = [m for d in sft_dialogues(2 * n, seed) for m in d["messages"]]
    exchanges = [exchanges[i : i + 2] for i in range(0, len(exchanges) - 1, 2)]
    tasks = sample_tasks(7 * n, seed + 1, split="train")

    def prompt_len(messages: list[dict[str, str]]) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return len(tokenizer(text, add_special_tokens=True)["input_ids"])

    rows, at = [], 0
    for i in range(n):
        question = {"role": "user", "content": tasks[7 * i].question}
        history: list[dict[str, str]] = []
        misses = 0
        while misses < 8:  # skip exchanges that would overshoot; stop after 8 misses in a row
            longer = [*history, *exchanges[at % len(exchanges)]]
            at += 1
            if prompt_len([{"role": "system", "content": ""}, *longer, question]) > prompt_tokens + 25:
                misses += 1
            else:
                history, misses = longer, 0
        prompt_messages = [*history, question]  # zephyr inserts the empty system turn when tokenizing
        picks = tasks[7 * i : 7 * i + 7]
        good = [render_reply(t) for t in picks]
        bad = [render_reply(t, answer=str(rng.randint(2, 999))) for t in picks]
        chosen = _text_of_length(tokenizer, good, completion_tokens, " ")
        rejected = _text_of_length(tokenizer, bad, completion_tokens, " ")
        if chosen == rejected:
            rejected = rejected + " (unsure)"
        rows.append(
            {
                "prompt": question["content"],
                "chosen": [*prompt_messages, {"role": "assistant", "content": chosen}],
                "rejected": [*prompt_messages, {"role": "assistant", "content": rejected}],
            }
        )
    return rows


def trl_preference_row(row: dict[str, Any]) -> dict[str, Any]:
    """The same pair in TRL's conversational prompt/completion form, with the empty system turn zephyr adds."""
    prompt = [{"role": "system", "content": ""}, *row["chosen"][:-1]]
    return {"prompt": prompt, "chosen": [row["chosen"][-1]], "rejected": [row["rejected"][-1]]}


def pair_tokens(example: dict[str, Any]) -> int:
    """DPO token unit of one tokenized pair: ``2·len(prompt) + len(chosen) + len(rejected)``."""
    p = len(example["prompt_input_ids"])
    return 2 * p + len(example["chosen_input_ids"]) + len(example["rejected_input_ids"])


# ---- subprocess protocol -----------------------------------------------------------------------------------------


def run_worker(task: str, params: dict[str, Any], *, timeout: float = 900.0) -> dict[str, Any]:
    """Run ``python -m bench.worker`` for one measurement and return its JSON result.

    Raises:
        RuntimeError: naming the task and showing the worker's stderr tail when it fails.
    """
    with tempfile.TemporaryDirectory(prefix="zephyr-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "bench.worker", task, json.dumps(params), str(out)]
        env = dict(os.environ)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("WANDB_MODE", "disabled")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("HF_DATASETS_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env["OMP_NUM_THREADS"] = str(params.get("threads", 2))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not out.is_file():
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"bench worker {task} failed (exit {proc.returncode}):\n{tail}")
        return json.loads(out.read_text())


def median_result(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Median tokens/s, s/step and peak RSS over repeats (each value its own median)."""
    keys = ("tokens_per_s", "s_per_step", "tokens_per_step", "peak_rss_mb", "flops_per_s")
    merged = {k: statistics.median(r.get(k, 0.0) for r in results) for k in keys}
    merged["repeats"] = len(results)
    merged["all_tokens_per_s"] = [r["tokens_per_s"] for r in results]
    merged["all_peak_rss_mb"] = [r["peak_rss_mb"] for r in results]
    return merged
