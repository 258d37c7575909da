"""``train(cfg)``: compose data, model, objective, callbacks, loggers and trainer from a Hydra config; fit; export.

Used by ``train.py`` (Hydra CLI), by the demo pipeline and by tests (with ``hydra.compose``). It checks the
config before anything heavy is built: required ``???`` values, a dSFT checkpoint that does not exist yet,
and the resume checkpoint. W&B is finished in a ``finally`` block, so one crashed job does not stall a
multirun. Returns the final metrics (also written to ``metrics.json`` in the run directory).
"""

from __future__ import annotations

import json
import logging
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from zephyr.callbacks import (
    AtomicCheckpointIO,
    MetricsFileCallback,
    atomic_write_text,
    checkpoint_step,
    step_checkpoints,
)
from zephyr.errors import ConfigError
from zephyr.models.adapters import (
    adapter_config,
    apply_adapter,
    check_adapter,
    describe_parameters,
    is_peft_model,
    uses_adapter,
)
from zephyr.models.adapters import model_kwargs as adapter_model_kwargs
from zephyr.scale.plan import LaunchPlan
from zephyr.secrets import redact, scrub, scrub_run_files, secret_values
from zephyr.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


def check_required(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming every ``???`` value still missing."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing required config value(s): {', '.join(missing)} (set them on the command line)")


DATA_FOR = {
    "sft": "data=toy_sft (built-in dialogues), data=local_sft data.path=FILE or data=ultrachat",
    "preference": "data=toy_prefs (built-in pairs), data=local_prefs data.path=FILE or data=ultrafeedback",
    "unpaired": "data=toy_kto (built-in rows), data=local_kto data.path=FILE or data=kto_mix",
}
# old data option -> its new name (conf/data/<old>.yaml is a one-line alias of the new one)
RENAMED_DATA = {"toy": "toy_sft", "local_jsonl": "local_sft"}


def warn_renamed_data() -> None:
    """Log one deprecation line when the run chose a data option by its old name (Hydra runs only)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    choice = HydraConfig.get().runtime.choices.get("data")
    if choice in RENAMED_DATA:
        log.warning("data=%s is deprecated: it is now data=%s (same keys)", choice, RENAMED_DATA[choice])


def check_objective_data(cfg: DictConfig) -> None:
    """Refuse an objective whose data module yields the other kind of rows (before any model is loaded)."""
    from hydra.utils import get_class

    try:
        want = get_class(cfg.objective._target_).data_kind
        have = get_class(cfg.data._target_).kind
    except (AttributeError, ImportError, KeyError):
        return  # a user's own module or data class: nothing declared to compare
    if want != have:
        obj = cfg.objective._target_.rsplit(".", 1)[-1]
        raise ConfigError(f"{obj} trains on {want} rows but the data config gives {have} rows: use {DATA_FOR[want]}")


def check_objective_options(cfg: DictConfig) -> None:
    """The objective class's own ``validate_config(cfg.objective)`` (loss names, weights), before any model loads."""
    from hydra.utils import get_class

    try:
        validate = get_class(cfg.objective._target_).validate_config
    except (AttributeError, ImportError, KeyError):
        return  # a module without the hook
    try:
        validate(cfg.objective)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def resolve_output_dir(cfg: DictConfig) -> Path:
    """The run directory: Hydra's job dir in a multirun, else ``paths.output_dir``."""
    out = None
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            hc = HydraConfig.get()
            if hc.mode is not None and hc.mode.name == "MULTIRUN":
                out = hc.runtime.output_dir
    except ValueError:
        out = None
    out = Path(out or cfg.paths.output_dir).expanduser().resolve()
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return out


def build(node: DictConfig, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)``, with a constructor's bad-value error raised as itself, not wrapped.

    Hydra wraps whatever a ``_target_`` raises in ``InstantiationException``, which would reach the user as a
    traceback. A user error (:data:`zephyr.errors.USER_ERRORS`) is re-raised as it is; a ``ValueError`` (the
    constructors' way to refuse a value, naming the key) or an unknown keyword argument becomes a
    :class:`ConfigError`.
    """
    from hydra.errors import InstantiationException

    from zephyr.errors import USER_ERRORS

    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, USER_ERRORS):
            raise cause from None
        if isinstance(cause, ValueError):
            raise ConfigError(str(cause)) from None
        if isinstance(cause, TypeError) and "keyword argument" in str(cause):
            raise ConfigError(f"{node.get('_target_')}: {cause}") from None
        raise


def looks_local(path: str) -> bool:
    """Whether ``model.path`` names a local folder rather than a hub repo id (``org/name``).

    ``./x``, ``/x``, ``~/x``, anything that exists here, a path with more than one ``/`` (a repo id has one) and
    a path whose first folder exists here (``runs/dsft`` before that run has happened) are local.
    """
    p = Path(path).expanduser()
    if path.startswith((".", "/", "~")) or p.exists() or path.count("/") > 1:
        return True
    return "/" in path and Path(path.split("/", 1)[0]).is_dir()


def check_model_path(cfg: DictConfig) -> None:
    """A local ``model.path`` that does not exist gets one line saying which command makes it."""
    path = cfg.model.get("path")
    if not path or not looks_local(str(path)):
        return
    p = Path(str(path)).expanduser()
    if (p / "config.json").is_file():
        return
    if (p / "adapter_config.json").is_file():  # a PEFT adapter folder (<run>/adapter), not a full model
        merged = p.parent / "model"
        offer = f"model.path={merged}" if (merged / "config.json").is_file() else "the run's merged export <run>/model"
        raise ConfigError(
            f"model.path={path} is a LoRA adapter (adapter_config.json, no config.json), not a full model: "
            f"start from {offer} (the base with these adapters merged in)"
        )
    hint = cfg.model.get("missing_hint") or "train one with `python train.py paths.output_dir=DIR` (exports DIR/model)"
    raise ConfigError(f"model.path={path} has no checkpoint; {hint}")


# trainer keys Lightning (or zephyr.scale) needs as numbers or booleans; a string there fails only after the model
# is built, with a TypeError from deep inside Lightning
_TRAINER_INTS = (
    "max_steps",
    "max_epochs",
    "min_steps",
    "min_epochs",
    "accumulate_grad_batches",
    "global_batch_size",
    "log_every_n_steps",
    "num_sanity_val_steps",
    "check_val_every_n_epoch",
)
_TRAINER_NUMBERS = ("val_check_interval", "gradient_clip_val", "limit_train_batches", "limit_val_batches")
_TRAINER_BOOLS = ("enable_model_summary", "enable_progress_bar", "compile", "liger_kernel")


def check_trainer_values(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for a ``trainer.*`` value of the wrong type (``trainer.max_steps=abc``)."""
    tcfg = cfg.get("trainer") or {}
    for key in tcfg:
        value = tcfg.get(key)
        if value is None:
            continue
        if key in _TRAINER_INTS and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"trainer.{key}={value!r} must be an integer")
        if key in _TRAINER_NUMBERS and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"trainer.{key}={value!r} must be a number")
        if key in _TRAINER_BOOLS and not isinstance(value, bool):
            raise ConfigError(f"trainer.{key}={value!r} must be true or false")


def apply_kernels(cfg: DictConfig) -> None:
    """:func:`zephyr.scale.plan.apply_kernel_options` (Liger), its refusals as :class:`ConfigError`."""
    from zephyr.scale import ScaleConfigError
    from zephyr.scale.plan import apply_kernel_options

    try:
        apply_kernel_options(cfg)
    except ScaleConfigError as e:
        raise ConfigError(str(e)) from e


def resolve_ckpt_path(cfg: DictConfig, out: Path) -> str | None:
    """``ckpt_path``: ``null`` (fresh), ``last`` (the newest complete checkpoint in ``<run>/checkpoints``) or a file.

    With ``last``, ``last.ckpt`` is used unless a ``stepNNNNNN.ckpt`` is newer (a kill between the two saves of
    one step leaves ``last.ckpt`` a step behind); saves are atomic, so every file there is complete.
    """
    ckpt = cfg.get("ckpt_path")
    if not ckpt:
        return None
    if str(ckpt) == "last":
        ckpt_dir = out / "checkpoints"
        last = ckpt_dir / "last.ckpt"
        steps = {s: p for s, p in step_checkpoints(ckpt_dir).items() if p.is_file()}
        chosen = None
        if last.is_dir():  # a directory of shards (FSDP / DeepSpeed): no cheap step to compare
            chosen = last
        elif last.is_file():
            last_step = checkpoint_step(last)
            newer = steps and (last_step is None or max(steps) > last_step)
            chosen = steps[max(steps)] if newer else last
        elif steps:
            chosen = steps[max(steps)]
        if chosen is not None:
            log.info("resuming from %s", chosen)
            return str(chosen)
        log.info("ckpt_path=last but %s has no checkpoint: starting from scratch", ckpt_dir)
        return None
    if not Path(str(ckpt)).exists():
        raise FileNotFoundError(f"ckpt_path={ckpt}: checkpoint file not found")
    return str(ckpt)


def completed_run(cfg: DictConfig, ckpt_path: str | None, out: Path) -> dict[str, float] | None:
    """The finished run's metrics when ``ckpt_path`` is already at ``trainer.max_steps`` (nothing to train), else None.

    Says so in one line and leaves ``metrics.json``, ``metrics.csv`` and the export as they are.
    """
    max_steps = int(cfg.trainer.get("max_steps", -1) or -1)
    if not ckpt_path or max_steps <= 0:
        return None
    if cfg.get("export", True) and not (out / "model" / "config.json").is_file():
        return None  # killed between the last checkpoint and the export: the fit restores it and exports
    step = checkpoint_step(ckpt_path)
    if step is None or step < max_steps:
        return None
    log.info(
        "the run in %s is already complete at step %d (trainer.max_steps=%d): nothing to do "
        "(raise trainer.max_steps to train further)",
        out,
        step,
        max_steps,
    )
    path = out / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {"global_step": float(step)}


def check_output_dir(cfg: DictConfig, out: Path, ckpt_path: str | None) -> None:
    """Refuse a fresh run into a folder that holds another run's checkpoints or export, unless ``overwrite=true``.

    Training there would replace ``model/`` and leave the old ``last.ckpt`` beside the new ``last-v1.ckpt`` (so a
    later ``ckpt_path=last`` resumes the old run). A resumed run (``ckpt_path`` set and found) continues the run
    that is there. ``overwrite=true`` deletes the old ``checkpoints/`` and ``model/`` first. Checked on rank 0 only
    (the ranks Lightning starts later see rank 0's fresh run).
    """
    from pytorch_lightning.utilities import rank_zero_only

    if ckpt_path or rank_zero_only.rank != 0:
        return
    ckpt_dir, export = out / "checkpoints", out / "model"
    found = [f"checkpoints/{p.name}" for p in sorted(ckpt_dir.glob("*.ckpt"))][:3]
    if (export / "config.json").is_file():
        found.append("model/")
    if not found:
        return
    if cfg.get("overwrite"):
        import shutil

        log.warning("overwrite=true: deleting the previous run's %s in %s", ", ".join(found), out)
        for p in (ckpt_dir, export):
            if p.is_dir():
                shutil.rmtree(p)
        return
    raise ConfigError(
        f"paths.output_dir={out} already holds a run ({', '.join(found)}): resume it with ckpt_path=last, "
        "train into a new paths.output_dir=DIR, or replace it with overwrite=true"
    )


def build_callbacks(cfg: DictConfig, out: Path) -> tuple[list[pl.Callback], MetricsFileCallback]:
    callbacks: list[pl.Callback] = []
    for name, cb_cfg in (cfg.get("callbacks") or {}).items():
        if cb_cfg is None:
            continue
        if "_target_" not in cb_cfg:
            raise ConfigError(f"callbacks.{name} has no _target_")
        if "ProgressBar" in str(cb_cfg["_target_"]) and not cfg.trainer.get("enable_progress_bar", True):
            continue
        callbacks.append(instantiate(cb_cfg))
    metrics_cb = MetricsFileCallback(str(out))
    callbacks.append(metrics_cb)
    return callbacks, metrics_cb


def build_loggers(cfg: DictConfig, out: Path, flat_cfg: dict[str, Any]) -> list[Any]:
    lcfg = cfg.get("logger")
    if not lcfg or lcfg.get("_target_") is None:
        return []
    if "wandb" in str(lcfg["_target_"]).lower():
        os.environ.setdefault("WANDB_DIR", str(out))
        os.environ.setdefault("WANDB_CACHE_DIR", str(out / ".wandb_cache"))
        os.environ.setdefault("WANDB_CONFIG_DIR", str(out / ".wandb_config"))
        os.environ.setdefault("WANDB_SILENT", "true")
    logger = instantiate(lcfg)
    logger.log_hyperparams(flat_cfg)
    return [logger]


def build_trainer(
    cfg: DictConfig, callbacks: list[pl.Callback], loggers: list[Any], out: Path, plan: LaunchPlan
) -> pl.Trainer:
    """``pl.Trainer`` for the run's :class:`~zephyr.scale.plan.LaunchPlan` (strategy built by :mod:`zephyr.scale`;
    the data modules' batch sampler splits the ranks).
    """
    from zephyr.scale import ScaleConfigError
    from zephyr.scale.plan import trainer_arguments

    hw = cfg.hardware
    try:
        strategy, kwargs = trainer_arguments(cfg, plan)
    except ScaleConfigError as e:
        raise ConfigError(str(e)) from e
    plugins = []
    if strategy == "auto" or type(strategy).__name__ == "DDPStrategy":  # sharded strategies save their own way
        plugins.append(AtomicCheckpointIO())
    return pl.Trainer(
        accelerator=plan.accelerator,
        devices=hw.devices,
        num_nodes=hw.get("num_nodes", 1),
        precision=plan.precision,
        strategy=strategy,
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=str(out),
        plugins=plugins or None,
        **kwargs,
    )


def prepare_scale(cfg: DictConfig) -> LaunchPlan:
    """The run's launch plan, decided once: strategy x hardware checked, accumulation derived, the memory
    estimate printed (rank 0); before any model. Everything after reads the returned plan.
    """
    from pytorch_lightning.utilities import rank_zero_only

    from zephyr.scale import ScaleConfigError
    from zephyr.scale.plan import prepare

    try:
        return prepare(cfg, print_memory=rank_zero_only.rank == 0)
    except ScaleConfigError as e:
        raise ConfigError(str(e)) from e


def apply_host_allocator(cfg: DictConfig, plan: Any) -> str:
    """Apply ``hardware.host_allocator`` for this process (:mod:`zephyr.scale.host_memory`; ``retain`` on a CPU run
    by default) and return what it resolved to; a bad value is a one-line :class:`ConfigError` naming the key.
    """
    from zephyr.scale.host_memory import configure_host_allocator

    strategy = (cfg.get("strategy") or {}).get("name", "auto")
    try:
        mode = configure_host_allocator(
            cfg.hardware.get("host_allocator", "auto"), accelerator=plan.accelerator, strategy=strategy
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    log.info("host allocator: %s", mode)
    return mode


def policy_factory(cfg: DictConfig) -> Any:
    """The :class:`~zephyr.modules.base.ModelFactory` of the policy, called by the module's ``configure_model``.

    The ``model`` group as a partial; adapters and ``trainer.compile`` applied right after the build; a local
    checkpoint without adapters may be loaded shard by shard under FSDP2.
    """
    from zephyr.modules.base import ModelFactory
    from zephyr.scale.fsdp2 import local_checkpoint

    adapter = adapter_config(cfg)
    return ModelFactory(
        build=build(cfg.model, _partial_=True, **adapter_model_kwargs(cfg)),
        prepare=partial(prepare_policy, adapter=adapter, cfg=cfg),
        checkpoint=None if uses_adapter(cfg) else local_checkpoint(cfg.model.get("path")),
    )


def prepare_policy(model: torch.nn.Module, *, adapter: Any, cfg: DictConfig) -> torch.nn.Module:
    """The adapters applied right after the build, the parameter summary logged, then ``trainer.compile``.

    With ``trainer.liger_kernel=true`` the fused MLP and RMSNorm (``model.fused_mlp``, ``model.fused_rmsnorm``)
    are switched off: Liger's kernels take their place.
    """
    from zephyr.models.fused_mlp import fuse_mlp
    from zephyr.models.fused_norm import fuse_rmsnorm
    from zephyr.scale.plan import compile_model

    if cfg.trainer.get("liger_kernel", False):  # Liger's SwiGLU / RMSNorm kernels are the forwards then, not zephyr's
        fuse_mlp(model, enabled=False)
        fuse_rmsnorm(model, enabled=False)
    model = apply_adapter(model, adapter)
    log.info("%s", describe_parameters(model))
    return compile_model(model, cfg)


def _final_metrics(trainer: pl.Trainer) -> dict[str, float]:
    out = {}
    for k, v in trainer.callback_metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v)
        elif isinstance(v, (int, float)):
            out[k] = float(v)
    return out


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one training job described by ``cfg`` (the composed ``conf/train.yaml``).

    Returns:
        Final metrics: the last logged ``train/*`` values, ``eval/*`` from a final validation pass,
        ``runtime_s`` and ``global_step``.
    """
    started = time.perf_counter()
    warn_renamed_data()
    check_required(cfg)
    check_trainer_values(cfg)
    check_objective_data(cfg)
    check_objective_options(cfg)
    check_adapter(cfg)
    from zephyr.modules.reference import check_reference_config

    check_reference_config(cfg)  # objective.reference: mode, TR-DPO sync (refused with the cache)
    if cfg.get("heldout") is not None:  # the optional post-fit held-out evaluation (toy world)
        from zephyr.eval.heldout import check_heldout

        check_heldout(cfg)
    out = resolve_output_dir(cfg)
    check_model_path(cfg)
    ckpt_path = resolve_ckpt_path(cfg, out)
    check_output_dir(cfg, out, ckpt_path)
    if (done := completed_run(cfg, ckpt_path, out)) is not None:
        return done
    plan = prepare_scale(cfg)
    apply_host_allocator(cfg, plan)  # CPU: freed step memory is kept for the next step, not faulted in again
    apply_kernels(cfg)  # refuses trainer.liger_kernel=true without CUDA / liger-kernel before anything is built
    out.mkdir(parents=True, exist_ok=True)
    secrets = secret_values(cfg, _overrides())
    scrub_run_files(out, secrets)
    container = OmegaConf.to_container(cfg, resolve=True)
    flat_cfg = redact(container)
    atomic_write_text(out / "config_resolved.yaml", OmegaConf.to_yaml(OmegaConf.create(flat_cfg)))

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision(cfg.hardware.get("matmul_precision", "highest"))
    try:
        tokenizer = load_tokenizer(cfg.model.get("tokenizer") or cfg.model.get("path"))
    except ValueError as e:  # not the Mistral tokenizer (names the file)
        raise ConfigError(str(e)) from None
    datamodule = build(cfg.data, tokenizer=tokenizer)
    datamodule.setup("fit")  # read and validate the data before any model is built: a bad row stops the run now
    # the policy is built by the module's configure_model, inside the strategy's init context (ZeRO-3 partitions at
    # construction, FSDP2 shards right after); the same seeded build as before on a single device
    model = policy_factory(cfg)
    module = build(cfg.objective, model=model)  # DPO: its reference reads the pairs from trainer.datamodule
    callbacks, metrics_cb = build_callbacks(cfg, out)
    loggers = build_loggers(cfg, out, flat_cfg)
    metrics: dict[str, float] = {}
    try:
        trainer = build_trainer(cfg, callbacks, loggers, out, plan)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics.update(_final_metrics(trainer))
        if cfg.get("final_eval", True) and datamodule.eval_items:
            for k, v in trainer.validate(module, datamodule=datamodule, verbose=False)[0].items():
                metrics[k] = float(v)
        if cfg.get("heldout") and trainer.is_global_zero:  # accuracy on the toy world's held-out questions, KL
            from zephyr.eval.heldout import run_heldout

            metrics.update(run_heldout(cfg, module.model, tokenizer, lambda: build(cfg.model).eval(), out))
        metrics["global_step"] = float(trainer.global_step)
        metrics["runtime_s"] = time.perf_counter() - started
        if cfg.get("export", True):
            from zephyr.data.chat_template import prompt_format
            from zephyr.models.export import export_adapter_run, export_hf
            from zephyr.scale.plan import model_to_export

            export_model = model_to_export(trainer, module.model, plan)  # every rank: sharded weights are gathered
            if trainer.is_global_zero and is_peft_model(module.model):
                export_adapter_run(
                    module.model,
                    tokenizer,
                    adapter=adapter_config(cfg),
                    load_base=lambda: build(cfg.model).eval(),
                    base=cfg.model.get("path"),
                    adapter_dir=out / "adapter",
                    model_dir=out / "model",
                    dtype=cfg.get("export_dtype"),
                    metadata={"metrics": metrics, "overrides": [scrub(o, secrets) for o in _overrides()]},
                    prompt_format=prompt_format(cfg.data),
                )
                log.info("exported the merged model to %s and the adapter to %s", out / "model", out / "adapter")
            elif trainer.is_global_zero:
                target = export_hf(
                    export_model,
                    tokenizer,
                    out / "model",
                    dtype=cfg.get("export_dtype"),
                    metadata={"metrics": metrics, "overrides": [scrub(o, secrets) for o in _overrides()]},
                    prompt_format=prompt_format(cfg.data),
                )
                log.info("exported the model to %s", target)
        if trainer.is_global_zero:
            metrics_cb.write(metrics)
            for lg in loggers:  # rank-zero only: on other ranks `experiment` is Lightning's dummy
                summary = getattr(lg.experiment, "summary", None) if hasattr(lg, "experiment") else None
                if summary is not None and hasattr(summary, "update"):
                    summary.update(metrics)
        wait_for_other_ranks(trainer)
    finally:
        for lg in loggers:
            if "wandb" in type(lg).__name__.lower():
                import wandb

                wandb.finish()
    return metrics


def wait_for_other_ranks(trainer: pl.Trainer, timeout_s: float = 600.0) -> None:
    """On the launching process, wait for the ranks it started; raise if one failed (so the job exits non-zero).

    Lightning's launcher does not check its child processes' exit status once rank 0 is done.
    """
    import subprocess

    procs = getattr(getattr(trainer.strategy, "launcher", None), "procs", None) or []
    failed = []
    for rank, proc in enumerate(procs, start=1):
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = f"still running after {timeout_s:.0f}s"
        if code != 0:
            failed.append(f"rank {rank}: {code if isinstance(code, str) else f'exit status {code}'}")
    if failed:
        n = len(procs) + 1
        raise RuntimeError(f"{len(failed)} of {n} processes failed ({'; '.join(failed)}); see their errors above")


def _overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    except ValueError:
        return []
