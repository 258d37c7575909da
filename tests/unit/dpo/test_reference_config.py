"""``objective.reference`` is built by Hydra: a partial Reference with the cache key parts interpolated from the run.

The command-line keys ``objective.reference.mode|cache_dir|batch_size`` reach the Reference, the key parts
follow ``model.path``, ``model.revision``, ``hardware.precision``, ``model.dtype`` and ``paths.root_dir``, and
``train()`` no longer wires the module by hand (``DPOModule.attach`` is gone).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tests.conftest import TINY_CONFIG
from tests.unit.dpo.helpers_dpo import export_tiny
from zephyr.modules.dpo import DPOModule
from zephyr.modules.reference import Reference, checkpoint_fingerprint, state_dict_fingerprint
from zephyr.run import build

CONF = Path(__file__).resolve().parents[3] / "conf"


@pytest.fixture
def cfg_of(tmp_path):
    def _compose(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("train", overrides=[f"paths.root_dir={tmp_path}", "objective=dpo", *overrides])

    yield _compose
    GlobalHydra.instance().clear()


def tiny_model():
    from zephyr.models.mistral import build_model

    return build_model(config=TINY_CONFIG, init_seed=0)


def test_command_line_keys_reach_the_reference(cfg_of, tmp_path):
    cfg = cfg_of(
        "objective.reference.mode=live",
        f"objective.reference.cache_dir={tmp_path / 'c'}",
        "objective.reference.batch_size=3",
        "hardware.precision=bf16-mixed",
    )
    assert cfg.objective.reference._partial_ is True
    model = tiny_model()
    module = build(cfg.objective, model=model)
    ref = module.reference
    assert isinstance(module, DPOModule) and isinstance(ref, Reference) and ref.policy is model
    assert (ref.mode, ref.cache_dir, ref.batch_size) == ("live", str(tmp_path / "c"), 3)
    assert (ref.precision, ref.dtype) == ("bf16-mixed", "float32")
    assert ref.root == tmp_path / "runs" / "cache"
    assert ref.weights == state_dict_fingerprint(model)  # random init: the starting weights
    assert ref.model_cfg["_target_"] == cfg.model._target_  # the copy is built from the run's own model config
    assert not hasattr(module, "attach")


def test_model_path_and_revision_are_key_parts(cfg_of, tmp_path):
    ckpt = export_tiny(tmp_path / "dsft" / "model")
    local = build(cfg_of(f"model.path={ckpt}").objective, model=tiny_model()).reference
    assert local.weights == checkpoint_fingerprint(ckpt)
    assert (tmp_path / "runs" / "cache" / "fingerprints.json").is_file()  # memoised under paths.root_dir
    hub = partial(Reference, model_path="org/model", model_revision="abc")(policy=tiny_model())
    assert hub.weights == "hub:org/model@abc"


def test_bad_mode_from_the_command_line_is_one_line(cfg_of):
    from zephyr.errors import ConfigError

    with pytest.raises(ConfigError, match=r"objective.reference.mode='lazy' must be one of \('cache', 'live'\)"):
        build(cfg_of("objective.reference.mode=lazy").objective, model=tiny_model())


def test_reference_path_loads_the_run_model_config_from_another_checkpoint(cfg_of, tmp_path):
    """``objective.reference.path``: the reference is ``${model}`` loaded from that checkpoint (dtype and the rest
    kept), fingerprinted in the cache key, and a LoRA policy gets its own copy instead of its adapters-off base."""
    import torch

    from zephyr.models.adapters import apply_adapter

    start = export_tiny(tmp_path / "round_1" / "model", seed=1)
    sft = export_tiny(tmp_path / "dsft" / "model", seed=2)
    cfg = cfg_of(f"model.path={start}", f"objective.reference.path={sft}", "model.dtype=bfloat16")
    ref = build(cfg.objective, model=tiny_model()).reference
    assert ref.weights == checkpoint_fingerprint(sft) != checkpoint_fingerprint(start)
    assert ref.model_cfg["path"] == str(sft) and ref.model_cfg["dtype"] == "bfloat16"
    assert ref.model_cfg["_target_"] == cfg.model._target_ and ref.model_cfg["revision"] is None
    frozen = ref._frozen("cpu").model
    want = Reference(policy=tiny_model(), model=dict(cfg.model, path=str(sft)))._frozen("cpu").model
    assert all(torch.equal(a, b) for a, b in zip(frozen.state_dict().values(), want.state_dict().values()))
    peft = apply_adapter(tiny_model(), {"name": "lora", "r": 2, "alpha": 4, "dropout": 0.0, "target_modules": None})
    assert build(cfg.objective, model=peft).reference.adapters_off is False
    assert build(cfg_of(f"model.path={start}").objective, model=peft).reference.adapters_off is True
    with pytest.raises(ValueError, match="objective.reference.path needs a model config"):
        Reference(policy=tiny_model(), path=sft)
