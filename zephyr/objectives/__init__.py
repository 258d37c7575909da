"""Training objectives as pure tensor functions (no Lightning, no transformers): log-probs, SFT, DPO family.

``logprobs``: completion log-probs from logits or, memory-lean, from hidden states.
``dpo``: preference losses (sigmoid/cDPO, IPO, hinge, robust), TRL's metrics, the RPO NLL term.
``sft``: token-mean cross-entropy.
"""

from zephyr.objectives.dpo import LOSS_TYPES, PreferenceLoss, preference_loss, preference_metrics, rpo_nll
from zephyr.objectives.logprobs import (
    SequenceLogps,
    completion_logits_sum,
    completion_logps,
    masked_logits_mean,
    token_logps_from_hidden,
)
from zephyr.objectives.sft import SFTLoss, sft_loss, sft_loss_from_hidden

__all__ = [
    "LOSS_TYPES",
    "PreferenceLoss",
    "SFTLoss",
    "SequenceLogps",
    "completion_logits_sum",
    "completion_logps",
    "masked_logits_mean",
    "preference_loss",
    "preference_metrics",
    "rpo_nll",
    "sft_loss",
    "sft_loss_from_hidden",
    "token_logps_from_hidden",
]
