"""KTO LightningModule: policy vs a frozen dSFT reference on unpaired desirable/undesirable rows, TRL's metric names.

One training step (Ethayarajh et al. 2024, arXiv 2402.01306; TRL ``KTOTrainer``) reads as the DPO step
(:mod:`zephyr.modules.dpo`):

1. **forward**: :func:`zephyr.modules.pair_forward.pair_logps` scores each row's completion and its mismatched
   KL completion (the completion of another row after this row's prompt, :mod:`zephyr.data.kto`) in ONE pass
   (``data.layout``: prefix-shared ``[prompt, completion, kl_completion]`` rows, or ``concat``), summed
   log-probs as TRL;
2. **reference log-probs** of both: :class:`zephyr.modules.reference.Reference` (``objective.reference``) from
   the on-disk cache, keyed by the tokenised rows and their KL completions (the reference is not built when it
   is warm), or a live frozen model (``reference.mode=live``);
3. **loss**: :func:`zephyr.objectives.kto.kto_loss` with the reference point
   ``z = max(0, mean(log π_θ(y'|x) − log π_ref(y'|x)))`` over the batch's KL pairs (detached; averaged across
   ranks before the clamp, as TRL gathers it), ``desirable_weight`` / ``undesirable_weight``, mean over rows;
4. **metrics**: :func:`zephyr.objectives.kto.kto_metrics` plus ``logits/chosen`` / ``logits/rejected``.

Logged under ``train/`` and ``eval/`` with TRL's KTO names: ``loss``, ``kl`` (z), ``rewards/chosen`` and
``logps/chosen`` (desirable rows), ``rewards/rejected`` and ``logps/rejected`` (undesirable rows),
``rewards/margins``, ``logits/chosen``, ``logits/rejected``. A row-class metric is averaged over the rows of
that class in the step (a micro-batch without desirable rows adds nothing to ``rewards/chosen``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from zephyr.modules.base import ZephyrModule, lm_parts
from zephyr.modules.pair_forward import layout_for, pair_logps
from zephyr.modules.reference import PairData, Reference, check_mode
from zephyr.objectives.kto import KTO_LOSS_TYPES, kto_loss, kto_metrics
from zephyr.objectives.logprobs import masked_logits_mean

log = logging.getLogger(__name__)

__all__ = ["KTOModule"]


class KTOModule(ZephyrModule):
    """Kahneman-Tversky optimisation of ``model`` against a frozen copy of its initial weights.

    Trains on unpaired rows (``data_kind``; :func:`zephyr.run.check_objective_data` refuses other data).

    Args:
        model: the policy, initialised from the dSFT checkpoint (a PEFT model trains adapters only).
        optimizer: partial optimizer constructor.
        scheduler: ``{"name", "warmup_ratio"}``.
        beta: β (> 0).
        loss_type: ``kto`` | ``apo_zero_unpaired`` (TRL's two KTO losses; the latter ignores z).
        desirable_weight: λ_D, the weight of desirable rows' losses (> 0).
        undesirable_weight: λ_U, the weight of undesirable rows' losses (> 0).
        reference: a partial :class:`zephyr.modules.reference.Reference` (``objective.reference``), completed
            here with the policy; ``None``: a cache-mode reference whose copy is never loadable.
        chunked_loss: vocabulary projection only at completion positions.
        loss_chunk_size: positions per projection chunk.
    """

    data_kind = "unpaired"

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: dict[str, Any] | None = None,
        *,
        beta: float = 0.1,
        loss_type: str = "kto",
        desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0,
        reference: Callable[..., Reference] | None = None,
        chunked_loss: bool = True,
        loss_chunk_size: int = 1024,
    ):
        super().__init__(model, optimizer, scheduler, chunked_loss=chunked_loss, loss_chunk_size=loss_chunk_size)
        if loss_type not in KTO_LOSS_TYPES:
            raise ValueError(f"objective.loss_type={loss_type!r} must be one of {', '.join(KTO_LOSS_TYPES)}")
        if not beta > 0:
            raise ValueError(f"objective.beta={beta} must be > 0")
        for key, value in (("desirable_weight", desirable_weight), ("undesirable_weight", undesirable_weight)):
            if not value > 0:
                raise ValueError(f"objective.{key}={value} must be > 0")
        reference = reference or partial(Reference)
        check_mode(getattr(reference, "keywords", {}).get("mode", "cache"))
        self.beta, self.loss_type = float(beta), loss_type
        self.desirable_weight, self.undesirable_weight = float(desirable_weight), float(undesirable_weight)
        self.forward_opts = {"average": False, "chunked": chunked_loss, "chunk_size": loss_chunk_size}
        self.save_hyperparameters(ignore=["model", "optimizer", "reference"])
        # a plain attribute, not an nn.Module one: never in checkpoints, the optimizer or Lightning's .train()
        self.reference: Reference = reference(policy=model, **self.forward_opts)

    @property
    def reference_forwards(self) -> int:
        """Reference batches run for this module (cache fills and live steps)."""
        return self.reference.forwards

    def prepare_reference(self, data: PairData | None = None) -> None:
        """Hand the rows to the reference (live: frozen model ready; cache: tables loaded or filled). Idempotent."""
        if self.reference.data is not None:
            return
        data = data if data is not None else getattr(self._trainer, "datamodule", None)
        if data is None:
            raise RuntimeError("KTOModule needs the unpaired data: trainer.fit(module, datamodule=...)")
        data.layout = layout_for(self.model, getattr(data, "layout", "concat"))
        self.reference.prepare(data, device=self.device, trainer=self._trainer)

    def on_fit_start(self) -> None:
        self.prepare_reference()

    def on_validation_start(self) -> None:
        self.prepare_reference()

    def _reference_point(self, policy_kl: torch.Tensor, ref_kl: torch.Tensor) -> torch.Tensor:
        """This batch's mean KL log-ratio, averaged over ranks (TRL gathers it) before ``kto_loss`` clamps it."""
        local = (policy_kl.detach() - ref_kl).mean()
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            local = trainer.strategy.reduce(local, reduce_op="mean")
        return local

    def compute(
        self, batch: dict[str, torch.Tensor], stage: str
    ) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, int]]]:
        """Loss and TRL's KTO metrics as ``{name: (value, rows it averages)}`` for one batch."""
        policy = pair_logps(self.model, batch, **self.forward_opts)  # rows [:B] completions, [B:] KL completions
        self.check_finite(f"{stage}/logps", policy.logps)
        ref, ref_kl = self.reference.logps(batch, "train" if stage == "train" else "eval")
        b = ref.shape[0]
        desirable = batch["label"].to(policy.logps.device, torch.bool)
        logps, counts, logits = policy.logps[:b], policy.token_counts[:b], policy.logits_sum[:b]
        out = kto_loss(
            logps[desirable],
            logps[~desirable],
            ref[desirable],
            ref[~desirable],
            beta=self.beta,
            kl=self._reference_point(policy.logps[b:], ref_kl),
            desirable_weight=self.desirable_weight,
            undesirable_weight=self.undesirable_weight,
            loss_type=self.loss_type,
        )
        loss = out.losses.mean()
        self.check_finite(f"{stage}/loss", loss)
        n_d = int(desirable.sum())
        weights = {"chosen": n_d, "rejected": b - n_d}
        metrics = {
            name: (value, weights.get(name.rsplit("/", 1)[-1], b))
            for name, value in kto_metrics(out, logps[desirable], logps[~desirable]).items()
        }
        vocab = lm_parts(self.model)[1].weight.shape[0]
        for key, rows in (("chosen", desirable), ("rejected", ~desirable)):
            if rows.any():
                metrics[f"logits/{key}"] = (masked_logits_mean(logits[rows], counts[rows], vocab), int(rows.sum()))
        metrics["loss"] = (loss.detach(), b)
        return loss, metrics

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        loss, metrics = self.compute(batch, stage)
        for name, (value, rows) in metrics.items():
            if stage == "train":
                self.accumulate_train_metric(name, value, rows, prog_bar=name == "loss")
            else:
                self.log(f"eval/{name}", value, on_epoch=True, prog_bar=name == "loss", batch_size=rows)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "eval")
