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
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

from zephyr.modules.base import ZephyrModule, lm_parts, token_metrics
from zephyr.modules.pair_forward import layout_for, pair_logps
from zephyr.modules.reference import PairData, Reference, check_mode
from zephyr.objectives.combine import combined_preference_loss, normalize_loss_list
from zephyr.objectives.dpo import LENGTH_AVERAGED_LOSS_TYPES, LOSS_TYPES, preference_metrics, rpo_nll
from zephyr.objectives.logprobs import SequenceLogps, masked_logits_mean
from zephyr.objectives.reference_free import cpo_loss, orpo_loss, simpo_loss
from zephyr.objectives.weighting import wpo_sequence_weights

log = logging.getLogger(__name__)


def loss_terms(
    loss_type: str | Sequence[str], loss_weights: Sequence[float] | None = None, rpo_alpha: float | None = None
) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """``objective.loss_type`` / ``loss_weights`` / ``rpo_alpha`` as ``(names, weights)`` (``rpo_alpha``: + ``sft``).

    Raises:
        ValueError: one line naming the key: an unknown name (listing the known ones), weights of another length,
            ``rpo_alpha`` together with an ``sft`` term.
    """
    names = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    for name in names:
        if name not in LOSS_TYPES:
            raise ValueError(f"objective.loss_type={name!r} is not a paired loss; known: {', '.join(LOSS_TYPES)}")
    try:
        names, weights = normalize_loss_list(names, loss_weights)
    except ValueError as e:
        raise ValueError(f"objective.{e}") from None
    if rpo_alpha:
        if "sft" in names:
            raise ValueError(
                "objective.rpo_alpha is the 'sft' term: give it in objective.loss_type or rpo_alpha, not both"
            )
        names, weights = (*names, "sft"), (*weights, float(rpo_alpha))
    return names, weights


class DPOModule(ZephyrModule):
    """Direct preference optimisation of ``model`` against a frozen copy of its initial weights.

    Trains on preference pairs (``data_kind``; :func:`zephyr.run.check_objective_data` refuses other data).

    Args:
        model: the policy, initialised from the dSFT checkpoint (a PEFT model trains adapters only).
        optimizer: partial optimizer constructor.
        scheduler: ``{"name", "warmup_ratio"}`` (the recipe: linear, 0.1).
        beta: β, the KL-penalty strength (IPO's τ, hinge's 1/margin).
        loss_type: one name of :data:`zephyr.objectives.dpo.LOSS_TYPES` or a list (TRL 1.x), summed with
            ``loss_weights`` (default all 1); each term is logged as ``loss/<name>``.
        loss_weights: one weight per name.
        label_smoothing: ε for the terms that define it (cDPO ``sigmoid``, rDPO ``robust``, ``exo_pair``, ``aot*``).
        rpo_alpha: the ``sft`` term with this weight (RPO's per-row NLL mean, zephyr's numbers so far).
        discopop_tau: DiscoPOP's τ.
        f_divergence_type: f-DPO score (``reverse_kl`` | ``forward_kl`` | ``js_divergence`` | ``alpha_divergence``).
        f_alpha_divergence_coef: α of ``alpha_divergence``.
        use_weighting: WPO pair weights from the policy's own next-token distributions.
        ld_alpha: LD-DPO (arXiv 2409.06411): each completion's tail past the shorter one's length counts α times, for
            the policy and the reference (``None``: plain sums).
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
        loss_type: str | Sequence[str] = "sigmoid",
        loss_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        rpo_alpha: float | None = None,
        discopop_tau: float = 0.05,
        f_divergence_type: str = "reverse_kl",
        f_alpha_divergence_coef: float = 0.5,
        use_weighting: bool = False,
        ld_alpha: float | None = None,
        reference: Callable[..., Reference] | None = None,
        chunked_loss: bool = True,
        loss_chunk_size: int = 1024,
    ):
        super().__init__(model, optimizer, scheduler, chunked_loss=chunked_loss, loss_chunk_size=loss_chunk_size)
        self.names, self.weights = loss_terms(loss_type, loss_weights, rpo_alpha)
        if not beta > 0:
            raise ValueError(f"objective.beta={beta} must be > 0")
        reference = reference or partial(Reference)
        check_mode(getattr(reference, "keywords", {}).get("mode", "cache"))  # before the fingerprint is hashed
        self.beta, self.label_smoothing = float(beta), float(label_smoothing)
        self.rpo_alpha = float(rpo_alpha) if rpo_alpha else 0.0
        self.use_weighting = bool(use_weighting)
        self.options = {
            "discopop_tau": float(discopop_tau),
            "f_divergence_type": str(f_divergence_type),
            "f_alpha_divergence_coef": float(f_alpha_divergence_coef),
            "sft_token_mean": not self.rpo_alpha,  # rpo_alpha keeps RPO's per-row mean; a listed sft is TRL's
        }
        # ipo / sigmoid_norm alone read length-averaged log-probs (policy and reference); any other list gets
        # sums with token counts, and each term normalises as TRL does (also under a non-default f-divergence)
        # (LD-DPO re-weights sums: then sums with counts too)
        averaged = set(self.names) <= set(LENGTH_AVERAGED_LOSS_TYPES)
        self.average = averaged and f_divergence_type == "reverse_kl" and ld_alpha is None
        self.forward_opts = {"average": self.average, "chunked": chunked_loss, "chunk_size": loss_chunk_size}
        if ld_alpha is not None:  # policy and reference (its cache key too) sum log-probs the LD-DPO way
            check_ld_alpha(ld_alpha)
            self.forward_opts["ld_alpha"] = float(ld_alpha)
        self._metric_weights: dict[str, int] = {}
        self.save_hyperparameters(ignore=["model", "optimizer", "reference"])
        # a plain attribute, not an nn.Module one: never in checkpoints, the optimizer or Lightning's .train()
        self._reference_partial = partial(reference, **self.forward_opts)
        self.reference: Reference | None = None
        if self.model is not None:  # else completed with the policy once configure_model has built it
            self.on_model_built()

    def on_model_built(self) -> None:
        """Complete the reference with the policy (before sharding: a random init is fingerprinted whole)."""
        self.reference = self._reference_partial(policy=self.model)

    @classmethod
    def validate_config(cls, objective: Any) -> None:
        """Pre-model check of ``objective`` (a config mapping): ``ValueError`` for bad loss names or weights."""
        loss_terms(objective.get("loss_type", "sigmoid"), objective.get("loss_weights"), objective.get("rpo_alpha"))
        if objective.get("ld_alpha") is not None:
            check_ld_alpha(objective.get("ld_alpha"))

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

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # TR-DPO (objective.reference.sync; else a no-op), before any checkpoint callback sees this step
        self.reference.after_optimizer_step(self.global_step + 1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if (state := self.reference.state_dict()) is not None:  # a synced reference: its weights resume with it
            checkpoint["reference"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.reference.load_state_dict(checkpoint.get("reference"))

    # ---- the step -----------------------------------------------------------------------------------------------
    def compute(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and TRL metrics (unprefixed names) for a preference batch in either layout (see ``pair_logps``)."""
        policy = pair_logps(self.model, batch, stats=True, **self.forward_opts)
        self.check_finite(f"{stage}/logps", policy.logps)
        ref_chosen, ref_rejected = self.reference.logps(batch, "train" if stage == "train" else "eval")
        loss, chosen_rewards, rejected_rewards, terms = self.loss(policy, ref_chosen, ref_rejected)
        self.check_finite(f"{stage}/loss", loss)
        metrics = self.metrics(policy, ref_chosen, chosen_rewards, rejected_rewards)
        for name, value in terms.items():
            metrics[name] = value.detach()
        metrics["loss"] = loss.detach()
        return loss, metrics

    def loss(
        self, policy: SequenceLogps, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, chosen_rewards, rejected_rewards, terms)``: the weighted sum of the listed losses' batch means.

        ``terms`` holds each term's unweighted mean as ``loss/<name>`` (and RPO's ``nll_loss``, as before).
        """
        b = ref_chosen.shape[0]
        counts = {}
        if not self.average:
            counts = {"chosen_token_counts": policy.token_counts[:b], "rejected_token_counts": policy.token_counts[b:]}
        weights = None
        if self.use_weighting:  # WPO, from the policy's own distributions (detached)
            st = policy.stats
            w = wpo_sequence_weights(st.token_logps, st.log_sum_sq, st.mask)
            weights = w[:b] * w[b:]
        out = combined_preference_loss(
            policy.logps[:b],
            policy.logps[b:],
            ref_chosen,
            ref_rejected,
            beta=self.beta,
            loss_type=self.names,
            loss_weights=self.weights,
            label_smoothing=self.label_smoothing,
            pair_weights=weights,
            **counts,
            **self.options,
        )
        terms = {f"loss/{name}": value for name, value in out.terms.items()}
        if self.rpo_alpha:
            terms["nll_loss"] = out.terms["sft"]
        return out.loss, out.chosen_rewards, out.rejected_rewards, terms

    def metrics(
        self,
        policy: SequenceLogps,
        ref_chosen: torch.Tensor | None,
        chosen_rewards: torch.Tensor,
        rejected_rewards: torch.Tensor,
        logps: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """TRL's rewards/logps/logits metrics, ``entropy``, ``mean_token_accuracy`` and ``kl`` (with a reference).

        ``logps``: the ``(2B,)`` log-probs the loss read (default ``policy.logps``), logged as ``logps/*``.
        """
        b = chosen_rewards.shape[0]
        logps = policy.logps if logps is None else logps
        vocab = lm_parts(self.model)[1].weight.shape[0]
        extra = token_metrics(policy.stats, policy.token_counts, slice(0, b)) if policy.stats is not None else {}
        self._metric_weights = {name: n for name, (_, n) in extra.items()}
        return {name: value for name, (value, _) in extra.items()} | preference_metrics(
            chosen_rewards,
            rejected_rewards,
            logps[:b],
            logps[b:],
            masked_logits_mean(policy.logits_sum[:b], policy.token_counts[:b], vocab),
            masked_logits_mean(policy.logits_sum[b:], policy.token_counts[b:], vocab),
            ref_chosen_logps=ref_chosen,
        )

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        loss, metrics = self.compute(batch, stage)
        b = int(batch["index"].shape[0])
        for name, value in metrics.items():
            n = self._metric_weights.get(name, b)  # token means (entropy, accuracy) are token-weighted
            if stage == "train":
                # pair-weighted over the micro-batches and ranks of the optimizer step
                self.accumulate_train_metric(name, value.detach(), n, prog_bar=name == "loss")
            else:
                self.log(f"eval/{name}", value, on_epoch=True, prog_bar=name == "loss", batch_size=max(n, 1))
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "eval")


def check_ld_alpha(ld_alpha: Any) -> None:
    """``ValueError`` naming ``objective.ld_alpha`` unless it is a number in [0, 1] (LD-DPO's α)."""
    if isinstance(ld_alpha, bool) or not isinstance(ld_alpha, (int, float)) or not 0.0 <= ld_alpha <= 1.0:
        raise ValueError(f"objective.ld_alpha={ld_alpha!r} must be in [0, 1] (LD-DPO; null: off)")


#: The reference-free objectives (``objective=simpo|orpo|cpo``).
REFERENCE_FREE_LOSSES = ("simpo", "orpo", "cpo")


class ReferenceFreeModule(DPOModule):
    """SimPO, ORPO or CPO: the policy's own pair log-probs, no reference (no copy built, no cache, zero forwards).

    The forward, metrics and step are :class:`DPOModule`'s; only the loss differs
    (:mod:`zephyr.objectives.reference_free`). The NLL term is TRL's token-mean cross-entropy on the chosen rows.

    Args:
        model: the policy.
        optimizer: partial optimizer constructor.
        scheduler: ``{"name", "warmup_ratio"}``.
        loss: ``simpo`` (length-averaged, margin ``gamma``), ``orpo`` (odds ratio on length-averaged log-probs,
            ``beta`` is the paper's λ) or ``cpo`` (summed log-probs).
        beta: β (λ for ORPO).
        gamma: SimPO's target margin γ.
        nll_weight: weight of the chosen NLL (ORPO: 1, the paper's; CPO: TRL ``cpo_alpha``; SimPO: 0).
        label_smoothing: ε (SimPO, CPO).
        chunked_loss: vocabulary projection only at completion positions.
        loss_chunk_size: positions per projection chunk.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: dict[str, Any] | None = None,
        *,
        loss: str = "simpo",
        beta: float = 2.0,
        gamma: float = 0.5,
        nll_weight: float = 0.0,
        label_smoothing: float = 0.0,
        chunked_loss: bool = True,
        loss_chunk_size: int = 1024,
    ):
        ZephyrModule.__init__(
            self, model, optimizer, scheduler, chunked_loss=chunked_loss, loss_chunk_size=loss_chunk_size
        )
        if loss not in REFERENCE_FREE_LOSSES:
            raise ValueError(f"objective.loss={loss!r} must be one of {', '.join(REFERENCE_FREE_LOSSES)}")
        if not beta > 0:
            raise ValueError(f"objective.beta={beta} must be > 0")
        self.objective, self.beta, self.gamma = loss, float(beta), float(gamma)
        self.nll_weight, self.label_smoothing = float(nll_weight), float(label_smoothing)
        self.forward_opts = {"average": False, "chunked": chunked_loss, "chunk_size": loss_chunk_size}
        self._metric_weights = {}
        self.save_hyperparameters(ignore=["model", "optimizer"])
        self.reference = None

    @classmethod
    def validate_config(cls, objective: Any) -> None:
        """Refuse ``objective.reference.*`` (nothing to configure: these objectives have no reference)."""
        if objective.get("reference") is not None:
            raise ValueError(
                f"objective={objective.get('loss', 'simpo')} is reference-free: remove the objective.reference.* "
                "settings (no reference model is built and no cache is filled)"
            )

    @property
    def reference_forwards(self) -> int:
        """Always 0: no reference exists."""
        return 0

    def prepare_reference(self, data: PairData | None = None) -> None:
        """Only the layout check (FlashAttention-2 needs ``concat``); there is no reference to prepare."""
        data = data if data is not None else getattr(self._trainer, "datamodule", None)
        if data is not None:
            data.layout = layout_for(self.model, getattr(data, "layout", "concat"))

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        ZephyrModule.optimizer_step(self, *args, **kwargs)  # no reference to sync

    def on_model_built(self) -> None:
        """Nothing to complete: no reference."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        ZephyrModule.on_save_checkpoint(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        ZephyrModule.on_load_checkpoint(self, checkpoint)

    def compute(self, batch: dict[str, torch.Tensor], stage: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and metrics of a preference batch without a reference (``loss/<term>``, ``nll_loss``)."""
        policy = pair_logps(self.model, batch, stats=True, **self.forward_opts)
        self.check_finite(f"{stage}/logps", policy.logps)
        b = policy.logps.shape[0] // 2
        counts = policy.token_counts
        logps = policy.logps if self.objective == "cpo" else policy.logps / counts.clamp(min=1)
        nll = rpo_nll(policy.logps[:b], counts[:b], token_mean=True)
        extra: dict[str, torch.Tensor] = {}
        if self.objective == "simpo":
            out = simpo_loss(
                logps[:b], logps[b:], beta=self.beta, gamma=self.gamma, label_smoothing=self.label_smoothing
            )
        elif self.objective == "orpo":
            out = orpo_loss(logps[:b], logps[b:], beta=self.beta)
            extra = {"log_odds_ratio": out.log_odds_ratio.mean(), "log_odds_chosen": out.log_odds_chosen.mean()}
        else:
            out = cpo_loss(logps[:b], logps[b:], beta=self.beta, label_smoothing=self.label_smoothing)
        term = out.losses.mean()
        loss = term + self.nll_weight * nll if self.nll_weight else term
        self.check_finite(f"{stage}/loss", loss)
        metrics = self.metrics(policy, None, out.chosen_rewards, out.rejected_rewards, logps=logps)
        metrics.update(extra)
        metrics[f"loss/{self.objective}"] = term.detach()
        metrics["nll_loss"] = nll.detach()
        metrics["loss"] = loss.detach()
        return loss, metrics
