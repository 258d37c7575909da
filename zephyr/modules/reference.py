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
* :class:`Reference` is what the DPO step asks for reference log-probs. Hydra builds it as a partial from
  ``objective.reference`` (``conf/objective/dpo.yaml`` interpolates the key parts: ``model.path``,
  ``model.revision``, ``hardware.precision``, ``model.dtype``, ``paths.root_dir``); the DPO module completes it
  with the policy, and hands it the pairs (:class:`PairData`) at fit start.
* With adapters (a PEFT policy, ``disable_adapter``) the reference is the policy itself with its adapters off:
  no second copy of the weights in live mode, nothing reloaded to fill the cache, and the key's weights part is
  the base weights' (the checkpoint's fingerprint, or the state dict without ``lora_`` tensors), so a LoRA run
  and a full run from the same dSFT model share one cache.
* Neither the reference nor its :class:`FrozenReference` is an ``nn.Module`` attribute of the LightningModule:
  Lightning's ``.train()`` would otherwise switch a copy to train mode (dropout), checkpoints would carry a
  second copy of the weights, and the optimizer could see it. A copy stays in eval mode with
  ``requires_grad=False``; every reference forward runs in eval mode under ``no_grad``.
* The forward itself is :func:`zephyr.modules.pair_forward.pair_logps`, the one the policy step runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader

from zephyr.fileio import atomic_open
from zephyr.modules.pair_forward import pair_logps

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


class FrozenReference:
    """A reference policy that only ever runs in eval mode under ``no_grad``.

    Either a separate frozen copy of the starting weights, or, for a PEFT policy (``disable_adapter``), the policy
    itself with its adapters switched off for the forward: the frozen base IS the starting model, so no second
    copy of the weights exists (dDPO with LoRA/QLoRA). The policy is then left trainable; only its mode is
    switched to eval for the reference forward and restored after.

    Args:
        model: the reference model, or the PEFT policy when ``adapters_off``.
        adapters_off: run ``model`` with ``disable_adapter()`` instead of freezing it.
    """

    def __init__(self, model: torch.nn.Module, *, adapters_off: bool = False):
        self.model, self.adapters_off = model, adapters_off
        if not adapters_off:
            self.model.eval().requires_grad_(False)

    def to(self, device: torch.device | str) -> FrozenReference:
        if not self.adapters_off:  # the policy is placed by the trainer
            self.model.to(device)
        return self

    @torch.no_grad()
    def logps(
        self, batch: dict[str, torch.Tensor], *, average: bool, chunked: bool = True, chunk_size: int = 1024
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ref_chosen_logps, ref_rejected_logps)``, each ``(B,)`` fp32, for a batch in either layout."""
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter() if self.adapters_off else nullcontext():
                out = pair_logps(self.model, batch, average=average, chunked=chunked, chunk_size=chunk_size)
        finally:
            self.model.train(was_training)
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


def base_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the base weights: a PEFT model's adapters left out, names as in the unwrapped model.

    ``lora_*`` tensors and ``modules_to_save`` copies are dropped, ``base_model.model.`` / ``.base_layer`` /
    ``.original_module`` are stripped, so a model and the same model under LoRA give the same dict.
    """
    if not hasattr(model, "disable_adapter"):
        return model.state_dict()
    out = {}
    for name, t in model.state_dict().items():
        if ".lora_" in name or ".modules_to_save." in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".").replace(".original_module.", ".")
        out[name] = t
    return out


def state_dict_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of a model's base parameters and buffers (names, dtypes, shapes, bytes; see :func:`base_state_dict`)."""
    h = hashlib.sha256()
    for name, t in sorted(base_state_dict(model).items()):
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


# ---- the reference the DPO step asks -------------------------------------------------------------------------
REFERENCE_MODES = ("cache", "live")


def check_mode(mode: str) -> str:
    """``mode`` if it is a reference mode, else a ``ValueError`` naming ``objective.reference.mode``."""
    if mode not in REFERENCE_MODES:
        raise ValueError(f"objective.reference.mode={mode!r} must be one of {REFERENCE_MODES}")
    return mode


class PairData(Protocol):
    """What the reference reads from the preference data (:class:`zephyr.data.preference_module.PreferenceDataModule`).

    ``tokenizer``, ``max_length`` and ``max_prompt_length`` and ``fingerprint(split)`` go into the cache key;
    ``train_items`` / ``eval_items`` (after ``setup``) and ``collate`` are what the cache fill runs;
    ``local_dir()`` is where the cache goes by default.
    """

    tokenizer: Any
    max_length: int
    max_prompt_length: int
    train_items: list[dict[str, Any]] | None
    eval_items: list[dict[str, Any]] | None

    @property
    def collate(self) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]: ...

    def setup(self, stage: str | None = None) -> None: ...

    def fingerprint(self, split: str) -> str: ...

    def local_dir(self) -> Path | None: ...


class Reference:
    """DPO's reference log-probs ``log π_ref(y|x)``: cached on disk (``mode=cache``) or from a live frozen model.

    Hydra builds it from ``objective.reference`` as a partial holding the configuration (``conf/objective/dpo.yaml``
    interpolates the key parts there); :class:`zephyr.modules.dpo.DPOModule` completes it with the policy at
    construction (before any step or checkpoint restore, so a random-init policy's fingerprint is its starting
    weights) and calls :meth:`prepare` with the pairs at fit start.

    The reference weights: for a PEFT policy (``disable_adapter``) the policy itself with adapters disabled (never
    a copy, never reloaded); otherwise a fresh copy built from ``model`` (a model config such as ``${model}``, or a
    zero-argument callable), built only when needed: live mode, or a cache miss.

    Args:
        policy: the model being trained.
        average: IPO's length-averaged log-probs (part of the key).
        chunked: see :func:`zephyr.modules.pair_forward.pair_logps`.
        chunk_size: see :func:`zephyr.modules.pair_forward.pair_logps`.
        mode: ``cache`` or ``live``.
        cache_dir: cache folder; ``None``: ``.zephyr_cache/ref_logps`` next to a local data file, else
            ``<root_dir>/runs/cache/ref_logps``.
        batch_size: pairs per reference forward while filling the cache.
        model: builds the reference copy (a model config with ``_target_``, or a callable).
        model_path: ``model.path``: a local checkpoint (fingerprinted by its files), a hub name (by name and
            revision), or ``None`` (random init: the policy's base state dict).
        model_revision: ``model.revision`` (hub checkpoints).
        precision: the trainer precision (bf16 log-probs differ from fp32 ones).
        dtype: the reference weights' dtype.
        root_dir: ``paths.root_dir`` (default cache folder and the checkpoint-fingerprint memo).
    """

    def __init__(
        self,
        *,
        policy: torch.nn.Module,
        average: bool = False,
        chunked: bool = True,
        chunk_size: int = 1024,
        mode: str = "cache",
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 16,
        model: Mapping[str, Any] | Callable[[], torch.nn.Module] | None = None,
        model_path: str | None = None,
        model_revision: str | None = None,
        precision: str = "32-true",
        dtype: str = "float32",
        root_dir: str | os.PathLike = ".",
    ):
        self.mode = check_mode(mode)
        self.policy, self.model_cfg = policy, model
        self.forward_opts = {"average": bool(average), "chunked": chunked, "chunk_size": int(chunk_size)}
        self.cache_dir, self.batch_size = cache_dir, int(batch_size)
        self.precision, self.dtype, self.root = str(precision), str(dtype), Path(str(root_dir)) / "runs" / "cache"
        self.adapters_off = hasattr(policy, "disable_adapter")
        if model_path and Path(str(model_path)).expanduser().is_dir():
            self.weights = checkpoint_fingerprint(model_path, memo_dir=self.root)
        elif model_path:
            self.weights = f"hub:{model_path}@{model_revision or 'main'}"
        else:  # random init (seeded): the reference is the same init, which is the policy before any step
            self.weights = state_dict_fingerprint(policy)
        self.data: PairData | None = None
        self.cache: RefLogpsCache | None = None
        self.model: FrozenReference | None = None  # live mode
        self.tables: dict[str, dict[str, torch.Tensor]] = {}  # cache mode: split -> {"chosen", "rejected"}
        self.forwards = 0  # reference batches run (cache fills and live steps)
        self.model_loaded = False  # a copy of the weights was built

    def key_parts(self, split: str, data: PairData | None = None) -> dict[str, Any]:
        """Everything the cached reference log-probs of ``split`` (train | eval) of ``data`` depend on.

        ``data``: ``None`` for the pairs bound by :meth:`prepare`.
        """
        data = data if data is not None else self._bound()
        return {
            "weights": self.weights,
            "tokenizer": tokenizer_fingerprint(data.tokenizer),
            "max_length": int(data.max_length),
            "max_prompt_length": int(data.max_prompt_length),
            "average": self.forward_opts["average"],
            "precision": self.precision,
            "dtype": self.dtype,
            "data": data.fingerprint(split),
            "split": split,
        }

    def _bound(self) -> PairData:
        if self.data is None:
            raise RuntimeError("the DPO reference has no pairs yet: call prepare(data) before using it")
        return self.data

    def _frozen(self, device: torch.device | str) -> FrozenReference:
        """The reference weights: the adapters-off policy, or a fresh frozen copy (counted in ``model_loaded``)."""
        if self.adapters_off:
            log.info("reference: the policy with its adapters disabled (no copy of the weights)")
            return FrozenReference(self.policy, adapters_off=True)
        if self.model_cfg is None:
            raise RuntimeError("the DPO reference has no model to load: pass model= (a model config or a callable)")
        if callable(self.model_cfg):
            copy = self.model_cfg()
        else:
            from hydra.utils import instantiate

            copy = instantiate(self.model_cfg, _convert_="all")
        self.model_loaded = True
        return FrozenReference(copy).to(device)

    def prepare(self, data: PairData, *, device: torch.device | str = "cpu", trainer: Any = None) -> None:
        """Bind the pairs; live mode: get the frozen model; cache mode: load (or fill, then load) each split's table.

        Args:
            data: the preference data (set up here if it is not yet).
            device: where reference forwards run.
            trainer: the Lightning trainer, if any: its precision context is used for the fill, rank 0 fills and
                the other ranks wait at a barrier, then read the files.
        """
        if self.data is not None:
            return
        self.data = data
        if self.mode == "live":
            self.model = self._frozen(device)
            return
        if self.cache_dir:
            cache_dir = Path(str(self.cache_dir))
        else:
            local = data.local_dir() if hasattr(data, "local_dir") else None
            cache_dir = local / ".zephyr_cache" / "ref_logps" if local else self.root / "ref_logps"
        self.cache = RefLogpsCache(cache_dir)
        if data.train_items is None:
            data.setup("fit")
        splits = {s: items for s, items in (("train", data.train_items), ("eval", data.eval_items)) if items}
        keys = {s: cache_key(self.key_parts(s)) for s in splits}
        tables = {s: self.cache.load(k) for s, k in keys.items()}
        missing = [s for s, t in tables.items() if t is None or len(t["chosen"]) != len(splits[s])]
        if not missing:
            log.info("reference log-probs: cache hit in %s (reference model not loaded)", self.cache.root)
        elif trainer is None or trainer.is_global_zero:
            frozen = self._frozen(device)
            autocast = trainer.precision_plugin.forward_context if trainer is not None else None
            for s in missing:
                loader = DataLoader(splits[s], batch_size=self.batch_size, shuffle=False, collate_fn=data.collate)
                counted = (self._count(b) for b in loader)
                desc = f"reference log-probs ({s})"
                tables[s] = compute_ref_logps(
                    frozen, counted, len(splits[s]), device=device, autocast=autocast, desc=desc, **self.forward_opts
                )
                written = self.cache.save(keys[s], tables[s], self.key_parts(s))
                log.info("reference log-probs for %d %s pairs cached in %s", len(splits[s]), s, written)
            del frozen  # frees a second copy of the weights before training starts
        if missing and trainer is not None and trainer.world_size > 1:
            trainer.strategy.barrier("reference_cache")
            tables = {s: self.cache.load(k) for s, k in keys.items()}
        self.tables = {s: t for s, t in tables.items() if t is not None}

    def _count(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.forwards += 1
        return batch

    def logps(self, batch: dict[str, torch.Tensor], split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ref_chosen_logps, ref_rejected_logps)``, each ``(B,)``: a live forward, or rows of ``split``'s table."""
        if self.model is not None:
            self._count(batch)
            return self.model.logps(batch, **self.forward_opts)
        self._bound()
        table = self.tables[split]
        idx = batch["index"].cpu()
        device = batch["index"].device
        return table["chosen"][idx].to(device), table["rejected"][idx].to(device)


__all__ = [
    "REFERENCE_MODES",
    "FrozenReference",
    "PairData",
    "RefLogpsCache",
    "Reference",
    "base_state_dict",
    "cache_key",
    "check_mode",
    "checkpoint_fingerprint",
    "compute_ref_logps",
    "state_dict_fingerprint",
    "tokenizer_fingerprint",
]
