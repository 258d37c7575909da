"""dSFT LightningModule: token-mean cross-entropy on the labelled tokens of padding-free batches.

Logs ``train/loss``, ``train/lr``, ``train/tokens_per_sec``, ``eval/loss``, TRL 1.x's ``entropy`` and
``mean_token_accuracy`` (token means over the labelled tokens, from the same chunked projection) and
``train/num_tokens`` (training tokens so far). With ``chunked_loss`` (default)
the 32k-vocabulary projection runs only at positions whose label counts (assistant replies), chunk by chunk, so
full ``(B, T, V)`` fp32 logits are never built; the result equals the plain path (tested).
"""

from __future__ import annotations

import torch

from zephyr.modules.base import ZephyrModule, lm_parts, token_metrics
from zephyr.objectives.logprobs import logit_softcap, token_stats_from_logits
from zephyr.objectives.sft import SFTLoss, sft_loss, sft_loss_from_hidden


class SFTModule(ZephyrModule):
    """Supervised fine-tuning of a causal LM (see :class:`zephyr.modules.base.ZephyrModule` for arguments)."""

    data_kind = "sft"

    def __init__(self, model, optimizer, scheduler=None, *, chunked_loss: bool = True, loss_chunk_size: int = 1024):
        super().__init__(model, optimizer, scheduler, chunked_loss=chunked_loss, loss_chunk_size=loss_chunk_size)
        self.save_hyperparameters(ignore=["model", "optimizer"])

    def loss(self, batch: dict[str, torch.Tensor]) -> SFTLoss:
        """``(loss, num_loss_tokens, token stats)`` for a batch from :func:`zephyr.data.collate.collate_rows`."""
        if self.chunked_loss:
            hidden = self.hidden_states(batch["input_ids"], batch["position_ids"])
            # the head module, not its weight: under FSDP2 / ZeRO-3 its forward gathers the full weight per chunk
            return sft_loss_from_hidden(
                hidden,
                lm_parts(self.model)[1],
                batch["labels"],
                chunk_size=self.loss_chunk_size,
                softcap=logit_softcap(self.model),
                stats=True,
            )
        logits = self.logits(batch["input_ids"], batch["position_ids"])
        loss, n, _ = sft_loss(logits, batch["labels"])
        return SFTLoss(loss, n, token_stats_from_logits(logits, batch["labels"]))

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        loss, n, stats = self.loss(batch)
        self.check_finite(f"{stage}/loss", loss)
        # token-weighted over the micro-batches and ranks of the optimizer step, like eval/* over the whole set
        values = {"loss": (loss.detach(), int(n))}
        values.update(token_metrics(stats, stats.mask.sum(-1)))
        for name, (value, weight) in values.items():
            if stage == "train":
                self.accumulate_train_metric(name, value, max(weight, 1), prog_bar=name == "loss")
            else:
                self.log(f"eval/{name}", value, on_epoch=True, prog_bar=name == "loss", batch_size=max(weight, 1))
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "eval")
