"""Per-device memory estimate (parameters + gradients + optimizer states + rough activations) per strategy.

Printed as a rich table before launch so a user knows whether a run fits *before* it allocates anything, and
runnable alone: ``python -m zephyr.scale.memory +experiment=zephyr_7b_sft hardware=a100x16``.

Model states follow the ZeRO paper's accounting (Rajbhandari et al. 2020, arXiv 1910.02054, §3), with
``P`` parameters and ``N`` ranks:

- DeepSpeed mixed precision: 16-bit parameters (2 B), 16-bit gradients (2 B), fp32 master weights + Adam
  momentum + variance (12 B). Stage 2 shards gradients and optimizer states (``2P + 14P/N``), stage 3 shards
  everything (``16P/N``), offload moves the parameter and optimizer shards to host RAM.
- torch AdamW under Lightning (``auto``, ``ddp``, ``fsdp``): parameters, gradients and two Adam states all in
  the weight dtype ``model.dtype`` (``w`` bytes each: ``4wP``; fp32 master weights with ``bf16-mixed`` give
  16 B/param, bf16 weights 8 B/param). FSDP ``FULL_SHARD`` divides all of it by ``N``; DDP divides nothing.

Activations are a rough upper guide for one micro-batch of ``b`` rows x ``s`` tokens with hidden ``h`` and ``L``
layers, using the per-layer ``34·s·b·h`` bytes (16-bit) of Korthikanti et al. 2022 (arXiv 2205.05198, §4.1)
without the attention-score term (FlashAttention / SDPA never store it). Gradient checkpointing keeps only each
layer's input (``2·s·b·h`` per layer) plus one layer being recomputed. The loss adds fp32 logits: the whole
``b·s·V`` block, or one ``chunk x V`` block with ``objective.chunked_loss`` (under every strategy: the
chunks go through the ``lm_head`` module, whose forward gathers a sharded weight). DPO doubles the rows (chosen and
rejected go through together) and a live reference model adds its unsharded weights. Framework overhead
(CUDA context ~0.5-1 GB, allocator fragmentation, communication buckets) is not included: keep ~10 % headroom.
The ``fsdp`` row also leaves out FSDP2's unsharded working set: the root unit (embeddings, final norm, LM head)
is not resharded after forward, so its full weights and gradient add ``2·w·P_root·(1 - 1/N)`` during a step
(0.13 GB for the 32k x 512 embeddings of the CPU test shape), plus one or two gathered decoder layers. Measured
on CPU (52M-parameter checkpoint, 2 ranks, :class:`PeakMemory`): estimate 0.78 GB, per-rank peaks 0.78 and
0.87 GB (0 to -10 %); before :func:`zephyr.scale.host_memory.return_freed_host_memory` glibc's heap kept FSDP2's
freed per-layer buffers resident and the peaks were 1.21 / 1.31 GB (the -39 % the README once reported).

The model is the checkpoint's own when ``model.path`` is a local checkpoint: its ``config.json`` is built on
the meta device (no weights read) and its parameters counted exactly, whatever the family (tied embeddings,
attention biases, extra norms); otherwise ``model.config``'s dims. With ``adapter=lora`` / ``adapter=qlora``
only the LoRA matrices (``r·(in + out)`` per targeted linear layer, plus ``modules_to_save`` copies) have
gradients and Adam states; the frozen base is weights only, 4-bit NF4 for QLoRA's decoder linears (0.5 B per
weight plus ~0.127 bit of double-quantized scales), and the dDPO reference is that same base with the adapters
disabled (no second copy). PEFT's LoRA layers add activations of their own (:func:`lora_activation_bytes`).
Measured on the 96M CPU shape (r 16, dropout 0.05, 2 x 256 tokens, fp32): estimate 1.29 GB, working set 1.24 GB
(glibc's mmap threshold fixed at 128 KiB); with glibc's default dynamic threshold heap fragmentation takes the
peak to 1.72 GB.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

GB = 1e9
STRATEGY_ROWS = ("auto", "ddp", "fsdp", "deepspeed_stage_2", "deepspeed_stage_3", "deepspeed_stage_3_offload")
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
NF4_BYTES = 0.5 + 0.127 / 8  # a 4-bit weight plus its double-quantized block scale (QLoRA paper, §2)


def count_parameters(model_config: dict[str, Any]) -> int:
    """Parameters of a Mistral/Llama-style decoder from its config (no weights needed).

    Embeddings ``V·h``; per layer q and o ``h·(heads·d)``, k and v ``h·(kv_heads·d)`` with ``d = h / heads``
    (or ``head_dim``), SwiGLU gate/up/down ``3·h·I``, two RMSNorms ``2h``; a final norm ``h``; the LM head ``V·h``
    unless tied. Mistral-7B-v0.1 gives 7,241,732,096.

    Args:
        model_config: ``MistralConfig`` fields (``vocab_size``, ``hidden_size``, ``intermediate_size``,
            ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``, ``tie_word_embeddings``).
    """
    c = model_config
    h, v, inter, layers = (
        int(c["hidden_size"]),
        int(c["vocab_size"]),
        int(c["intermediate_size"]),
        int(c["num_hidden_layers"]),
    )
    heads = int(c["num_attention_heads"])
    kv = int(c.get("num_key_value_heads") or heads)
    d = int(c.get("head_dim") or h // heads)
    per_layer = 2 * h * heads * d + 2 * h * kv * d + 3 * h * inter + 2 * h
    head = 0 if c.get("tie_word_embeddings", False) else v * h
    return v * h + layers * per_layer + h + head


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device (GPU) and per rank in host RAM for one strategy.

    Attributes:
        strategy: the ``conf/strategy`` option.
        params: parameter bytes resident on the device.
        grads: gradient bytes on the device.
        optimizer: optimizer-state bytes on the device (fp32 master weights included for DeepSpeed).
        activations: rough activation + loss bytes for one micro-batch.
        host: bytes offloaded to host RAM per rank (0 without offload).
    """

    strategy: str
    params: float
    grads: float
    optimizer: float
    activations: float
    host: float = 0.0

    @property
    def total(self) -> float:
        """Device bytes: states + activations."""
        return self.params + self.grads + self.optimizer + self.activations


def activation_bytes(
    *,
    micro_batch_size: int,
    seq_len: int,
    hidden_size: int,
    num_layers: int,
    vocab_size: int,
    act_bytes: int = 2,
    gradient_checkpointing: bool = True,
    chunked_loss: bool = True,
    loss_chunk_size: int = 1024,
) -> float:
    """Rough activation bytes of one micro-batch (see the module docstring for the formula and its source)."""
    sbh = micro_batch_size * seq_len * hidden_size
    scale = act_bytes / 2  # the 34 sbh figure is for 16-bit activations
    if gradient_checkpointing:
        layers = num_layers * 2 * sbh * scale + 34 * sbh * scale
    else:
        layers = num_layers * 34 * sbh * scale
    rows = loss_chunk_size if chunked_loss else micro_batch_size * seq_len
    loss = rows * vocab_size * 4 * 2  # fp32 logits and their gradient
    return layers + loss


def estimate(
    strategy: str,
    *,
    n_params: int,
    world_size: int,
    weight_bytes: int,
    activations: float,
    reference_bytes: float = 0.0,
    fsdp_full_shard: bool = True,
    precision: str = "bf16-mixed",
    layer_params: int = 0,
    frozen_bytes: float = 0.0,
) -> MemoryEstimate:
    """Per-device memory of one strategy.

    Args:
        strategy: one of :data:`STRATEGY_ROWS`.
        n_params: trainable parameters ``P``.
        world_size: ranks ``N``.
        weight_bytes: bytes per weight of ``model.dtype`` (Lightning strategies keep it for grads and Adam).
        activations: from :func:`activation_bytes`.
        reference_bytes: an unsharded frozen reference model on every device (DPO live mode).
        fsdp_full_shard: ``FULL_SHARD`` (else ``SHARD_GRAD_OP``: parameters replicated).
        precision: ``hardware.precision`` (DeepSpeed uses 16-bit weights unless ``32``).
        layer_params: parameters of one decoder layer (the working set gathered under parameter offload).
        frozen_bytes: weights without gradients or optimizer states (an adapter run's base), sharded where the
            strategy shards parameters.

    Raises:
        ValueError: unknown ``strategy``.
    """
    p, n = float(n_params), max(int(world_size), 1)
    if strategy in ("auto", "ddp", "fsdp"):
        w = float(weight_bytes)
        shard = n if strategy == "fsdp" else 1
        params = (p * w + frozen_bytes) / (shard if fsdp_full_shard else 1)
        return MemoryEstimate(strategy, params, p * w / shard, 2 * p * w / shard, activations + reference_bytes)
    if not strategy.startswith("deepspeed_stage_"):
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGY_ROWS}")
    half = 4.0 if precision.startswith("32") else 2.0
    opt = 12.0 if half == 2.0 else 8.0  # fp32 master copy only exists with 16-bit training weights
    acts = activations + reference_bytes
    if strategy == "deepspeed_stage_2":
        return MemoryEstimate(strategy, p * half + frozen_bytes, p * half / n, p * opt / n, acts)
    if strategy == "deepspeed_stage_3":
        return MemoryEstimate(strategy, (p * half + frozen_bytes) / n, p * half / n, p * opt / n, acts)
    if strategy == "deepspeed_stage_3_offload":
        working = 2 * layer_params * half  # about two gathered decoder layers (current + prefetched)
        return MemoryEstimate(strategy, working, 0.0, 0.0, acts, host=(p * (2 * half + opt) + frozen_bytes) / n)
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGY_ROWS}")


def checkpoint_config(cfg: DictConfig) -> dict[str, Any] | None:
    """The ``config.json`` of a local ``model.path`` checkpoint, or ``None`` (random init, or a hub name).

    Raises:
        ValueError: the file exists but is not JSON (naming it).
    """
    path = cfg.model.get("path")
    if not path:
        return None
    file = Path(str(path)).expanduser() / "config.json"
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"model.path={path}: unreadable config.json ({e})") from None


def meta_model(model_config: dict[str, Any]):
    """The causal LM of ``model_config`` (a ``config.json`` dict, or ``model.config`` keys) on the meta device.

    No memory is allocated; ``model_type`` picks the family (default Mistral, as
    :func:`zephyr.models.mistral.build_model`).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {k: v for k, v in model_config.items() if k not in ("architectures", "transformers_version")}
    hf_config = AutoConfig.for_model(str(kwargs.pop("model_type", "mistral")), **kwargs)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config)


def _lora_targets(model, adapter: dict[str, Any]) -> list:
    """The linear layers ``adapter`` puts LoRA matrices on (``target_modules``: ``None`` / ``all-linear`` = every
    linear layer of the decoder blocks, as :func:`zephyr.models.adapters.apply_adapter` does).
    """
    import torch

    from zephyr.models.adapters import decoder_linear_names

    targets = adapter.get("target_modules")
    if targets is None or targets == "all-linear":
        targets, root = decoder_linear_names(model), model.get_decoder()
    else:
        targets, root = [targets] if isinstance(targets, str) else list(targets), model
    return [
        m for name, m in root.named_modules() if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets
    ]


def lora_parameters(model, adapter: dict[str, Any]) -> int:
    """Trainable parameters LoRA adds to ``model``: ``r·(in + out)`` per targeted linear, plus ``modules_to_save``.

    Args:
        model: the causal LM (a :func:`meta_model` is enough).
        adapter: the ``adapter`` group (``r``, ``target_modules``: ``None`` for every linear layer of the
            decoder blocks, ``modules_to_save``).
    """
    r = int(adapter["r"])
    total = sum(r * (m.in_features + m.out_features) for m in _lora_targets(model, adapter))
    to_save = adapter.get("modules_to_save") or []
    to_save = [to_save] if isinstance(to_save, str) else list(to_save)
    for name, module in model.named_modules():
        if name and name.rsplit(".", 1)[-1] in to_save:
            total += sum(p.numel() for p in module.parameters())
    return total


def lora_activation_bytes(model, adapter: dict[str, Any], tokens: int, act_bytes: int) -> float:
    """What PEFT's LoRA layers keep for backward beyond the base model's activations, for ``tokens`` tokens.

    Per adapted linear: with ``dropout > 0`` its own dropout output (``in_features`` wide, ``act_bytes``) and the
    dropout's bool mask (1 B), since q/k/v (and gate/up) each drop their shared input separately; always the
    ``r``-wide output of ``lora_A`` that ``lora_B``'s gradient needs. Measured on the 96M CPU shape (r 16,
    dropout 0.05, every decoder linear, 2 x 256 tokens, fp32): 0.24 GB, a fifth of the LoRA run's working set.
    """
    r = int(adapter["r"])
    dropped = float(adapter.get("dropout") or 0.0) > 0
    per_token = sum(
        (m.in_features * (act_bytes + 1) if dropped else 0) + r * act_bytes for m in _lora_targets(model, adapter)
    )
    return float(tokens) * per_token


def _quantized_weights(model) -> int:
    """Weights bitsandbytes stores in 4 bit: every linear layer of the decoder blocks."""
    import torch

    return sum(m.weight.numel() for m in model.get_decoder().modules() if isinstance(m, torch.nn.Linear))


def _unique_parameters(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _layer_parameters(c: dict[str, Any]) -> int:
    h, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    kv = int(c.get("num_key_value_heads") or heads)
    d = int(c.get("head_dim") or h // heads)
    return 2 * h * heads * d + 2 * h * kv * d + 3 * h * int(c["intermediate_size"]) + 2 * h


def estimates_for_config(cfg: DictConfig, plan: Any = None) -> tuple[list[MemoryEstimate], dict[str, Any]]:
    """An estimate for every strategy under ``cfg``'s model, data, objective and hardware.

    ``plan`` is the run's :class:`~zephyr.scale.plan.LaunchPlan` (world size); without one it is derived
    unchecked (a GPU preset can be estimated on a machine without CUDA).

    Returns:
        ``(rows, facts)``: one :class:`MemoryEstimate` per :data:`STRATEGY_ROWS` entry, and the inputs used
        (``n_params``, ``world_size``, ``micro_batch_size``, ``seq_len``, ``objective``...).
    """
    from zephyr.scale.plan import launch_plan

    plan = plan or launch_plan(cfg, check=False)
    ckpt = checkpoint_config(cfg)
    source = "checkpoint" if ckpt is not None else "model.config"
    mcfg = ckpt if ckpt is not None else OmegaConf.to_container(cfg.model.config, resolve=True)
    mcfg = mcfg.get("text_config") or mcfg  # multimodal configs keep the decoder's dims there
    adapter = cfg.get("adapter")
    adapter = OmegaConf.to_container(adapter, resolve=True) if adapter is not None else {}
    adapter_name = str(adapter.get("name", "none"))
    model = meta_model(mcfg) if (ckpt is not None or adapter_name in ("lora", "qlora")) else None
    n_params = _unique_parameters(model) if ckpt is not None else count_parameters(mcfg)
    h, layers = int(mcfg["hidden_size"]), int(mcfg["num_hidden_layers"])
    if ckpt is not None:
        decoder_layers = model.get_decoder().layers
        layer_params = sum(p.numel() for p in decoder_layers[0].parameters())
    else:
        layer_params = _layer_parameters(mcfg)
    w = DTYPE_BYTES.get(str(cfg.model.get("dtype", "float32")), 4)
    trainable, frozen_bytes = n_params, 0.0
    if adapter_name in ("lora", "qlora"):
        trainable = lora_parameters(model, adapter)
        if adapter_name == "qlora":
            quantized = _quantized_weights(model)
            frozen_bytes = quantized * NF4_BYTES + (n_params - quantized) * 2  # the rest in bf16
        else:
            frozen_bytes = float(n_params * w)
    precision = str(cfg.hardware.get("precision", "32-true"))
    act_bytes = 2 if (precision.startswith(("bf16", "16")) or w == 2) else 4
    objective = str(cfg.objective.get("_target_", "")).rsplit(".", 1)[-1]
    is_dpo = "DPO" in objective
    rows = int(cfg.data.batch_size) * (2 if is_dpo else 1)
    seq = int(cfg.data.get("max_length", 2048))
    chunked = bool(cfg.objective.get("chunked_loss", True))
    act_kwargs = dict(
        micro_batch_size=rows,
        seq_len=seq,
        hidden_size=h,
        num_layers=layers,
        vocab_size=int(mcfg["vocab_size"]),
        act_bytes=act_bytes,
        gradient_checkpointing=bool(cfg.model.get("gradient_checkpointing", False)),
        loss_chunk_size=int(cfg.objective.get("loss_chunk_size", 1024)),
    )
    acts = activation_bytes(chunked_loss=chunked, **act_kwargs)
    if adapter_name in ("lora", "qlora"):
        lora_acts = lora_activation_bytes(model, adapter, rows * seq, act_bytes)
        # under gradient checkpointing only the layer being recomputed holds them
        acts += lora_acts / layers if act_kwargs["gradient_checkpointing"] else lora_acts
    ref_mode = str((cfg.objective.get("reference") or {}).get("mode", "cache")) if is_dpo else "none"
    # with adapters the reference is the policy's own base with the adapters disabled: no second copy
    reference = n_params * w if ref_mode == "live" and adapter_name not in ("lora", "qlora") else 0.0
    n = plan.world_size
    full_shard = (
        str(cfg.strategy.get("sharding_strategy", "FULL_SHARD")) == "FULL_SHARD" if plan.strategy == "fsdp" else True
    )
    out = [
        estimate(
            s,
            n_params=trainable,
            world_size=n,
            weight_bytes=w,
            activations=acts,
            reference_bytes=reference,
            fsdp_full_shard=full_shard,
            precision=precision,
            layer_params=layer_params,
            frozen_bytes=frozen_bytes,
        )
        for s in STRATEGY_ROWS
    ]
    facts = {
        "n_params": n_params,
        "trainable_params": trainable,
        "adapter": adapter_name,
        "model_source": source,
        "world_size": n,
        "micro_batch_size": rows,
        "seq_len": seq,
        "objective": objective,
        "weight_bytes": w,
        "gradient_checkpointing": bool(cfg.model.get("gradient_checkpointing", False)),
        "device_memory_gb": cfg.hardware.get("device_memory_gb"),
        "reference": ref_mode,
    }
    return out, facts


def _params_text(n: int) -> str:
    """``7.24 B`` from 1e9 parameters up, ``135.0 M`` from 1e6, ``33,472`` below (a small model is not "0.00 B")."""
    if n >= 1e9:
        return f"{n / 1e9:.2f} B"
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n:,}"


def render_table(rows: list[MemoryEstimate], facts: dict[str, Any], selected: str | None = None):
    """A ``rich.table.Table`` of the estimates (GB = 1e9 bytes); ``selected`` marks the configured strategy."""
    from rich.table import Table

    cap = facts.get("device_memory_gb")
    adapter = facts.get("adapter", "none")
    trainable = (
        f" ({_params_text(facts['trainable_params'])} trainable, {adapter}"
        + (", 4-bit base)" if adapter == "qlora" else ")")
        if adapter in ("lora", "qlora")
        else ""
    )
    title = (
        f"Per-device memory estimate: {_params_text(facts['n_params'])} params{trainable}, "
        f"{facts['world_size']} device(s), "
        f"micro-batch {facts['micro_batch_size']} x {facts['seq_len']} tokens"
        + (f", {cap} GB per device" if cap else "")
    )
    table = Table(title=title)
    for col in ("strategy", "params", "grads", "optimizer", "activations", "total / device", "host RAM / rank"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    if cap:
        table.add_column("fits", justify="center")
    for r in rows:
        name = f"{r.strategy} *" if r.strategy == selected else r.strategy
        cells = [name] + [f"{x / GB:.2f}" for x in (r.params, r.grads, r.optimizer, r.activations, r.total, r.host)]
        if cap:
            cells.append("yes" if r.total <= 0.9 * float(cap) * GB else "no")
        table.add_row(*cells)
    return table


def print_memory_estimate(cfg: DictConfig, console=None, plan: Any = None) -> list[MemoryEstimate]:
    """Print the table for ``cfg`` (the plan's strategy starred) and return its rows; ``plan`` as in
    :func:`estimates_for_config`.
    """
    from rich.console import Console

    from zephyr.scale.plan import launch_plan

    plan = plan or launch_plan(cfg, check=False)
    rows, facts = estimates_for_config(cfg, plan)
    (console or Console(stderr=True, width=132)).print(render_table(rows, facts, selected=plan.option))
    return rows


def _status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"/proc/self/status has no {field}")


class PeakMemory(pl.Callback):
    """Lightning callback measuring this rank's host-memory peak of the run (Linux), written as JSON.

    Measured peak = peak RSS from the callback's ``setup`` (data read, model not built yet) to the end of
    ``fit`` minus the RSS at that ``setup``: the process's high-water mark (``VmHWM``) is reset at ``setup``
    (``/proc/self/clear_refs`` = 5), read at ``on_fit_end`` and the ``setup`` RSS (``VmRSS``) subtracted. So it
    counts what the model, its gradients, optimizer states and the steps' activations add over the process
    baseline (interpreter, torch, tokenizer, data), which is what :func:`estimates_for_config` estimates.
    Writes ``<default_root_dir>/memory_rank<R>.json`` with ``baseline_bytes``, ``peak_bytes``, ``delta_bytes``.
    Add to a run with ``+callbacks.peak_memory._target_=zephyr.scale.memory.PeakMemory``.
    """

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        self.baseline_kib = _status_kib("VmRSS")

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.model_ready_kib = _status_kib("VmRSS")  # model built (and sharded), optimizer created, no step yet
        self._phase("model_ready")

    def _phase(self, name: str) -> None:
        """Record RSS and the high-water mark (over the ``setup`` RSS) the first time the run reaches ``name``."""
        phases = self.__dict__.setdefault("phases", {})
        if name not in phases and hasattr(self, "baseline_kib"):
            base = self.baseline_kib
            phases[name] = {
                "rss_delta_bytes": (_status_kib("VmRSS") - base) * 1024,
                "peak_delta_bytes": (_status_kib("VmHWM") - base) * 1024,
            }

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        self._phase("forward")

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        self._phase("backward")

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self._phase("before_optimizer_step")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if getattr(trainer, "global_step", 0) >= 1:
            self._phase("after_first_optimizer_step")

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        peak = _status_kib("VmHWM")
        report = {
            "rank": int(trainer.global_rank),
            "world_size": int(trainer.world_size),
            "baseline_bytes": self.baseline_kib * 1024,
            "peak_bytes": peak * 1024,
            "delta_bytes": (peak - self.baseline_kib) * 1024,
            "model_ready_delta_bytes": (getattr(self, "model_ready_kib", self.baseline_kib) - self.baseline_kib) * 1024,
            "file_backed_bytes": _status_kib("RssFile") * 1024,
            "phases": getattr(self, "phases", {}),
        }
        out = Path(trainer.default_root_dir) / f"memory_rank{trainer.global_rank}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """``python -m zephyr.scale.memory [hydra overrides]``: print the table for a composed train config."""
    import sys

    from rich.console import Console

    from zephyr.conf import compose

    cfg = compose("train", list(sys.argv[1:] if argv is None else argv))

    print_memory_estimate(cfg, Console(width=132))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
