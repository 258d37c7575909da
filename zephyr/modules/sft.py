"""dSFT LightningModule: token-mean cross-entropy on the labelled tokens of padding-free batches.

Logs ``train/loss``, ``train/lr``, ``train/tokens_per_sec`` and ``eval/loss``. With ``chunked_loss`` (default)
the 32k-vocabulary projection runs only at positions whose label counts (assistant replies), chunk by chunk, so
full ``(B, T, V)`` fp32 logits are never built; the result equals the plain path (tested).
"""

from __future__ import annotations

import torch

from zephyr.modules.base import ZephyrModule
from zephyr.objectives.logprobs import logit_softcap
from zephyr.objectives.sft import sft_loss, sft_loss_from_hidden


class SFTModule(ZephyrModule):
    """Supervised fine-tuning of a causal LM (see :class:`zephyr.modules.base.ZephyrModule` for arguments)."""

    data_kind = "sft"

    def __init__(self, model, optimizer, scheduler=None, *, chunked_loss: bool = True, loss_chunk_size: int = 1024):
        super().__init__(model, optimizer, scheduler, chunked_loss=chunked_loss, loss_chunk_size=loss_chunk_size)
        self.save_hyperparameters(ignore=["model", "optimizer"])

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loss, num_loss_tokens)`` for a batch from :func:`zephyr.data.collate.collate_rows`."""
        if self.chunked_loss:
            hidden = self.hidden_states(batch["input_ids"], batch["position_ids"])
            head = self.model.get_output_embeddings()
            return sft_loss_from_hidden(
                hidden,
                head.weight,
                batch["labels"],
                lm_head_bias=head.bias,
                chunk_size=self.loss_chunk_size,
                softcap=logit_softcap(self.model),
            )
        return sft_loss(self.logits(batch["input_ids"], batch["position_ids"]), batch["labels"])

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        loss, n = self.loss(batch)
        self.check_finite(f"{stage}/loss", loss)
        if stage == "train":
            # token-weighted over the micro-batches and ranks of the optimizer step, like eval/loss over the set
            self.accumulate_train_metric("loss", loss.detach(), max(int(n), 1), prog_bar=True)
        else:
            # weighting by counted tokens makes the epoch value the token-mean loss of the whole eval set
            self.log("eval/loss", loss, on_epoch=True, prog_bar=True, batch_size=max(int(n), 1))
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "eval")
