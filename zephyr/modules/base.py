"""What the SFT and DPO LightningModules share: optimizer and schedule, throughput, the non-finite guard.

The optimizer arrives as a ``functools.partial`` from Hydra (``_partial_: true``) and gets the parameters here.
The schedule is linear warmup over ``warmup_ratio`` of the total optimizer steps, then cosine or linear decay
to 0 (or constant), the recipe's schedules. Weight decay defaults to 0 as in the paper.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from zephyr.errors import NonFiniteLossError
from zephyr.models.adapters import unwrapped

SCHEDULES = ("cosine", "linear", "constant")
PLAIN_STRATEGIES = ("SingleDeviceStrategy", "DDPStrategy")
"""Lightning strategies whose parameters are ordinary tensors (fused Adam is safe there)."""


def lm_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(body, head)`` of a causal LM: the decoder giving final hidden states, and the vocabulary projection.

    A PEFT model (``get_base_model``) is looked through: its body and head are the wrapped model's, with the
    adapter layers in place (so ``with model.disable_adapter():`` reaches them too).
    """
    inner = unwrapped(model)
    return inner.base_model, inner.get_output_embeddings()


def token_metrics(
    stats: Any, token_counts: torch.Tensor, accuracy_rows: slice = slice(None)
) -> dict[str, tuple[torch.Tensor, int]]:
    """TRL 1.x ``entropy`` and ``mean_token_accuracy`` of one batch as ``{name: (token mean, tokens)}``.

    ``entropy`` is the mean next-token entropy over every counted position; ``mean_token_accuracy`` the share
    of counted positions of ``accuracy_rows`` (dDPO: the chosen rows, as TRL) whose argmax is the label. Both
    come from the chunked projection's :class:`zephyr.objectives.logprobs.TokenStats`; the token counts are the
    weights that make step and epoch values pooled token means (0 when no token counts, as TRL).
    """
    n_all = int(token_counts.sum())
    n_acc = int(token_counts[accuracy_rows].sum())
    entropy = stats.entropy_sum.sum() / max(n_all, 1)
    accuracy = stats.top1_count[accuracy_rows].sum() / max(n_acc, 1)
    return {"entropy": (entropy.detach(), n_all), "mean_token_accuracy": (accuracy.detach(), n_acc)}


FUSABLE_OPTIMIZERS = (torch.optim.AdamW, torch.optim.Adam)


def make_optimizer(factory: Callable[..., torch.optim.Optimizer], params: list[torch.nn.Parameter], *, plain: bool):
    """``factory(params)``, with torch's fused kernel for Adam/AdamW when the config leaves the choice open.

    Hugging Face's Trainer (and so TRL) defaults to ``adamw_torch_fused`` on torch >= 2.8; the unfused
    per-tensor loop costs about a fifth of a dDPO step on the tiny CPU model. Fused is chosen only for
    ``plain`` runs (one device or DDP: ordinary tensors, and no ``16-mixed`` loss scaler; sharded strategies keep
    their own default) and when the partial sets neither ``fused`` nor ``foreach``
    (``objective.optimizer.fused=false`` opts out). Gradient clipping of a fused step under ``bf16-mixed``:
    :meth:`ZephyrModule.configure_gradient_clipping`.
    """
    import functools

    if (
        plain
        and isinstance(factory, functools.partial)
        and factory.func in FUSABLE_OPTIMIZERS
        and not {"fused", "foreach"} & set(factory.keywords)
        and params
        and all(type(p) is torch.nn.Parameter and p.device.type in ("cpu", "cuda") for p in params)
    ):
        return factory(params, fused=True)
    return factory(params)


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at optimizer step ``s`` (0-based).

    Args:
        schedule: ``cosine``, ``linear`` or ``constant`` after warmup.
        warmup_steps: steps of linear warmup from 0 (step 0 already trains at ``1/warmup_steps``).
        total_steps: optimizer steps in the whole run.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"objective.scheduler.name={schedule!r} must be one of {SCHEDULES}")

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(progress, 1.0)
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


class ModelFactory:
    """How :meth:`ZephyrModule.configure_model` builds the policy inside the strategy's init context.

    A plain class, not a dataclass: Hydra would turn a dataclass argument of ``instantiate`` into a config.

    Args:
        build: zero-argument builder of the bare model (a Hydra ``_partial_`` of the ``model`` group).
        prepare: applied right after the build (adapters, ``torch.compile``); identity when ``None``.
        checkpoint: a local safetensors checkpoint of ``build`` that FSDP2 may load shard by shard onto a
            meta-device build (``None``: build whole, then shard; e.g. random init or adapters).
    """

    def __init__(
        self,
        build: Callable[[], torch.nn.Module],
        prepare: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
        checkpoint: Path | None = None,
    ):
        self.build, self.checkpoint = build, checkpoint
        self.prepare = prepare or (lambda model: model)

    def __call__(self) -> torch.nn.Module:
        """``prepare(build())``; a constructor's ``ValueError`` (naming the key) as a one-line :class:`ConfigError`."""
        from zephyr.errors import ConfigError

        try:
            model = self.build()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return self.prepare(model)


class ZephyrModule(pl.LightningModule):
    """Base for the objective modules: owns the policy model, the optimizer and the schedule.

    Args:
        model: the causal LM being trained, or a factory building it (a :class:`ModelFactory`, or any zero-argument
            callable such as Hydra's ``_partial_: true``), called in :meth:`configure_model`, i.e. inside the
            strategy's init context: DeepSpeed ZeRO-3 partitions the weights as they are created
            (``deepspeed.zero.Init``, ``from_pretrained`` included), FSDP2 shards right after the build. Until then
            ``self.model`` is ``None``.
        optimizer: partial optimizer constructor taking the parameters.
        scheduler: ``{"name": cosine|linear|constant, "warmup_ratio": float}``.
        chunked_loss: compute the vocabulary projection only where labels count (see objectives.logprobs).
        loss_chunk_size: counted positions projected at once when ``chunked_loss``.
    """

    def __init__(
        self,
        model: torch.nn.Module | Callable[[], torch.nn.Module],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: dict[str, Any] | None = None,
        *,
        chunked_loss: bool = True,
        loss_chunk_size: int = 1024,
    ):
        super().__init__()
        built = isinstance(model, torch.nn.Module)
        self.model_factory: Callable[[], torch.nn.Module] | None = None if built else model
        self.model = model if built else None
        self.optimizer_factory = optimizer
        self.scheduler_cfg = dict(scheduler or {"name": "cosine", "warmup_ratio": 0.1})
        self.chunked_loss = chunked_loss
        self.loss_chunk_size = loss_chunk_size
        self._step_started: float | None = None
        self._tokens_since_log = 0
        self._train_sums: dict[str, tuple[torch.Tensor, bool]] = {}  # name -> ([sum value x weight, sum weight], bar)
        self._step_tokens = 0  # non-pad tokens of this optimizer step on this rank
        self.num_tokens_seen = 0  # TRL's ``num_tokens``: training tokens of every rank so far (kept in checkpoints)
        self._kept_grads = None  # KeptGradients on a CPU run under hardware.host_allocator=retain

    # ---- forward helpers -------------------------------------------------------------------------------------
    def _segments(self, position_ids: torch.Tensor) -> dict[str, Any]:
        """A padding-free batch's run lengths for :mod:`zephyr.models.segment_attention`, if the model uses it."""
        from zephyr.models import segment_attention as seg

        if not seg.uses_segment_attention(self.model):
            return {}
        return {seg.KEYWORD: seg.segment_lengths(position_ids)}

    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Final hidden states ``(B, T, H)`` of a padding-free batch (no 2-D mask; position ids restart)."""
        body = lm_parts(self.model)[0]
        out = body(input_ids=input_ids, position_ids=position_ids, use_cache=False, **self._segments(position_ids))
        return out.last_hidden_state

    def logits(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Full logits ``(B, T, V)`` (the straightforward path, used when ``chunked_loss`` is off)."""
        seg = self._segments(position_ids)
        return self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False, **seg).logits

    def check_finite(self, name: str, value: torch.Tensor) -> None:
        if not torch.isfinite(value.detach()).all():
            raise NonFiniteLossError(
                f"{name} is not finite at global step {self.global_step} (batch of epoch {self.current_epoch}); "
                "training stopped, the last checkpoint in checkpoints/ is still usable (lower the learning rate "
                "or check the data)"
            )

    # ---- training metrics ------------------------------------------------------------------------------------
    def accumulate_train_metric(self, name: str, value: torch.Tensor | float, weight: float, prog_bar: bool = False):
        """Add one micro-batch's ``value`` (a mean over ``weight`` tokens or pairs) to ``train/<name>`` of this step.

        At the optimizer step :meth:`log_train_metrics` logs the weighted mean over every micro-batch of the step
        on every rank, so ``train/loss`` is the loss of the global batch whatever the accumulation x devices split
        (kept as tensors: no device sync per micro-batch).
        """
        value = torch.as_tensor(value, device=self.device).detach().float().reshape(())
        weighted = torch.stack([value * float(weight), torch.tensor(float(weight), device=self.device)])
        total, _ = self._train_sums.get(name, (None, prog_bar))
        self._train_sums[name] = (weighted if total is None else total + weighted, prog_bar)

    def log_train_metrics(self) -> None:
        """Log the step's ``train/*`` weighted means (one all-reduce across ranks) and start the next step."""
        if not self._train_sums:
            return
        names = sorted(self._train_sums)
        step_tokens = torch.tensor([float(self._step_tokens), 1.0], device=self.device)
        totals = torch.stack([self._train_sums[n][0] for n in names] + [step_tokens])
        if self.trainer.world_size > 1:
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        self.num_tokens_seen += int(totals[-1, 0].item())
        self._step_tokens = 0
        self.log("train/num_tokens", float(self.num_tokens_seen), on_step=True, on_epoch=False)
        for name, row in zip(names, totals[:-1]):
            self.log(
                f"train/{name}",
                row[0] / row[1].clamp_min(1e-12),
                on_step=True,
                on_epoch=False,
                prog_bar=self._train_sums[name][1],
            )
        self._train_sums = {}

    # ---- throughput --------------------------------------------------------------------------------------------
    def on_train_batch_start(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if self._step_started is None:
            self._step_started = time.perf_counter()
        self._tokens_since_log += int(batch["num_tokens"])
        self._step_tokens += int(batch["num_tokens"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["zephyr_num_tokens"] = self.num_tokens_seen  # so train/num_tokens continues on resume

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.num_tokens_seen = int(checkpoint.get("zephyr_num_tokens", 0))

    def log_throughput(self) -> None:
        """Log ``train/tokens_per_sec`` over the optimizer steps since the last call (non-pad tokens)."""
        if self._step_started is None:
            return
        elapsed = time.perf_counter() - self._step_started
        if elapsed > 0:
            self.log("train/tokens_per_sec", self._tokens_since_log / elapsed, on_step=True, prog_bar=True)
        self._step_started, self._tokens_since_log = None, 0

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0:
            self.log_throughput()

    # ---- sharding (FSDP2 via Lightning's ModelParallelStrategy; a no-op under every other strategy) -------------
    def configure_model(self) -> None:
        """Build the model from its factory (once), then FSDP2 ``fully_shard`` it when the strategy gives a mesh.

        Lightning calls this inside the strategy's init context (``deepspeed.zero.Init`` under ZeRO-3, where a
        ``HfDeepSpeedConfig`` is kept alive so ``from_pretrained`` loads partitioned). :meth:`on_model_built` runs
        right after the build, before any sharding. FSDP2: one unit per decoder layer (:mod:`zephyr.scale.fsdp2`);
        other strategies set no mesh and wrap the model themselves. Idempotent (``trainer.validate`` after ``fit``
        calls it again).
        """
        from zephyr.scale import fsdp2
        from zephyr.scale.host_memory import return_freed_host_memory

        if self.device_mesh is not None and self.device.type == "cpu":
            return_freed_host_memory()  # else glibc keeps FSDP2's freed per-layer buffers resident
        checkpoint = getattr(self.model_factory, "checkpoint", None) if self.device_mesh is not None else None
        if self.model is None and checkpoint is not None:  # FSDP2 from a checkpoint: meta, shard, load shards
            self.model = self.model_factory.prepare(fsdp2.meta_model_from_checkpoint(self.model_factory.build))
            self.on_model_built()
            fsdp2.apply_fully_shard(self, self.model, self.device_mesh)
            fsdp2.materialize(self, self.device)
            fsdp2.load_checkpoint_shards(self.model, checkpoint)
            return
        if self.model is None:
            with fsdp2.zero3_build_context(getattr(self._trainer, "strategy", None) if self._trainer else None):
                self.model = self.model_factory()
            self.on_model_built()
        if self.device_mesh is not None:
            fsdp2.apply_fully_shard(self, self.model, self.device_mesh)

    def on_model_built(self) -> None:
        """Hook run once the policy exists (in ``__init__`` for a built model, else in :meth:`configure_model`)."""

    # ---- optimisation ------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        from zephyr.scale.host_memory import KeptGradients, host_allocator_mode

        params = [p for p in self.model.parameters() if p.requires_grad]
        strategy = type(self.trainer.strategy).__name__
        # under 16-mixed's loss scaler Lightning unscales before clipping, which a fused step would do itself
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None
        opt = make_optimizer(self.optimizer_factory, params, plain=strategy in PLAIN_STRATEGIES and not scaled)
        if self._kept_grads is not None:
            self._kept_grads.remove()
        # a CPU run under hardware.host_allocator=retain (the CPU default) keeps its gradient buffers between steps
        keep = self.device.type == "cpu" and strategy in PLAIN_STRATEGIES and host_allocator_mode() == "retain"
        self._kept_grads = KeptGradients(params) if keep else None
        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(math.ceil(float(self.scheduler_cfg.get("warmup_ratio", 0.0)) * total))
        warmup = int(self.scheduler_cfg.get("warmup_steps", warmup) or 0)
        fn = lr_lambda(self.scheduler_cfg.get("name", "cosine"), warmup, total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """``trainer.gradient_clip_val`` by total norm, where Lightning's own route refuses two of our setups.

        - FSDP1 (``strategy=fsdp`` on GPU): Lightning's ``FSDPPrecision`` refuses norm clipping; the total norm
          over every shard is ``FullyShardedDataParallel.clip_grad_norm_`` on the wrapped root.
        - A fused Adam (:func:`make_optimizer`) under ``bf16-mixed``: Lightning refuses clipping for optimizers that
          unscale inside their step, but bf16 has no loss scaler, so the gradients are already true and
          ``clip_grad_norm_`` over the optimizer's parameters is exact (HF's Trainer clips fused AdamW the same way).

        Everything else (value clipping, ``16-mixed`` with its scaler, DeepSpeed's own ``gradient_clipping``) goes
        through Lightning unchanged.
        """
        from pytorch_lightning.strategies import FSDPStrategy

        if gradient_clip_val and (gradient_clip_algorithm or "norm") == "norm":
            if isinstance(self.trainer.strategy, FSDPStrategy):
                self.trainer.model.clip_grad_norm_(float(gradient_clip_val))
                return
            no_scaler = getattr(self.trainer.precision_plugin, "scaler", None) is None
            if getattr(optimizer, "_step_supports_amp_scaling", False) and no_scaler:
                params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
                torch.nn.utils.clip_grad_norm_(params, float(gradient_clip_val))
                return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        """Lightning's ``optimizer.zero_grad()``, or in place when the gradients are kept (:class:`KeptGradients`)."""
        if self._kept_grads is None:
            optimizer.zero_grad()
        else:
            self._kept_grads.zero()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._kept_grads is not None:
            self._kept_grads.drop_untouched()  # what got no gradient this step is skipped, as with set_to_none
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, prog_bar=False)
        self.log_train_metrics()  # after the last micro-batch's backward, once per optimizer step on every rank
