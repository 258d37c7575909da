"""The DPO reference model as a provider: a frozen live model, or reference log-probs computed once and cached.

DPO needs ``log π_ref(y|x)`` for every chosen and rejected completion. The reference is the dSFT model and never
changes, so these numbers depend only on (reference weights, tokenizer, tokenised data, truncation, how
log-probs are reduced). :class:`RefLogpsCache` stores them as safetensors under a key hashing all of those
(HALOs computes reference log-probs once per run; here a whole beta/lr sweep and later runs share them). When the
cache is warm the reference model is never built: no second copy of the weights in memory, no extra forwards.

* Key parts (:func:`cache_key`): weights fingerprint (SHA-256 of the checkpoint's ``config.json`` and weight
  files, memoised by size and mtime; or of the state dict for a random-init model), tokenizer fingerprint
  (vocab, special tokens, chat template), data fingerprint (the tokenised pairs), ``max_length``,
  ``max_prompt_length``, ``average`` (IPO uses length-averaged log-probs), reference dtype and precision.
  Not the batch layout (``data.layout``): the concatenated and prefix-shared layouts give the same log-probs
  within 1e-5 (``tests/unit/perf/test_prefix_share.py``), far below what DPO's loss can tell apart, so a cache
  filled in one layout is reused by the other.
* Writes go to a temporary file in the same folder, then ``os.replace``: two sweep jobs filling the same entry
  at once each write a complete file and the last rename wins; a reader never sees a torn file. A file whose
  stored key does not match (or that does not parse) is treated as a miss.
* :class:`FrozenReference` is deliberately not an ``nn.Module`` attribute of the LightningModule: Lightning's
  ``.train()`` would otherwise switch it to train mode (dropout), checkpoints would carry a second copy of the
  weights, and the optimizer could see it. It stays in eval mode with ``requires_grad=False`` and runs under
  ``no_grad``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from zephyr.fileio import atomic_open
from zephyr.objectives.logprobs import (
    SequenceLogps,
    completion_logits_sum,
    completion_logps,
    token_logps_from_hidden,
)
from zephyr.objectives.prefix_share import prefix_shared_logps

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


# ---- the pair forward (policy and reference share it) ----------------------------------------------------------
def _as_labels(targets: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` targets predicted at ``t`` -> labels whose ``[:, t + 1]`` is predicted at ``t``."""
    return torch.nn.functional.pad(targets[:, :-1], (1, 0), value=-100)


def _full_logits_logps(logits: torch.Tensor, labels: torch.Tensor, average: bool) -> SequenceLogps:
    """:class:`SequenceLogps` from full ``(N, T, V)`` logits and ``(N, T)`` labels."""
    counts = (labels[:, 1:] != -100).sum(-1)
    return SequenceLogps(
        completion_logps(logits, labels, average=average), counts, completion_logits_sum(logits, labels)
    )


def pair_logps(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    average: bool = False,
    chunked: bool = True,
    chunk_size: int = 1024,
) -> SequenceLogps:
    """Completion log-probs of the chosen and rejected completions of a preference batch in one forward pass.

    Two batch layouts (:class:`zephyr.data.preference_module.PreferenceDataModule` ``layout``):

    * concatenated (:func:`zephyr.data.preference_module.collate_pairs`): ``input_ids``, ``position_ids``,
      ``labels``, all ``(2B, T)``, padding-free, no attention mask;
    * prefix-shared (:func:`zephyr.data.preference_module.collate_pairs_shared`, recognised by
      ``chosen_targets``): ``input_ids``, ``position_ids``, ``chosen_targets``, ``rejected_targets``
      ``(B, T)`` and a ``(B, 1, T, T)`` boolean ``attention_mask``; scored by
      :func:`zephyr.objectives.prefix_share.prefix_shared_logps` (log-probs equal to the concatenated layout's
      within 1e-5). Needs an attention kernel that takes a 4-D mask (sdpa, eager; not FlashAttention-2).

    Args:
        model: a causal LM with ``base_model`` and an output embedding (``lm_head``).
        batch: a batch in either layout.
        average: per-row mean instead of sum (IPO).
        chunked: project onto the vocabulary only at counted positions (no ``(rows, T, V)`` logits).
        chunk_size: counted positions per projection chunk.

    Returns:
        :class:`SequenceLogps` of ``(2B,)`` tensors: rows ``[:B]`` chosen, ``[B:]`` rejected, in both layouts.

    Raises:
        ValueError: a prefix-shared batch for a model running FlashAttention-2 (which ignores 4-D masks).
    """
    ids, pos = batch["input_ids"], batch["position_ids"]
    if "chosen_targets" in batch:
        attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
        if attn == "flash_attention_2":
            raise ValueError(
                "a prefix-shared preference batch needs a 4-D attention mask, which flash_attention_2 does not "
                "take: set data.layout=concat (or hardware.attn_implementation=sdpa)"
            )
        mask, chosen_t, rejected_t = batch["attention_mask"], batch["chosen_targets"], batch["rejected_targets"]
        if chunked:
            hidden = model.base_model(
                input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False
            ).last_hidden_state  # (B, T, H)
            head = model.get_output_embeddings()
            return prefix_shared_logps(
                hidden,
                head.weight,
                chosen_t,
                rejected_t,
                lm_head_bias=head.bias,
                chunk_size=chunk_size,
                average=average,
            )
        logits = model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False).logits  # (B, T, V)
        outs = [_full_logits_logps(logits, _as_labels(t), average) for t in (chosen_t, rejected_t)]
        return SequenceLogps(*(torch.cat([c, r]) for c, r in zip(outs[0], outs[1])))
    labels = batch["labels"]
    if chunked:
        hidden = model.base_model(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state  # (2B, T, H)
        head = model.get_output_embeddings()
        return token_logps_from_hidden(
            hidden, head.weight, labels, lm_head_bias=head.bias, chunk_size=chunk_size, average=average
        )
    logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits  # (2B, T, V)
    return _full_logits_logps(logits, labels, average)


class FrozenReference:
    """The reference policy: a frozen model in eval mode that only ever runs under ``no_grad``.

    Args:
        model: the reference model (a separate copy of the dSFT weights; never the policy object).
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.forwards = 0  # batches run, for tests and logs

    def to(self, device: torch.device | str) -> FrozenReference:
        self.model.to(device)
        return self

    @torch.no_grad()
    def logps(
        self, batch: dict[str, torch.Tensor], *, average: bool, chunked: bool = True, chunk_size: int = 1024
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ref_chosen_logps, ref_rejected_logps)``, each ``(B,)`` fp32, for a batch in either layout."""
        self.model.eval()
        self.forwards += 1
        out = pair_logps(self.model, batch, average=average, chunked=chunked, chunk_size=chunk_size)
        b = out.logps.shape[0] // 2
        return out.logps[:b].float(), out.logps[b:].float()


# ---- fingerprints ---------------------------------------------------------------------------------------------
def _sha256_file(path: Path, h: Any) -> None:
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)


def checkpoint_fingerprint(path: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> str:
    """SHA-256 of a local checkpoint's ``config.json`` and weight files (names and bytes).

    Hashing 14.5 GB of Mistral-7B weights takes a minute, so the result is memoised in
    ``memo_dir/fingerprints.json`` under (path, size, mtime) of every file; a rewritten file is hashed again.

    Raises:
        FileNotFoundError: the folder has no weight files.
    """
    root = Path(path).expanduser().resolve()
    files = sorted(p for p in root.iterdir() if p.name == "config.json" or p.suffix in WEIGHT_SUFFIXES)
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise FileNotFoundError(f"reference checkpoint {root} has no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    stamp = json.dumps([[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])
    memo_file = Path(memo_dir) / "fingerprints.json" if memo_dir else None
    memo: dict[str, Any] = {}
    if memo_file is not None and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text())
        except (json.JSONDecodeError, OSError):
            memo = {}
        hit = memo.get(str(root))
        if hit and hit.get("stamp") == stamp:
            return hit["sha256"]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        _sha256_file(p, h)
    digest = h.hexdigest()
    if memo_file is not None:
        memo[str(root)] = {"stamp": stamp, "sha256": digest}
        _atomic_write_bytes(memo_file, json.dumps(memo, indent=1).encode())
    return digest


def state_dict_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of the vocabulary, the special token ids and the chat template."""
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id],
        "template": getattr(tokenizer, "chat_template", None),
    }
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    """SHA-256 of the JSON of the key parts (sorted keys)."""
    return hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True).encode()).hexdigest()


# ---- the cache ------------------------------------------------------------------------------------------------
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


class RefLogpsCache:
    """Reference log-probs on disk, one safetensors file per key.

    Args:
        root: the cache folder (created on first write).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()

    def path(self, key: str) -> Path:
        return self.root / f"ref_logps-{key[:32]}.safetensors"

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """The stored tensors for ``key`` (``chosen``, ``rejected``: ``(N,)`` fp32), or ``None`` on a miss."""
        from safetensors import SafetensorError, safe_open

        p = self.path(key)
        if not p.is_file():
            return None
        try:
            with safe_open(str(p), framework="pt") as f:
                if (f.metadata() or {}).get("key") != key:
                    log.warning("reference cache %s belongs to another key; recomputing", p)
                    return None
                return {name: f.get_tensor(name) for name in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            log.warning("reference cache %s is unreadable (%s); recomputing", p, e)
            return None

    def save(self, key: str, tensors: dict[str, torch.Tensor], parts: dict[str, Any]) -> Path:
        """Write atomically; ``parts`` (the key's ingredients) go into the file's metadata for inspection."""
        from safetensors.torch import save

        meta = {"key": key, "parts": json.dumps(parts, sort_keys=True)}
        data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=meta)
        p = self.path(key)
        _atomic_write_bytes(p, data)
        return p


def compute_ref_logps(
    reference: FrozenReference,
    batches: Iterable[dict[str, torch.Tensor]],
    num_items: int,
    *,
    average: bool,
    device: torch.device | str = "cpu",
    chunked: bool = True,
    chunk_size: int = 1024,
    autocast: Callable[[], Any] | None = None,
    desc: str = "reference log-probs",
) -> dict[str, torch.Tensor]:
    """Run the reference over every batch (with a progress bar) and scatter results by ``batch["index"]``.

    Args:
        reference: the frozen reference.
        batches: preference batches covering item indices ``0..num_items-1``.
        num_items: number of pairs.
        average: IPO's length-averaged log-probs.
        device: where the batches run.
        chunked: see :func:`pair_logps`.
        chunk_size: see :func:`pair_logps`.
        autocast: a context-manager factory for mixed precision (the trainer's), so cached values match what
            the same forward would give inside training.
        desc: progress bar label.

    Returns:
        ``{"chosen": (N,), "rejected": (N,)}`` fp32 on CPU.

    Raises:
        RuntimeError: an index was never filled, or a value is not finite (naming the split and pair).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    chosen = torch.full((num_items,), float("nan"))
    rejected = torch.full((num_items,), float("nan"))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(desc, total=num_items)
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast() if autocast is not None else nullcontext():
                c, r = reference.logps(batch, average=average, chunked=chunked, chunk_size=chunk_size)
            idx = batch["index"].cpu()
            chosen[idx], rejected[idx] = c.float().cpu(), r.float().cpu()
            progress.advance(task, len(idx))
    bad = (~torch.isfinite(chosen)) | (~torch.isfinite(rejected))
    if bad.any():
        first = int(bad.nonzero()[0])
        raise RuntimeError(f"{desc}: reference log-prob of pair {first} is missing or not finite")
    return {"chosen": chosen, "rejected": rejected}


__all__ = [
    "FrozenReference",
    "RefLogpsCache",
    "cache_key",
    "checkpoint_fingerprint",
    "compute_ref_logps",
    "pair_logps",
    "state_dict_fingerprint",
    "tokenizer_fingerprint",
]
