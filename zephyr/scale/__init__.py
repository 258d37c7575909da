"""Scaling out: strategies (DDP, FSDP, DeepSpeed ZeRO), the global batch plan, memory estimates, sharded export.

``strategies`` turns the ``strategy`` + ``hardware`` config groups into a Lightning strategy (and the DeepSpeed
config dict); ``batch`` derives per-device batch x accumulation x world size from one global batch size;
``memory`` estimates per-device memory before launch; ``fsdp2`` applies FSDP2 ``fully_shard`` for Lightning's
``ModelParallelStrategy`` (each rank's share of the batches is the data modules' batch sampler's); ``gather`` collects
full weights from any strategy for the Hugging Face export; ``deepspeed_cpu_check`` runs the generated ZeRO-3
config through the real ``deepspeed.initialize`` on CPU under ``torchrun``.
"""

from __future__ import annotations


class ScaleConfigError(ValueError):
    """A strategy / hardware / batch setting that cannot run; the message names the config keys."""
