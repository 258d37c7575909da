"""dDPO LightningModule: policy vs a frozen dSFT reference on preference pairs, with TRL's metric names.

One training step (Rafailov et al. 2023, arXiv 2305.18290; TRL ``DPOTrainer``) reads as the recipe:

1. **forward**: :func:`zephyr.modules.pair_forward.pair_logps` runs the chosen and rejected completions of the
   batch through the policy in ONE pass (``data.layout``: ``prefix_shared``, one row ``[prompt, chosen,
   rejected]`` per pair with a 4-D mask, each prompt run once; or ``concat``, ``(2B, T)`` padding-free rows;
   under FlashAttention-2 the data is switched to ``concat``) and gives the summed completion log-probs (the mean
   for IPO, whose fixed target ``1/(2β)`` only makes sense for length-averaged log-probs; TRL ≥ 0.8 does the
   same);
2. **reference log-probs**: :class:`zephyr.modules.reference.Reference` (``objective.reference``), from the
   on-disk cache (default; the reference model is built only to fill it, not at all when it is warm) or a live
   frozen model (``reference.mode=live``); for a PEFT policy the reference is the policy with its adapters off;
3. **loss**: :func:`zephyr.objectives.dpo.preference_loss` (sigmoid/cDPO, ipo, hinge, robust), plus
   ``rpo_alpha`` × the length-normalised NLL of the chosen completion when set (RPO, arXiv 2404.19733);
4. **metrics**: :func:`zephyr.objectives.dpo.preference_metrics`.

Logged under ``train/`` (per step) and ``eval/`` (epoch means): ``loss``, ``rewards/chosen``,
``rewards/rejected``, ``rewards/accuracies``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected``,
``logits/chosen``, ``logits/rejected`` (TRL's definitions; logits are v0.12's mean over completion positions ×
vocab), ``kl`` (mean chosen log-ratio, 0 at step 0) and ``nll_loss`` with RPO. Watch ``rewards/chosen``: when
it goes negative while margins grow, DPO is lowering the chosen completions' likelihood too (likelihood
displacement); ``rpo_alpha`` counteracts it.

The pairs reach the reference at fit start as ``self.trainer.datamodule`` (Lightning's own handle, set by
``trainer.fit(module, datamodule=...)``), or explicitly with :meth:`DPOModule.prepare_reference` outside a
trainer (tests, the bench).
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
from zephyr.objectives.dpo import LOSS_TYPES, preference_loss, preference_metrics, rpo_nll
from zephyr.objectives.logprobs import SequenceLogps, masked_logits_mean

log = logging.getLogger(__name__)


class DPOModule(ZephyrModule):
    """Direct preference optimisation of ``model`` against a frozen copy of its initial weights.

    Trains on preference pairs (``data_kind``; :func:`zephyr.run.check_objective_data` refuses other data).

    Args:
        model: the policy, initialised from the dSFT checkpoint (a PEFT model trains adapters only).
        optimizer: partial optimizer constructor.
        scheduler: ``{"name", "warmup_ratio"}`` (the recipe: linear, 0.1).
        beta: β, the KL-penalty strength (IPO's τ, hinge's 1/margin).
        loss_type: ``sigmoid`` | ``ipo`` | ``hinge`` | ``robust``.
        label_smoothing: ε for cDPO (``sigmoid``) or rDPO (``robust``).
        rpo_alpha: weight of the chosen-completion NLL term (``None`` or 0: plain DPO).
        reference: a partial :class:`zephyr.modules.reference.Reference` (``objective.reference``, built by Hydra
            with ``_partial_: true``), completed here with the policy; ``None``: a cache-mode reference whose
            copy is never loadable (enough for a PEFT policy or a warm cache).
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
        reference: Callable[..., Reference] | None = None,
        chunked_loss: bool = True,
        loss_chunk_size: int = 1024,
    ):
        super().__init__(model, optimizer, scheduler, chunked_loss=chunked_loss, loss_chunk_size=loss_chunk_size)
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"objective.loss_type={loss_type!r} must be one of {', '.join(LOSS_TYPES)}")
        if not beta > 0:
            raise ValueError(f"objective.beta={beta} must be > 0")
        reference = reference or partial(Reference)
        check_mode(getattr(reference, "keywords", {}).get("mode", "cache"))  # before the fingerprint is hashed
        self.beta, self.loss_type, self.label_smoothing = float(beta), loss_type, float(label_smoothing)
        self.rpo_alpha = float(rpo_alpha) if rpo_alpha else 0.0
        self.average = loss_type == "ipo"  # IPO regresses length-averaged log-ratios (dpo_math.md §2)
        self.forward_opts = {"average": self.average, "chunked": chunked_loss, "chunk_size": loss_chunk_size}
        self.save_hyperparameters(ignore=["model", "optimizer", "reference"])
        # a plain attribute, not an nn.Module one: never in checkpoints, the optimizer or Lightning's .train()
        self.reference: Reference = reference(policy=model, **self.forward_opts)

    @property
    def reference_forwards(self) -> int:
        """Reference batches run for this module (cache fills and live steps)."""
        return self.reference.forwards

    # ---- wiring -------------------------------------------------------------------------------------------------
    def prepare_reference(self, data: PairData | None = None) -> None:
        """Hand the pairs to the reference (live: frozen model ready; cache: tables loaded or filled). Idempotent.

        Args:
            data: the preference data; ``None``: the trainer's data module.
        """
        if self.reference.data is not None:
            return
        data = data if data is not None else getattr(self._trainer, "datamodule", None)
        if data is None:
            raise RuntimeError("DPOModule needs the preference data: trainer.fit(module, datamodule=...)")
        data.layout = layout_for(self.model, getattr(data, "layout", "concat"))
        self.reference.prepare(data, device=self.device, trainer=self._trainer)

    def on_fit_start(self) -> None:
        self.prepare_reference()

    def on_validation_start(self) -> None:
        self.prepare_reference()

    # ---- the step -----------------------------------------------------------------------------------------------
    def compute(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and TRL metrics (unprefixed names) for a preference batch in either layout (see ``pair_logps``)."""
        policy = pair_logps(self.model, batch, **self.forward_opts)
        self.check_finite(f"{stage}/logps", policy.logps)
        ref_chosen, ref_rejected = self.reference.logps(batch, "train" if stage == "train" else "eval")
        loss, chosen_rewards, rejected_rewards, nll = self.loss(policy, ref_chosen, ref_rejected)
        self.check_finite(f"{stage}/loss", loss)
        metrics = self.metrics(policy, ref_chosen, chosen_rewards, rejected_rewards)
        if nll is not None:
            metrics["nll_loss"] = nll.detach()
        metrics["loss"] = loss.detach()
        return loss, metrics

    def loss(
        self, policy: SequenceLogps, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(loss, chosen_rewards, rejected_rewards, rpo_nll or None)``: the batch-mean preference loss (+ RPO)."""
        b = ref_chosen.shape[0]
        losses, chosen_rewards, rejected_rewards = preference_loss(
            policy.logps[:b],
            policy.logps[b:],
            ref_chosen,
            ref_rejected,
            beta=self.beta,
            loss_type=self.loss_type,
            label_smoothing=self.label_smoothing,
        )
        if not self.rpo_alpha:
            return losses.mean(), chosen_rewards, rejected_rewards, None
        counts = policy.token_counts[:b]
        nll = rpo_nll(policy.logps[:b] * counts if self.average else policy.logps[:b], counts)
        return losses.mean() + self.rpo_alpha * nll, chosen_rewards, rejected_rewards, nll

    def metrics(
        self, policy: SequenceLogps, ref_chosen: torch.Tensor, chosen_rewards: torch.Tensor, rejected_rewards
    ) -> dict[str, torch.Tensor]:
        """TRL's rewards/logps/logits metrics and ``kl`` for one batch (unprefixed names)."""
        b = ref_chosen.shape[0]
        vocab = lm_parts(self.model)[1].weight.shape[0]
        return preference_metrics(
            chosen_rewards,
            rejected_rewards,
            policy.logps[:b],
            policy.logps[b:],
            masked_logits_mean(policy.logits_sum[:b], policy.token_counts[:b], vocab),
            masked_logits_mean(policy.logits_sum[b:], policy.token_counts[b:], vocab),
            ref_chosen_logps=ref_chosen,
        )

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
