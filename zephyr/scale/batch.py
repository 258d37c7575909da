"""One global batch size, set once: per-device micro-batch x accumulation x world size is derived and checked.

The key is ``trainer.global_batch_size`` (sequences, or packed rows, per optimizer step, over all devices).
``data.batch_size`` stays the per-device micro-batch (what memory limits), the world size comes from
``hardware`` (``devices`` x ``num_nodes``), and ``trainer.accumulate_grad_batches`` is derived:

    accumulate = global_batch_size / (data.batch_size x world_size)

So ``+experiment=zephyr_7b_sft`` trains with the paper's 512 on 1, 8 or 16 GPUs alike. With
``global_batch_size: null`` nothing is derived and the global batch is whatever ``data.batch_size x
accumulate_grad_batches x world`` gives. A size that does not divide fails before any model is loaded, naming
the keys and the micro-batch sizes that would work.
"""

from __future__ import annotations

from dataclasses import dataclass

from zephyr.scale import ScaleConfigError


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's batch is laid out.

    Attributes:
        global_batch_size: sequences per optimizer step over all ranks.
        micro_batch_size: sequences per forward/backward on one device (``data.batch_size``).
        accumulate: micro-batches per optimizer step on each device (``trainer.accumulate_grad_batches``).
        world_size: processes (devices x nodes).
    """

    global_batch_size: int
    micro_batch_size: int
    accumulate: int
    world_size: int

    def describe(self) -> str:
        """One line for the launch log, e.g. ``global batch 512 = 16 per device x 2 accumulation x 16 devices``."""
        return (
            f"global batch {self.global_batch_size} = {self.micro_batch_size} per device x {self.accumulate} "
            f"accumulation x {self.world_size} device{'s' if self.world_size != 1 else ''}"
        )


def plan_batches(
    *,
    global_batch_size: int | None,
    micro_batch_size: int,
    world_size: int,
    accumulate: int = 1,
) -> BatchPlan:
    """Derive the accumulation steps from the global batch, or the global batch from the accumulation.

    Args:
        global_batch_size: ``trainer.global_batch_size``; ``None`` keeps ``accumulate`` as given.
        micro_batch_size: ``data.batch_size`` (per device).
        world_size: devices x nodes.
        accumulate: ``trainer.accumulate_grad_batches``; must stay 1 (its default) or equal the derived value
            when ``global_batch_size`` is set, so the global batch is set in one place only.

    Returns:
        The :class:`BatchPlan`.

    Raises:
        ScaleConfigError: a non-positive size, a global batch that ``micro_batch_size x world_size`` does not
            divide (the message lists micro-batch sizes that would), or a conflicting ``accumulate_grad_batches``.
    """
    for key, value in (
        ("data.batch_size", micro_batch_size),
        ("world size (hardware.devices x num_nodes)", world_size),
        ("trainer.accumulate_grad_batches", accumulate),
    ):
        if int(value) < 1:
            raise ScaleConfigError(f"{key}={value} must be >= 1")
    if global_batch_size is None:
        return BatchPlan(micro_batch_size * accumulate * world_size, micro_batch_size, accumulate, world_size)
    if int(global_batch_size) < 1:
        raise ScaleConfigError(f"trainer.global_batch_size={global_batch_size} must be >= 1")
    per_step = micro_batch_size * world_size
    if global_batch_size % per_step:
        if global_batch_size % world_size:
            raise ScaleConfigError(
                f"trainer.global_batch_size={global_batch_size} cannot be split over {world_size} devices "
                f"(hardware.devices x hardware.num_nodes); pick a multiple of {world_size}"
            )
        per_device = global_batch_size // world_size
        options = [d for d in range(1, per_device + 1) if per_device % d == 0]
        raise ScaleConfigError(
            f"trainer.global_batch_size={global_batch_size} is not divisible by data.batch_size={micro_batch_size} "
            f"x {world_size} devices = {per_step}; set data.batch_size to one of {options}"
        )
    derived = global_batch_size // per_step
    if accumulate not in (1, derived):
        raise ScaleConfigError(
            f"trainer.accumulate_grad_batches={accumulate} conflicts with trainer.global_batch_size="
            f"{global_batch_size} (which needs {derived} with data.batch_size={micro_batch_size} on {world_size} "
            "devices); set only trainer.global_batch_size"
        )
    return BatchPlan(global_batch_size, micro_batch_size, derived, world_size)
