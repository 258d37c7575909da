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
import time
import uuid
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
        self,
        batch: dict[str, torch.Tensor],
        *,
        average: bool,
        chunked: bool = True,
        chunk_size: int = 1024,
        ld_alpha: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ref_chosen_logps, ref_rejected_logps)``, each ``(B,)`` fp32, for a batch in either layout."""
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter() if self.adapters_off else nullcontext():
                out = pair_logps(
                    self.model, batch, average=average, chunked=chunked, chunk_size=chunk_size, ld_alpha=ld_alpha
                )
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

    def save(
        self, key: str, tensors: dict[str, torch.Tensor], parts: dict[str, Any], extra: dict[str, str] | None = None
    ) -> Path:
        """Write atomically; ``parts`` (the key's ingredients) and ``extra`` go into the file's metadata."""
        from safetensors.torch import save

        meta = {"key": key, "parts": json.dumps(parts, sort_keys=True), **(extra or {})}
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
    ld_alpha: float | None = None,
    autocast: Callable[[], Any] | None = None,
    desc: str = "reference log-probs",
    expected: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Run the reference over every batch (with a progress bar) and scatter results by ``batch["index"]``.

    Args:
        reference: the frozen reference.
        batches: preference batches covering item indices ``0..num_items-1``.
        num_items: number of pairs.
        average: IPO's length-averaged log-probs.
        ld_alpha: LD-DPO's α for the sums (``None``: plain sums).
        device: where the batches run.
        chunked: see :func:`pair_logps`.
        chunk_size: see :func:`pair_logps`.
        autocast: a context-manager factory for mixed precision (the trainer's), so cached values match what
            the same forward would give inside training.
        desc: progress bar label.
        expected: the indices the batches cover (one rank's share of the fill); ``None``: all ``0..N-1``.

    Returns:
        ``{"chosen": (N,), "rejected": (N,)}`` fp32 on CPU (NaN outside ``expected``).

    Raises:
        RuntimeError: an expected index was never filled, or a value is not finite (naming the split and pair).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    chosen = torch.full((num_items,), float("nan"))
    rejected = torch.full((num_items,), float("nan"))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(desc, total=num_items if expected is None else len(expected))
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast() if autocast is not None else nullcontext():
                c, r = reference.logps(
                    batch, average=average, chunked=chunked, chunk_size=chunk_size, ld_alpha=ld_alpha
                )
            idx = batch["index"].cpu()
            chosen[idx], rejected[idx] = c.float().cpu(), r.float().cpu()
            progress.advance(task, len(idx))
    check_filled({"chosen": chosen, "rejected": rejected}, desc, expected)
    return {"chosen": chosen, "rejected": rejected}


def check_filled(table: dict[str, torch.Tensor], desc: str, expected: torch.Tensor | None = None) -> None:
    """Raise ``RuntimeError`` naming the first pair (of ``expected``, default all) whose log-prob is NaN or inf."""
    chosen, rejected = table["chosen"], table["rejected"]
    if expected is not None:
        chosen, rejected = chosen[expected], rejected[expected]
    bad = (~torch.isfinite(chosen)) | (~torch.isfinite(rejected))
    if bad.any():
        first = int(bad.nonzero()[0])
        first = int(expected[first]) if expected is not None else first
        raise RuntimeError(f"{desc}: reference log-prob of pair {first} is missing or not finite")


# ---- the reference the DPO step asks -------------------------------------------------------------------------
REFERENCE_MODES = ("cache", "live")


def check_mode(mode: str) -> str:
    """``mode`` if it is a reference mode, else a ``ValueError`` naming ``objective.reference.mode``."""
    if mode not in REFERENCE_MODES:
        raise ValueError(f"objective.reference.mode={mode!r} must be one of {REFERENCE_MODES}")
    return mode


SYNC_MODES = ("soft", "hard")


def check_sync(sync: str | None, *, mode: str, alpha: Any, every_n_steps: Any, adapters: bool = False) -> None:
    """Refuse a TR-DPO reference sync that cannot run (``ValueError`` naming the ``objective.reference`` key).

    The sync needs a separate reference copy whose weights move: ``mode=live`` (the cache holds the log-probs of
    fixed weights), and no adapters (a PEFT policy's reference is its own base with the adapters off: there is
    no copy to move, and merging the adapters into the base would change the policy too).
    """
    if sync is None:
        return
    if sync not in SYNC_MODES:
        raise ValueError(f"objective.reference.sync={sync!r} must be one of {SYNC_MODES} or null (off)")
    if mode != "live":
        raise ValueError(
            f"objective.reference.sync={sync} needs objective.reference.mode=live: mode={mode} caches the log-probs "
            "of fixed reference weights, and a synced reference changes during training"
        )
    if adapters:
        raise ValueError(
            f"objective.reference.sync={sync} is not available with adapters: the reference is the base model with "
            "the adapters off (no separate copy to sync); train without adapter=..., or merge the adapters into a "
            "new starting model"
        )
    if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
        raise ValueError(f"objective.reference.every_n_steps={every_n_steps!r} must be an integer >= 1")
    if sync == "soft" and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1):
        raise ValueError(f"objective.reference.alpha={alpha!r} must be a number in (0, 1]")


def check_reference_config(cfg: Any) -> None:
    """Run's pre-model check of ``objective.reference`` (mode, TR-DPO sync): bad input -> one ``ConfigError`` line."""
    from zephyr.errors import ConfigError
    from zephyr.models.adapters import uses_adapter

    node = cfg.get("objective", {}).get("reference") if hasattr(cfg, "get") else None
    if not hasattr(node, "get"):
        return
    try:
        mode = check_mode(node.get("mode", "cache"))
        sync = node.get("sync")
        alpha, every = node.get("alpha", 0.6), node.get("every_n_steps", 512)
        check_sync(sync, mode=mode, alpha=alpha, every_n_steps=every, adapters=uses_adapter(cfg))
    except ValueError as e:
        raise ConfigError(str(e)) from None


class PairData(Protocol):
    """What the reference reads from the preference data (:class:`zephyr.data.preference.PreferenceDataModule`).

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
        path: the reference checkpoint when it is not the policy's start (``model_path``): the copy is ``model``
            with this ``path`` (and no revision), and the cache key fingerprints it. Iterative DPO's
            ``reference=sft``; TRL's ``ref_model`` other than the policy.
        model_revision: ``model.revision`` (hub checkpoints).
        precision: the trainer precision (bf16 log-probs differ from fp32 ones).
        dtype: the reference weights' dtype.
        root_dir: ``paths.root_dir`` (default cache folder and the checkpoint-fingerprint memo).
        sync: TR-DPO (:meth:`after_optimizer_step`): ``soft``, ``hard`` or ``None`` (off); live mode only.
        alpha: the soft sync's weight of the policy, ``ref <- alpha * policy + (1 - alpha) * ref``.
        every_n_steps: sync after every ``every_n_steps``-th optimizer step.
        fill_timeout_s: how long a rank waits for the other ranks' shards of a cache fill.
        ld_alpha: LD-DPO's α: the reference sums log-probs as the policy does (part of the key when set).
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
        path: str | os.PathLike | None = None,
        precision: str = "32-true",
        dtype: str = "float32",
        root_dir: str | os.PathLike = ".",
        sync: str | None = None,
        alpha: float = 0.6,
        every_n_steps: int = 512,
        fill_timeout_s: float = 3600.0,
        ld_alpha: float | None = None,
    ):
        self.mode = check_mode(mode)
        check_sync(
            sync, mode=mode, alpha=alpha, every_n_steps=every_n_steps, adapters=hasattr(policy, "disable_adapter")
        )
        self.sync, self.alpha, self.every_n_steps = sync, float(alpha), int(every_n_steps)
        self.fill_timeout_s = float(fill_timeout_s)
        self.sync_steps: list[int] = []  # optimizer steps after which the reference was synced (this process)
        self.synced_step = 0  # the last one, restored on resume
        self._pending_state: dict[str, Any] | None = None  # a checkpoint's reference, applied once the copy exists
        if path is not None:
            if model is None or callable(model):
                raise ValueError("objective.reference.path needs a model config (objective.reference.model) to load")
            from omegaconf import DictConfig, OmegaConf

            plain = OmegaConf.to_container(model, resolve=True) if isinstance(model, DictConfig) else dict(model)
            model = {**plain, "path": str(path), "revision": None}
            model_path, model_revision = str(path), None
        self.policy, self.model_cfg = policy, model
        self.forward_opts = {"average": bool(average), "chunked": chunked, "chunk_size": int(chunk_size)}
        if ld_alpha is not None:  # LD-DPO: the reference sums its log-probs as the policy does
            self.forward_opts["ld_alpha"] = float(ld_alpha)
        self.cache_dir, self.batch_size = cache_dir, int(batch_size)
        self.precision, self.dtype, self.root = str(precision), str(dtype), Path(str(root_dir)) / "runs" / "cache"
        # a PEFT policy with adapters off is its base (model.path); another reference checkpoint is its own copy
        self.adapters_off = hasattr(policy, "disable_adapter") and path is None
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
            **({"ld_alpha": self.forward_opts["ld_alpha"]} if "ld_alpha" in self.forward_opts else {}),
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
            trainer: the Lightning trainer, if any: its precision context is used for the fill; with several
                ranks each fills its share of the batches (:meth:`_fill_sharded`).
        """
        if self.data is not None:
            return
        self.data = data
        if self.mode == "live":
            self.model = self._frozen(device)
            if self._pending_state is not None:
                self.load_state_dict(self._pending_state)
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
        world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        if world > 1:  # every rank acts on rank 0's view of the cache (one small broadcast)
            missing, fill_id = trainer.strategy.broadcast((missing, uuid.uuid4().hex[:12]), src=0)
        if not missing:
            log.info("reference log-probs: cache hit in %s (reference model not loaded)", self.cache.root)
        elif world == 1:
            frozen, autocast = self._frozen(device), self._autocast(trainer)
            for s in missing:
                tables[s] = self._fill(frozen, splits[s], s, device, autocast, 0, 1)
                written = self.cache.save(keys[s], tables[s], self.key_parts(s))
                log.info("reference log-probs for %d %s pairs cached in %s", len(splits[s]), s, written)
            del frozen  # frees a second copy of the weights before training starts
        else:
            self._fill_sharded(trainer, splits, keys, missing, fill_id, device)
            tables = {s: self.cache.load(k) for s, k in keys.items()}
        self.tables = {s: t for s, t in tables.items() if t is not None}

    @staticmethod
    def _autocast(trainer: Any) -> Callable[[], Any] | None:
        return trainer.precision_plugin.forward_context if trainer is not None else None

    def _fill(
        self, frozen: FrozenReference, items: list, split: str, device, autocast, rank: int, world: int
    ) -> dict[str, torch.Tensor]:
        """Reference log-probs of ``rank``'s share of ``items``: batches ``rank::world`` of the one-process fill.

        The batches are the ones a one-process fill runs (``batch_size`` consecutive pairs), dealt round-robin, so
        each value comes out of the same forward over the same rows: the merged table equals the one-process
        table bit for bit.
        """
        n, bs = len(items), self.batch_size
        own = [list(range(i, min(i + bs, n))) for i in range(rank * bs, n, world * bs)]
        loader = DataLoader(items, batch_sampler=own, collate_fn=self._bound().collate)
        counted = (self._count(b) for b in loader)
        desc = f"reference log-probs ({split})" + (f" rank {rank}/{world}" if world > 1 else "")
        expected = torch.tensor([i for b in own for i in b], dtype=torch.long) if world > 1 else None
        before = self.forwards
        table = compute_ref_logps(
            frozen, counted, n, device=device, autocast=autocast, desc=desc, expected=expected, **self.forward_opts
        )
        if world > 1:
            log.info("%s: ran %d of %d batches (%d pairs)", desc, self.forwards - before, -(-n // bs), len(expected))
            table = {"index": expected, "chosen": table["chosen"][expected], "rejected": table["rejected"][expected]}
        return table

    def _shard_path(self, key: str, fill_id: str, rank: int) -> Path:
        assert self.cache is not None
        return self.cache.root / f"{self.cache.path(key).stem}.{fill_id}.rank{rank}.pt"

    def _fill_sharded(
        self, trainer: Any, splits: dict[str, list], keys: dict[str, str], missing: list[str], fill_id: str, device
    ) -> None:
        """Every rank fills its share of each missing split; rank 0 merges the shards into the one cache file.

        Each rank writes ``<entry>.<fill id>.rank<r>.pt`` atomically, then waits on the file system (not on a
        collective, whose timeout a long fill would outlast) until every rank's shard is there, at most
        ``fill_timeout_s`` (``objective.reference.fill_timeout_s``). The strategy's barriers surround only the
        merge: rank 0 scatters the shards into one table, writes the cache entry atomically (the same file a
        one-process fill writes, the ranks' pair counts in its ``shards`` metadata) and removes the shards; then
        every rank reads the merged file.
        """
        rank, world = int(trainer.global_rank), int(trainer.world_size)
        frozen, autocast = self._frozen(device), self._autocast(trainer)
        for s in missing:
            shard = self._fill(frozen, splits[s], s, device, autocast, rank, world)
            with atomic_open(self._shard_path(keys[s], fill_id, rank), "wb") as f:
                torch.save({"key": keys[s], "fill": fill_id, "rank": rank, "world": world, **shard}, f)
        del frozen
        self._wait_for_shards([self._shard_path(keys[s], fill_id, r) for s in missing for r in range(world)])
        trainer.strategy.barrier("reference_fill_shards")
        if rank == 0:
            for s in missing:
                paths = [self._shard_path(keys[s], fill_id, r) for r in range(world)]
                table = {"chosen": torch.full((len(splits[s]),), float("nan")), "rejected": None}
                table["rejected"] = table["chosen"].clone()
                counts = {}
                for r, p in enumerate(paths):
                    part = torch.load(p, map_location="cpu", weights_only=True)
                    if part["key"] != keys[s] or part["fill"] != fill_id:
                        raise RuntimeError(f"reference cache shard {p} belongs to another fill")
                    table["chosen"][part["index"]], table["rejected"][part["index"]] = part["chosen"], part["rejected"]
                    counts[str(r)] = len(part["index"])
                check_filled(table, f"reference log-probs ({s}, merged from {world} ranks)")
                extra = {"shards": json.dumps(counts)}
                written = self.cache.save(keys[s], table, self.key_parts(s), extra)
                for p in self.cache.root.glob(f"{self.cache.path(keys[s]).stem}.*.rank*.pt"):
                    p.unlink(missing_ok=True)  # this fill's shards and any a crashed earlier fill left
                log.info(
                    "reference log-probs for %d %s pairs (%d ranks) cached in %s",
                    len(table["chosen"]),
                    s,
                    world,
                    written,
                )
        trainer.strategy.barrier("reference_fill_merged")

    def _wait_for_shards(self, paths: list[Path]) -> None:
        """Poll until every shard file exists; after ``fill_timeout_s`` raise naming the missing ones."""
        deadline = time.monotonic() + self.fill_timeout_s
        while True:
            absent = [p for p in paths if not p.is_file()]
            if not absent:
                return
            if time.monotonic() > deadline:
                names = ", ".join(p.name for p in absent[:4]) + (" ..." if len(absent) > 4 else "")
                raise TimeoutError(
                    f"reference cache fill: after {self.fill_timeout_s:.0f}s {len(absent)} rank shard(s) are still "
                    f"missing in {absent[0].parent} ({names}): a rank failed or is far slower (raise "
                    "objective.reference.fill_timeout_s, or check that every rank sees the same cache_dir)"
                )
            time.sleep(0.2)

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

    # ---- TR-DPO: the reference follows the policy (Gorbatovski et al. 2024, arXiv 2404.09656) -----------------
    def after_optimizer_step(self, step: int) -> bool:
        """Sync the reference to the policy when optimizer step ``step`` (1-based) is a multiple of ``every_n_steps``.

        Called from the optimizer step (``DPOModule.optimizer_step``, before checkpoint callbacks run); a step is
        synced at most once.
        Returns whether it synced.
        """
        if self.sync is None or self.model is None or step <= self.synced_step or step % self.every_n_steps:
            return False
        self.sync_weights()
        self.synced_step = step
        self.sync_steps.append(step)
        return True

    @torch.no_grad()
    def sync_weights(self) -> None:
        """``hard``: ref <- policy; ``soft``: ref <- alpha * policy + (1 - alpha) * ref (TRL's SyncRefModelCallback).

        Parameters only (as TRL), matched by name (a compiled policy's ``_orig_mod.`` is looked through); a sharded
        policy parameter (FSDP2's ``DTensor``) is gathered with ``full_tensor()`` first.
        """
        assert self.model is not None
        policy = {n.replace("_orig_mod.", ""): p for n, p in self.policy.named_parameters()}
        for name, ref in self.model.model.named_parameters():
            src = policy[name]
            src = (src.full_tensor() if hasattr(src, "full_tensor") else src).detach().to(ref.device, ref.dtype)
            if self.sync == "hard":
                ref.copy_(src)
            else:
                ref.mul_(1.0 - self.alpha).add_(src, alpha=self.alpha)

    def state_dict(self) -> dict[str, Any] | None:
        """What a checkpoint must carry for an exact resume (``None`` with sync off).

        With sync on: the reference weights and the last synced step (a synced reference is no longer the
        starting model, and rebuilding it from ``model`` on resume would give the starting weights).
        """
        if self.sync is None or self.model is None:
            return None
        weights = {n: p.detach().cpu().clone() for n, p in self.model.model.named_parameters()}
        return {"weights": weights, "synced_step": self.synced_step}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict` (now, or once :meth:`prepare` has built the copy)."""
        if state is None:
            return
        if self.model is None:
            self._pending_state = state
            return
        params = dict(self.model.model.named_parameters())
        absent = sorted(set(params) - set(state["weights"]))
        if absent:
            raise RuntimeError(f"the checkpoint's synced reference lacks {len(absent)} parameter(s), e.g. {absent[0]}")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state["weights"][name].to(p.device, p.dtype))
        self.synced_step, self._pending_state = int(state["synced_step"]), None


__all__ = [
    "REFERENCE_MODES",
    "SYNC_MODES",
    "FrozenReference",
    "PairData",
    "RefLogpsCache",
    "Reference",
    "base_state_dict",
    "cache_key",
    "check_filled",
    "check_mode",
    "check_reference_config",
    "check_sync",
    "checkpoint_fingerprint",
    "compute_ref_logps",
    "state_dict_fingerprint",
    "tokenizer_fingerprint",
]
