"""Every ``conf/experiment/*.yaml``, alone and with every ``conf/sweep/*.yaml``, composes and instantiates.

Globbed, so a new experiment or sweep file is tested without being listed. Each combination builds the data
module, the model (the tiny Mistral: ``model=tiny_mistral`` replaces a 7B preset's, so no hub model is ever
loaded) and the objective. Experiments say what to run and ``conf/sweep/`` what to vary: the composed grid is
exactly one sweep file's (an experiment's own, or the one added or swapped in), never two merged. ``+sweep=S`` on
an experiment that already pulls a grid is refused by design, and that refusal is asserted instead.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf, open_dict

from tests.conftest import REPO, TINY_OVERRIDES
from zephyr.sweep import experiment_sweep, sweep_conflict

CONF = REPO / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
SWEEPS = sorted(p.stem for p in (CONF / "sweep").glob("*.yaml"))
# tiny sizes and this machine's hardware, whatever the preset says (its own values are pinned elsewhere)
# (gradient_checkpointing off: transformers 5 warns that gradient_checkpointing_enable is deprecated, which pytest
# turns into an error; the presets' own value is pinned by tests/unit/scale/test_scale_presets.py)
SMALL = [
    "model=tiny_mistral",
    "model.path=null",
    "model.gradient_checkpointing=false",
    "hardware=cpu",
    "strategy=auto",
    *TINY_OVERRIDES,
]


def sweep_params(name: str) -> dict[str, str]:
    """The grid a sweep file declares (``hydra.sweeper.params``), as strings."""
    params = OmegaConf.select(OmegaConf.load(CONF / "sweep" / f"{name}.yaml"), "hydra.sweeper.params") or {}
    return {str(k): str(v) for k, v in params.items()}


def needs_plugin(sweep: str) -> str | None:
    """The Hydra plugin module a sweep file's ``override /hydra/sweeper`` needs, when it is not installed."""
    text = (CONF / "sweep" / f"{sweep}.yaml").read_text()
    if "override /hydra/sweeper: optuna" in text:
        try:
            found = importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None
        except ModuleNotFoundError:
            found = False
        return None if found else "hydra-optuna-sweeper is not installed"
    return None


def test_the_glob_finds_the_studies_and_their_grids():
    assert {"dpo_toy", "dpo_beta", "zephyr_7b_sft", "zephyr_7b_dpo"} <= set(EXPERIMENTS)
    assert {"beta", "lr", "epochs", "grid", "dpo_beta_lr"} <= set(SWEEPS)
    assert [experiment_sweep(CONF, e) for e in ("dpo_beta", "dpo_lr", "dpo_epochs", "dpo_grid", "dpo_toy")] == [
        "beta",
        "lr",
        "epochs",
        "grid",
        None,
    ]
    for experiment in EXPERIMENTS:  # what to vary lives in sweep/ only
        assert OmegaConf.select(OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml"), "hydra") is None


@pytest.mark.parametrize("sweep", [None, *SWEEPS])
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_x_sweep_composes_and_instantiates(compose, tokenizer, experiment, sweep):
    from zephyr.run import build, check_objective_data, check_required

    own = experiment_sweep(CONF, experiment)
    overrides = [f"+experiment={experiment}", *SMALL]
    if sweep is not None:
        if reason := needs_plugin(sweep):
            pytest.skip(reason)
        overrides.append(f"+sweep={sweep}")
        if own is not None:  # refused by design: two grids are never merged (the same one twice: Hydra refuses too)
            with pytest.raises(ConfigCompositionException, match="Multiple values for sweep|sweep appears more than"):
                compose(*overrides, return_hydra_config=True)
            line = sweep_conflict(overrides, CONF)
            assert line is not None and f"already sweeps sweep={own}" in line and f"write sweep={sweep}" in line
            return
    cfg = compose(*overrides, return_hydra_config=True)
    params = {str(k): str(v) for k, v in (cfg.hydra.sweeper.get("params") or {}).items()}
    expected = sweep or own
    assert params == (sweep_params(expected) if expected else {})
    with open_dict(cfg):
        del cfg["hydra"]  # the rest is what the job sees (no ${hydra:...} runtime here)
    check_objective_data(cfg)
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    if OmegaConf.is_missing(cfg.data, "path"):  # a local_* data option: the run asks for data.path
        data_cfg["path"] = "pairs.jsonl"
    else:
        check_required(cfg)
    dm = build(OmegaConf.create(data_cfg), tokenizer=tokenizer)
    assert type(dm).kind in ("sft", "preference")
    assert dm.name or dm.path or callable(dm.toy)  # a hub set, a file, or the built-in rows by _target_
    model = build(cfg.model)
    assert type(model).__name__ == "MistralForCausalLM" and model.config.hidden_size == 64
    module = build(cfg.objective, model=model)
    assert type(module).data_kind == type(dm).kind


def test_sweep_without_plus_replaces_the_experiments_grid(compose):
    cfg = compose("+experiment=dpo_beta", "sweep=dpo_beta_lr", return_hydra_config=True)
    assert dict(cfg.hydra.sweeper.params) == sweep_params("dpo_beta_lr")
    assert cfg.hydra.runtime.choices.sweep == "dpo_beta_lr" and cfg.task_name == "dpo_beta"


def test_train_py_refuses_a_second_grid_in_one_line(tmp_path):
    cmd = [sys.executable, "train.py", "-m", "+experiment=dpo_beta", "+sweep=dpo_beta_lr", f"paths.root_dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "train.py: error: +sweep=dpo_beta_lr would add a second grid to +experiment=dpo_beta, which already sweeps "
        "sweep=beta (conf/experiment/dpo_beta.yaml): write sweep=dpo_beta_lr to replace its grid, or start from an "
        "experiment without one (e.g. +experiment=dpo_toy +sweep=dpo_beta_lr)"
    ]
    assert not (Path(tmp_path) / "runs").exists()
