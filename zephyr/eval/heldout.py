"""The toy world's held-out questions graded by the verifier, and a KL estimate to the starting model.

One home for the held-out evaluation: ``zephyr demo`` and ``zephyr iterate`` grade their models with it, and a
training run with a ``heldout:`` block (``conf/train.yaml``; ``null`` = off, ``+experiment=loss_study`` turns it
on) grades its policy right after fitting, so a multirun's ``summary.csv`` gets ``heldout_accuracy``,
``heldout_accuracy/<family>`` and ``heldout_kl`` columns.

* :func:`world_families`, :func:`heldout_tasks`, :func:`evaluate`: the demo's settings shape (``world.families``,
  ``eval.n``, ``eval.seed``, ``eval.max_new_tokens``, ``eval.batch_size``); greedy answers through
  :class:`zephyr.generation.Generator`, graded by :func:`zephyr.toy.tasks.is_correct`.
* :func:`sampled_kl`: ``heldout_kl``, a Monte-Carlo KL(π ‖ π_sft) on the held-out prompts (estimator there).
* :func:`check_heldout` (before any model loads) and :func:`run_heldout` (after ``trainer.fit``): the ``heldout``
  block of a training config, whose keys are those of :data:`HELDOUT_KEYS`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from zephyr.errors import ConfigError

HELDOUT_KEYS = ("families", "n", "seed", "max_new_tokens", "batch_size", "kl_n")
"""The keys of a training config's ``heldout`` block (``families`` null = every family; ``kl_n`` 0 = no KL)."""


def world_families(settings: DictConfig) -> list[str] | None:
    """The toy world's task families (``world.families``; ``None`` = every family), checked against the toy world.

    Raises:
        ValueError: an unknown family name.
    """
    from zephyr.toy.tasks import FAMILIES

    fams = settings.get("world", {}).get("families")
    if fams is None:
        return None
    fams = [str(f) for f in fams]
    if not fams:
        raise ValueError(f"demo world.families: name at least one family (or null for all): {list(FAMILIES)}")
    unknown = [f for f in fams if f not in FAMILIES]
    if unknown:
        raise ValueError(f"demo world.families: unknown families {unknown}; known: {list(FAMILIES)}")
    return fams


def heldout_tasks(settings: DictConfig):
    """The FIXED held-out questions of the world (same for every seed and every model)."""
    from zephyr.toy.tasks import sample_tasks

    return sample_tasks(
        int(settings.eval.n), int(settings.eval.seed), split="heldout", families=world_families(settings)
    )


def evaluate(model, tokenizer, tasks, settings: DictConfig, *, insert_empty_system: bool = True) -> dict[str, Any]:
    """Greedy answers to ``tasks`` graded by the verifier: overall and per-family accuracy, sample answers.

    Answers come from the generation engine (:class:`zephyr.generation.Generator`), rendered as the model's
    training rendered prompts (``insert_empty_system``: its export's ``prompt_format``; the base model gets the
    training default).
    """
    from zephyr.generation import Generator
    from zephyr.toy.tasks import is_correct

    model.eval()
    done = Generator(model, tokenizer, insert_empty_system=insert_empty_system).generate_batch(
        [[{"role": "user", "content": t.question}] for t in tasks],
        max_tokens=int(settings.eval.max_new_tokens), batch_size=int(settings.eval.batch_size),
    )  # fmt: skip
    answers = [c.text.strip() for c in done]
    right = [is_correct(t, a) for t, a in zip(tasks, answers)]
    fams: dict[str, list[bool]] = {}
    for t, r in zip(tasks, right):
        fams.setdefault(t.family, []).append(r)
    return {
        "accuracy": sum(right) / len(right),
        "by_family": {f: sum(v) / len(v) for f, v in sorted(fams.items())},
        "examples": [
            {"question": t.question, "answer": a, "correct": r} for t, a, r in list(zip(tasks, answers, right))[:8]
        ],
    }


@torch.inference_mode()
def sampled_kl(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    tokenizer,
    tasks: Sequence[Any],
    *,
    max_new_tokens: int,
    seed: int,
    insert_empty_system: bool = True,
    batch_size: int = 16,
) -> float:
    """``heldout_kl``: a Monte-Carlo estimate of KL(π ‖ π_sft) on the held-out prompts, for any objective.

    Estimator. For each prompt ``x_i`` (the question of ``tasks[i]``, rendered as training rendered it), one answer
    ``y_i ~ π(·|x_i)`` is sampled from the policy at temperature 1 (top-p 1, no top-k) with the seeded sampler of
    :meth:`zephyr.generation.Generator.stream` (seed ``seed + i``, :func:`zephyr.generation.choice_seeds`), at most
    ``max_new_tokens`` tokens; the EOS token is part of ``y_i`` when it was sampled. Then::

        heldout_kl = 1/N · Σ_i [ log π(y_i|x_i) − log π_sft(y_i|x_i) ]

    with both sequence log-probs (sums over the tokens of ``y_i``, the exact sampled ids, no re-tokenisation)
    from :func:`zephyr.modules.pair_forward.pair_logps`, the forward of training. It is unbiased for the KL between
    the two models' distributions over answers cut at ``max_new_tokens`` tokens (the sequence-level KL whose
    per-token terms DPO's β penalises); one term can be negative, the mean is ≥ 0 in expectation. ``π_sft`` is
    the run's starting checkpoint, loaded again, so it is defined for reference-free objectives (SimPO, ORPO) too.

    Args:
        policy: the trained model.
        reference: the starting (dSFT) model, on the policy's device.
        tokenizer: the chat tokenizer of both.
        tasks: held-out tasks (``question`` each).
        max_new_tokens: the longest sampled answer.
        seed: the first prompt's sampling seed.
        insert_empty_system: render prompts with an empty system turn (the run's ``data.insert_empty_system``).
        batch_size: prompts per scoring forward.

    Returns:
        The mean log-ratio in nats.
    """
    from zephyr.data.collate import collate_pairs
    from zephyr.generation import Generator, StreamState, choice_seeds
    from zephyr.modules.pair_forward import pair_logps

    policy.eval()
    reference.eval()
    gen = Generator(policy, tokenizer, insert_empty_system=insert_empty_system)
    eos = tokenizer.eos_token_id if len(gen.eos_ids) != 1 else next(iter(gen.eos_ids))
    items = []
    for i, (task, s) in enumerate(zip(tasks, choice_seeds(len(tasks), seed))):
        prompt = gen.prompt_ids([{"role": "user", "content": task.question}])
        st = StreamState()
        for _ in gen.stream(prompt, temperature=1.0, top_p=1.0, max_tokens=int(max_new_tokens), seed=s, state=st):
            pass
        answer = list(st.token_ids) + ([eos] if st.finish_reason == "stop" else [])
        items.append({"prompt": prompt, "chosen": answer, "rejected": answer, "index": i})
    device = gen.device
    total = 0.0
    for start in range(0, len(items), max(1, int(batch_size))):
        chunk = items[start : start + max(1, int(batch_size))]
        batch = {k: v.to(device) for k, v in collate_pairs(chunk, pad_id=gen.pad_id).items()}
        rows = len(chunk)
        lp = pair_logps(policy, batch).logps[:rows].double()  # (B,): rows [:B] are the "chosen" copies
        lr = pair_logps(reference, batch).logps[:rows].double()
        total += float((lp - lr).sum())
    return total / len(items)


def heldout_settings(block: DictConfig) -> DictConfig:
    """A training config's ``heldout`` block in the demo's settings shape (``world.families``, ``eval.*``)."""
    return OmegaConf.create(
        {
            "world": {"families": None if block.get("families") is None else OmegaConf.to_container(block.families)},
            "eval": {k: block[k] for k in ("n", "seed", "max_new_tokens", "batch_size")},
        }
    )


def _positive_int(block: DictConfig, key: str, low: int = 1) -> None:
    value = block.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"heldout.{key}={value!r} must be an integer >= {low}")


def check_heldout(cfg: DictConfig) -> None:
    """Refuse a bad ``heldout`` block in one line naming the key, before any model is loaded (``null``: nothing).

    Raises:
        ConfigError: an unknown or missing key, a count that is not a positive integer, an unknown family, or
            several processes (the evaluation runs on one process, on an unsharded policy).
    """
    block = cfg.get("heldout")
    if block is None:
        return
    if not isinstance(block, DictConfig):
        raise ConfigError(f"heldout={block!r} must be a mapping with keys {', '.join(HELDOUT_KEYS)} (or null = off)")
    unknown = sorted(set(block) - set(HELDOUT_KEYS))
    if unknown:
        raise ConfigError(f"heldout: unknown key(s) {unknown}; known: {', '.join(HELDOUT_KEYS)}")
    for key in ("n", "seed", "max_new_tokens", "batch_size"):
        _positive_int(block, key, low=0 if key == "seed" else 1)
    if block.get("kl_n") is not None:
        _positive_int(block, "kl_n", low=0)
    try:
        world_families(heldout_settings(block))
    except ValueError as e:
        raise ConfigError(str(e).replace("demo world.families", "heldout.families")) from None
    hw = cfg.get("hardware") or {}
    devices, nodes = hw.get("devices", 1), hw.get("num_nodes", 1) or 1
    if (isinstance(devices, int) and devices > 1) or int(nodes) > 1:
        raise ConfigError(
            f"heldout runs on one process (hardware.devices={devices}, num_nodes={nodes}): set heldout=null, "
            "and grade the exported model separately"
        )


def run_heldout(
    cfg: DictConfig,
    policy: torch.nn.Module,
    tokenizer,
    load_reference: Callable[[], torch.nn.Module],
    out: str | Path | None = None,
) -> dict[str, float]:
    """The ``heldout`` block of a run: accuracy (greedy, the verifier), per family, and :func:`sampled_kl`.

    Args:
        cfg: the run's config (``heldout``, and ``data.insert_empty_system`` for the prompt rendering).
        policy: the trained model.
        tokenizer: its tokenizer.
        load_reference: builds the starting model (called once, only when ``heldout.kl_n`` is not 0).
        out: the run folder: ``heldout.json`` (the metrics and sample answers) is written there.

    Returns:
        ``heldout_accuracy``, ``heldout_accuracy/<family>`` and, unless ``kl_n`` is 0, ``heldout_kl``.
    """
    from zephyr.data.chat_template import prompt_format

    block = cfg.heldout
    settings = heldout_settings(block)
    tasks = heldout_tasks(settings)
    fmt = prompt_format(cfg.data)["insert_empty_system"]
    result = evaluate(policy, tokenizer, tasks, settings, insert_empty_system=fmt)
    metrics = {"heldout_accuracy": float(result["accuracy"])}
    metrics.update({f"heldout_accuracy/{f}": float(a) for f, a in result["by_family"].items()})
    kl_n = len(tasks) if block.get("kl_n") is None else min(int(block.kl_n), len(tasks))
    if kl_n:
        device = next(policy.parameters()).device
        reference = load_reference().to(device)
        metrics["heldout_kl"] = sampled_kl(
            policy,
            reference,
            tokenizer,
            tasks[:kl_n],
            max_new_tokens=int(block.max_new_tokens),
            seed=int(block.seed),
            insert_empty_system=fmt,
        )
        del reference
    if out is not None:
        record = {"n": len(tasks), "kl_n": kl_n, "metrics": metrics, "examples": result["examples"]}
        (Path(out) / "heldout.json").write_text(json.dumps(record, indent=2) + "\n")
    return metrics


__all__ = [
    "HELDOUT_KEYS",
    "check_heldout",
    "evaluate",
    "heldout_settings",
    "heldout_tasks",
    "run_heldout",
    "sampled_kl",
    "world_families",
]
