"""dDPO LightningModule: policy vs a frozen dSFT reference on preference pairs, with TRL's metric names.

One training step (Rafailov et al. 2023, arXiv 2305.18290; TRL ``DPOTrainer``):

1. chosen and rejected completions of the batch go through the policy in ONE forward (``data.layout``:
   ``prefix_shared``, one row ``[prompt, chosen, rejected]`` per pair with a 4-D mask, each prompt run once; or
   ``concat``, ``(2B, T)`` padding-free rows; under FlashAttention-2 the module switches the data to ``concat``,
   which needs no mask), and :func:`zephyr.modules.reference.pair_logps` gives the summed completion log-probs
   (the mean for IPO, whose fixed target ``1/(2β)`` only makes sense for length-averaged log-probs; TRL ≥ 0.8
   does the same);
2. the reference log-probs come from the on-disk cache (default; the reference model is built only to fill it,
   and not at all when it is warm) or from a live frozen copy (``reference.mode=live``);
3. :func:`zephyr.objectives.dpo.preference_loss` (sigmoid/cDPO, ipo, hinge, robust), plus ``rpo_alpha`` × the
   length-normalised NLL of the chosen completion when set (RPO, arXiv 2404.19733), logged as ``nll_loss``.

Logged under ``train/`` (per step) and ``eval/`` (epoch means): ``loss``, ``rewards/chosen``,
``rewards/rejected``, ``rewards/accuracies``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected``,
``logits/chosen``, ``logits/rejected`` (TRL's definitions; logits are v0.12's mean over completion positions ×
vocab), ``kl`` (mean chosen log-ratio, 0 at step 0) and ``nll_loss`` with RPO. Watch ``rewards/chosen``: when
it goes negative while margins grow, DPO is lowering the chosen completions' likelihood too (likelihood
displacement); ``rpo_alpha`` counteracts it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from zephyr.modules.base import ZephyrModule
from zephyr.modules.reference import (
    FrozenReference,
    RefLogpsCache,
    cache_key,
    checkpoint_fingerprint,
    compute_ref_logps,
    pair_logps,
    state_dict_fingerprint,
    tokenizer_fingerprint,
)
from zephyr.objectives.dpo import LOSS_TYPES, preference_loss, preference_metrics, rpo_nll
from zephyr.objectives.logprobs import masked_logits_mean

log = logging.getLogger(__name__)

REFERENCE_MODES = ("cache", "live")


class DPOModule(ZephyrModule):
    """Direct preference optimisation of ``model`` against a frozen copy of its initial weights.

    Trains on preference pairs (``data_kind``; :func:`zephyr.run.check_objective_data` refuses other data).

    Args:
        model: the policy, initialised from the dSFT checkpoint.
        optimizer: partial optimizer constructor.
        scheduler: ``{"name", "warmup_ratio"}`` (the recipe: linear, 0.1).
        beta: β, the KL-penalty strength (IPO's τ, hinge's 1/margin).
        loss_type: ``sigmoid`` | ``ipo`` | ``hinge`` | ``robust``.
        label_smoothing: ε for cDPO (``sigmoid``) or rDPO (``robust``).
        rpo_alpha: weight of the chosen-completion NLL term (``None`` or 0: plain DPO).
        reference: ``{"mode": cache|live, "cache_dir": DIR or None, "batch_size": int}``; ``cache_dir`` None
            means next to a local data file, else ``<paths.root_dir>/runs/cache/ref_logps``.
        chunked_loss: vocabulary projection only at completion positions.
        loss_chunk_size: positions per projection chunk.
    """

    data_kind = "preference"

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: dict[str, Any] | None = None,
        *,
        beta: float = 0.1,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        rpo_alpha: float | None = None,
        reference: dict[str, Any] | None = None,
        chunked_loss: bool = True,
        loss_chunk_size: int = 1024,
    ):
        super().__init__(model, optimizer, scheduler, chunked_loss=chunked_loss, loss_chunk_size=loss_chunk_size)
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"objective.loss_type={loss_type!r} must be one of {', '.join(LOSS_TYPES)}")
        if not beta > 0:
            raise ValueError(f"objective.beta={beta} must be > 0")
        self.ref_cfg = {"mode": "cache", "cache_dir": None, "batch_size": 16, **(reference or {})}
        if self.ref_cfg["mode"] not in REFERENCE_MODES:
            raise ValueError(f"objective.reference.mode={self.ref_cfg['mode']!r} must be one of {REFERENCE_MODES}")
        self.beta, self.loss_type, self.label_smoothing = float(beta), loss_type, float(label_smoothing)
        self.rpo_alpha = float(rpo_alpha) if rpo_alpha else 0.0
        self.average = loss_type == "ipo"  # IPO regresses length-averaged log-ratios (dpo_math.md §2)
        self.save_hyperparameters(ignore=["model", "optimizer"])
        self._load_reference: Callable[[], torch.nn.Module] | None = None
        self._ref_key_base: dict[str, Any] = {}
        self._datamodule = None
        self._cache: RefLogpsCache | None = None
        self._ref_tables: dict[str, dict[str, torch.Tensor]] = {}
        self.reference: FrozenReference | None = None  # live mode only; a plain attribute (see reference.py)
        self.reference_forwards = 0  # reference batches run by this module (cache fills and live steps)
        self.reference_loaded = False

    # ---- wiring -------------------------------------------------------------------------------------------------
    def attach(self, *, cfg, datamodule, tokenizer, output_dir: Path) -> None:
        """Called by :func:`zephyr.run.train` before fitting: tells the module where its reference comes from."""
        from hydra.utils import instantiate

        root = Path(str(cfg.paths.root_dir)) / "runs" / "cache"
        path, revision = cfg.model.get("path"), cfg.model.get("revision")
        if path and Path(str(path)).expanduser().is_dir():
            weights = checkpoint_fingerprint(path, memo_dir=root)
        elif path:
            weights = f"hub:{path}@{revision or 'main'}"
        else:  # random init (seeded): the reference is the same init, which is the policy before any step
            weights = state_dict_fingerprint(self.model)
        cache_dir = self.ref_cfg.get("cache_dir")
        if not cache_dir:
            local = datamodule.local_dir() if hasattr(datamodule, "local_dir") else None
            cache_dir = local / ".zephyr_cache" / "ref_logps" if local else root / "ref_logps"
        self.configure_reference(
            load_model=lambda: instantiate(cfg.model, _convert_="all"),
            weights_fingerprint=weights,
            tokenizer=tokenizer,
            datamodule=datamodule,
            cache_dir=cache_dir,
            precision=str(cfg.hardware.get("precision", "32-true")),
            dtype=str(cfg.model.get("dtype", "float32")),
        )

    def configure_reference(
        self,
        *,
        load_model: Callable[[], torch.nn.Module],
        weights_fingerprint: str,
        tokenizer,
        datamodule,
        cache_dir: str | Path | None,
        precision: str = "32-true",
        dtype: str = "float32",
    ) -> None:
        """Set how the reference is built and what identifies its log-probs.

        Args:
            load_model: builds a fresh copy of the reference weights (called only when needed).
            weights_fingerprint: identifies those weights (see :mod:`zephyr.modules.reference`).
            tokenizer: the chat tokenizer.
            datamodule: a :class:`zephyr.data.preference_module.PreferenceDataModule`.
            cache_dir: cache folder (``mode=cache``).
            precision: the trainer precision (part of the key: bf16 log-probs differ from fp32 ones).
            dtype: the reference weights' dtype (part of the key).
        """
        self._load_reference = load_model
        self._datamodule = datamodule
        attn = getattr(getattr(self.model, "config", None), "_attn_implementation", None)
        if attn == "flash_attention_2" and getattr(datamodule, "layout", "concat") == "prefix_shared":
            log.warning(
                "data.layout=prefix_shared needs a 4-D attention mask, which flash_attention_2 does not take; "
                "using concat"
            )
            datamodule.layout = "concat"
        self._cache = RefLogpsCache(cache_dir) if cache_dir else None
        self._ref_key_base = {
            "weights": weights_fingerprint,
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "max_length": int(datamodule.max_length),
            "max_prompt_length": int(datamodule.max_prompt_length),
            "average": self.average,
            "precision": precision,
            "dtype": dtype,
        }

    def reference_key_parts(self, split: str) -> dict[str, Any]:
        """Everything the cached reference log-probs of ``split`` (train | eval) depend on."""
        return {**self._ref_key_base, "data": self._datamodule.fingerprint(split), "split": split}

    def _build_reference(self) -> FrozenReference:
        if self._load_reference is None:
            raise RuntimeError("DPOModule has no reference: call attach() or configure_reference() before fitting")
        self.reference_loaded = True
        return FrozenReference(self._load_reference()).to(self.device)

    def _autocast(self):
        trainer = self._trainer
        if trainer is None:
            return None
        return trainer.precision_plugin.forward_context

    def prepare_reference(self) -> None:
        """Live mode: build the frozen copy. Cache mode: load (or fill, then load) the log-probs of each split."""
        if self._ref_tables or self.reference is not None:
            return
        if self.ref_cfg["mode"] == "live" or self._cache is None:
            self.reference = self._build_reference()
            return
        dm = self._datamodule
        dm.setup("fit")
        splits = {"train": dm.train_items, "eval": dm.eval_items}
        splits = {s: items for s, items in splits.items() if items}
        keys = {s: cache_key(self.reference_key_parts(s)) for s in splits}
        tables = {s: self._cache.load(k) for s, k in keys.items()}
        missing = [s for s, t in tables.items() if t is None or len(t["chosen"]) != len(splits[s])]
        if missing:
            trainer = self._trainer
            if trainer is None or trainer.is_global_zero:
                ref = self._build_reference()
                for s in missing:
                    loader = DataLoader(
                        splits[s], batch_size=int(self.ref_cfg["batch_size"]), shuffle=False, collate_fn=dm.collate
                    )
                    tables[s] = compute_ref_logps(
                        ref,
                        loader,
                        len(splits[s]),
                        average=self.average,
                        device=self.device,
                        chunked=self.chunked_loss,
                        chunk_size=self.loss_chunk_size,
                        autocast=self._autocast(),
                        desc=f"reference log-probs ({s})",
                    )
                    written = self._cache.save(keys[s], tables[s], self.reference_key_parts(s))
                    log.info("reference log-probs for %d %s pairs cached in %s", len(splits[s]), s, written)
                self.reference_forwards += ref.forwards
                del ref  # frees the second copy of the weights before training starts
            if trainer is not None and trainer.world_size > 1:
                trainer.strategy.barrier("reference_cache")
                tables = {s: self._cache.load(k) for s, k in keys.items()}
        else:
            log.info("reference log-probs: cache hit in %s (reference model not loaded)", self._cache.root)
        self._ref_tables = {s: t for s, t in tables.items() if t is not None}

    def on_fit_start(self) -> None:
        self.prepare_reference()

    def on_validation_start(self) -> None:
        self.prepare_reference()

    # ---- the step -----------------------------------------------------------------------------------------------
    def ref_logps(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ref_chosen_logps, ref_rejected_logps)``, each ``(B,)``, from the live reference or the cache."""
        if self.reference is not None:
            self.reference_forwards += 1
            return self.reference.logps(
                batch, average=self.average, chunked=self.chunked_loss, chunk_size=self.loss_chunk_size
            )
        table = self._ref_tables["train" if stage == "train" else "eval"]
        idx = batch["index"].cpu()
        return table["chosen"][idx].to(self.device), table["rejected"][idx].to(self.device)

    def compute(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and TRL metrics (unprefixed names) for a preference batch in either layout (see ``pair_logps``)."""
        b = batch["index"].shape[0]
        out = pair_logps(
            self.model, batch, average=self.average, chunked=self.chunked_loss, chunk_size=self.loss_chunk_size
        )
        self.check_finite(f"{stage}/logps", out.logps)
        policy_chosen, policy_rejected = out.logps[:b], out.logps[b:]  # (B,), (B,)
        ref_chosen, ref_rejected = self.ref_logps(batch, stage)
        losses, chosen_rewards, rejected_rewards = preference_loss(
            policy_chosen,
            policy_rejected,
            ref_chosen,
            ref_rejected,
            beta=self.beta,
            loss_type=self.loss_type,
            label_smoothing=self.label_smoothing,
        )
        loss = losses.mean()
        vocab = self.model.get_output_embeddings().weight.shape[0]
        metrics = preference_metrics(
            chosen_rewards,
            rejected_rewards,
            policy_chosen,
            policy_rejected,
            masked_logits_mean(out.logits_sum[:b], out.token_counts[:b], vocab),
            masked_logits_mean(out.logits_sum[b:], out.token_counts[b:], vocab),
            ref_chosen_logps=ref_chosen,
        )
        if self.rpo_alpha:
            counts = out.token_counts[:b]
            summed = policy_chosen * counts if self.average else policy_chosen
            nll = rpo_nll(summed, counts)
            loss = loss + self.rpo_alpha * nll
            metrics["nll_loss"] = nll.detach()
        self.check_finite(f"{stage}/loss", loss)
        metrics["loss"] = loss.detach()
        return loss, metrics

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        loss, metrics = self.compute(batch, stage)
        b = int(batch["index"].shape[0])
        for name, value in metrics.items():
            if stage == "train":
                # pair-weighted over the micro-batches and ranks of the optimizer step
                self.accumulate_train_metric(name, value.detach(), b, prog_bar=name == "loss")
            else:
                self.log(f"eval/{name}", value, on_epoch=True, prog_bar=name == "loss", batch_size=b)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "eval")
