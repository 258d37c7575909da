"""Training objectives as pure tensor functions (no Lightning, no transformers): log-probs, SFT, preference losses.

``logprobs``: completion log-probs from logits or, memory-lean, from hidden states.
``dpo``: the paired preference losses of TRL 1.16 (``preference_loss``), TRL's metrics, the RPO NLL term.
``combine``: weighted loss lists (``loss_type=[...]`` with ``loss_weights``) and their per-term means.
``reference_free``: SimPO, ORPO, CPO (no reference model).
``kto``: KTO on unpaired desirable/undesirable rows.
``weighting``: token-level helpers of WPO (``use_weighting``) and LD-DPO (``ld_alpha``).
``sft``: token-mean cross-entropy.
"""

from zephyr.objectives.combine import CombinedLoss, combined_preference_loss, normalize_loss_list
from zephyr.objectives.dpo import (
    F_DIVERGENCE_LOSS_TYPES,
    F_DIVERGENCE_TYPES,
    LABEL_SMOOTHING_LOSS_TYPES,
    LENGTH_AVERAGED_LOSS_TYPES,
    LOSS_TYPES,
    PreferenceLoss,
    check_loss_type,
    f_divergence_scores,
    preference_loss,
    preference_metrics,
    rpo_nll,
)
from zephyr.objectives.kto import KTO_LOSS_TYPES, KTOLoss, kto_loss, kto_metrics, kto_reference_point
from zephyr.objectives.logprobs import (
    SequenceLogps,
    completion_logits_sum,
    completion_logps,
    masked_logits_mean,
    token_logps_from_hidden,
)
from zephyr.objectives.reference_free import ORPOLoss, cpo_loss, orpo_loss, simpo_loss
from zephyr.objectives.sft import SFTLoss, sft_loss, sft_loss_from_hidden
from zephyr.objectives.weighting import ld_dpo_logps, log_sum_sq_probs, wpo_sequence_weights

__all__ = [
    "F_DIVERGENCE_LOSS_TYPES",
    "F_DIVERGENCE_TYPES",
    "KTO_LOSS_TYPES",
    "LABEL_SMOOTHING_LOSS_TYPES",
    "LENGTH_AVERAGED_LOSS_TYPES",
    "LOSS_TYPES",
    "CombinedLoss",
    "KTOLoss",
    "ORPOLoss",
    "PreferenceLoss",
    "SFTLoss",
    "SequenceLogps",
    "check_loss_type",
    "combined_preference_loss",
    "completion_logits_sum",
    "completion_logps",
    "cpo_loss",
    "f_divergence_scores",
    "kto_loss",
    "kto_metrics",
    "kto_reference_point",
    "ld_dpo_logps",
    "log_sum_sq_probs",
    "masked_logits_mean",
    "normalize_loss_list",
    "orpo_loss",
    "preference_loss",
    "preference_metrics",
    "rpo_nll",
    "sft_loss",
    "sft_loss_from_hidden",
    "simpo_loss",
    "token_logps_from_hidden",
    "wpo_sequence_weights",
]
