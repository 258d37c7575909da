"""Sweep summary table and run names; DPO configs compose, and zephyr_7b_dpo is the paper's recipe exactly."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from zephyr.sweep import SweepCallback, run_name, summarize, sweep_keys

CONF = Path(__file__).resolve().parents[3] / "conf"


@pytest.fixture
def cfg_of(tmp_path):
    def _compose(*overrides: str, hydra_cfg: bool = False):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("train", overrides=[f"paths.root_dir={tmp_path}", *overrides], return_hydra_config=hydra_cfg)

    yield _compose
    GlobalHydra.instance().clear()


def fake_job(root: Path, num: int, overrides: list[str], metrics: dict | None) -> None:
    d = root / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))


def test_summary_has_one_row_per_job_with_swept_columns_metrics_and_runtime(tmp_path):
    for num, beta in enumerate(["0.01", "0.1"]):
        fake_job(
            tmp_path,
            num,
            ["+experiment=dpo_beta", f"objective.beta={beta}", "logger=none"],
            {"eval/loss": 0.5 + num, "train/rewards/accuracies": 1.0, "runtime_s": 10.0 + num},
        )
    fake_job(tmp_path, 10, ["+experiment=dpo_beta", "objective.beta=0.5", "logger=none"], None)  # crashed
    rows = summarize(tmp_path, swept=["objective.beta"])
    assert [r["job"] for r in rows] == ["0", "1", "10"]
    assert rows[1]["overrides"] == "+experiment=dpo_beta,objective.beta=0.1,logger=none"
    assert [r["objective.beta"] for r in rows] == ["0.01", "0.1", "0.5"]
    assert "logger" not in rows[0]  # the same in every job: not a swept column
    assert rows[0]["eval/loss"] == 0.5 and rows[1]["runtime_s"] == 11.0 and rows[2]["status"] == "failed"
    with (tmp_path / "summary.csv").open() as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:4] == ["job", "overrides", "objective.beta", "status"] and list(table[0])[-1] == "runtime_s"
    assert table[1]["eval/loss"] == "1.5"
    assert json.loads((tmp_path / "summary.json").read_text()) == rows


def test_run_name_is_readable():
    assert (
        run_name(["+experiment=dpo_grid", "objective.beta=0.05", "objective.optimizer.lr=1e-4", "trainer.max_epochs=2"])
        == "beta=0.05,lr=1e-4,max_epochs=2"
    )
    assert run_name(["+experiment=dpo_beta", "paths.root_dir=/x"]) is None


def test_callback_sets_wandb_name_and_group_per_job(monkeypatch):
    monkeypatch.delenv("WANDB_NAME", raising=False)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    cb = SweepCallback()
    cfg = OmegaConf.create(
        {"task_name": "dpo_beta", "hydra": {"overrides": {"task": ["+experiment=dpo_beta", "objective.beta=0.3"]}}}
    )
    cb.on_job_start(cfg, task_function=None)
    assert os.environ["WANDB_NAME"] == "beta=0.3" and os.environ["WANDB_RUN_GROUP"] == "dpo_beta"
    monkeypatch.setenv("WANDB_NAME", "mine")
    SweepCallback().on_job_start(cfg, task_function=None)
    assert os.environ["WANDB_NAME"] == "mine"


def test_job_names_keep_only_the_swept_keys_of_each_jobs_overrides(monkeypatch):
    monkeypatch.delenv("WANDB_NAME", raising=False)
    multirun = OmegaConf.create(
        {
            "task_name": "dpo_beta",
            "hydra": {
                "sweeper": {"params": {"objective.beta": "0.01,0.5"}},
                "overrides": {
                    "task": ["+experiment=dpo_beta", "objective.optimizer.lr=1e-4,3e-4", "trainer.max_steps=2"]
                },
            },
        }
    )
    assert sweep_keys(multirun) == ["objective.beta", "objective.optimizer.lr"]
    cb = SweepCallback()
    cb.on_multirun_start(multirun)
    names = []
    for beta, lr in [("0.01", "1e-4"), ("0.5", "3e-4")]:
        job = OmegaConf.create(
            {
                "task_name": "dpo_beta",
                "hydra": {
                    "sweeper": {"params": {"objective.beta": "0.01,0.5"}},
                    "overrides": {
                        "task": [
                            f"objective.beta={beta}",
                            "+experiment=dpo_beta",
                            f"objective.optimizer.lr={lr}",
                            "trainer.max_steps=2",
                        ]
                    },
                },
            }
        )
        cb.on_job_start(job, task_function=None)
        names.append(os.environ["WANDB_NAME"])
    assert names == ["beta=0.01,lr=1e-4", "beta=0.5,lr=3e-4"]
    # a single run of a sweep experiment sets no swept key: every visible override names it
    monkeypatch.delenv("WANDB_NAME")
    single = OmegaConf.create(
        {
            "task_name": "t",
            "hydra": {
                "sweeper": {"params": {"objective.beta": "0.1,0.5"}},
                "overrides": {"task": ["trainer.max_steps=2"]},
            },
        }
    )
    SweepCallback().on_job_start(single, task_function=None)
    assert os.environ["WANDB_NAME"] == "max_steps=2"


def test_wandb_logger_takes_name_and_group_from_the_job_environment(cfg_of, monkeypatch):
    monkeypatch.setenv("WANDB_NAME", "beta=0.3")
    monkeypatch.setenv("WANDB_RUN_GROUP", "dpo_beta")
    cfg = cfg_of("logger=wandb")
    assert (cfg.logger.name, cfg.logger.group) == ("beta=0.3", "dpo_beta")
    monkeypatch.delenv("WANDB_NAME")
    monkeypatch.delenv("WANDB_RUN_GROUP")
    assert cfg_of("logger=wandb").logger.name is None


@pytest.mark.parametrize("experiment", ["dpo_toy", "dpo_beta", "dpo_lr", "dpo_epochs", "dpo_grid"])
def test_dpo_experiments_compose_with_their_sweeps(cfg_of, experiment):
    cfg = cfg_of(f"+experiment={experiment}", hydra_cfg=True)
    assert cfg.objective._target_ == "zephyr.modules.dpo.DPOModule"
    assert cfg.data._target_ == "zephyr.data.preference.PreferenceDataModule"
    assert cfg.model.path == cfg.paths.sft_model and cfg.objective.beta == 0.1
    params = dict(cfg.hydra.sweeper.params or {})
    expected = {
        "dpo_toy": {},
        "dpo_beta": {"objective.beta": "0.01,0.05,0.1,0.3,0.5"},
        "dpo_lr": {"objective.optimizer.lr": "3.0e-5,1.0e-4,3.0e-4,1.0e-3"},
        "dpo_epochs": {"trainer.max_epochs": "1,2,3"},
        "dpo_grid": {
            "objective.beta": "0.01,0.1,0.5",
            "objective.optimizer.lr": "3.0e-5,1.0e-4,3.0e-4",
            "trainer.max_epochs": "1,3",
        },
    }[experiment]
    assert params == expected
    assert "zephyr.sweep.SweepCallback" in {c._target_ for c in cfg.hydra.callbacks.values()}


def test_zephyr_7b_dpo_is_the_paper_recipe(cfg_of):
    cfg = cfg_of("+experiment=zephyr_7b_dpo")
    o, d, t, hw = cfg.objective, cfg.data, cfg.trainer, cfg.hardware
    assert (o.beta, o.loss_type, o.label_smoothing, o.rpo_alpha) == (0.1, "sigmoid", 0.0, None)
    assert o.optimizer._target_ == "torch.optim.AdamW" and o.optimizer.lr == 5e-7 and o.optimizer.weight_decay == 0
    assert (o.scheduler.name, o.scheduler.warmup_ratio) == ("linear", 0.1)
    assert (t.max_epochs, t.max_steps) == (3, -1)
    global_batch = d.batch_size * t.accumulate_grad_batches * hw.devices * hw.num_nodes
    assert global_batch == 32 and hw.devices * hw.num_nodes == 16
    assert (d.max_length, d.max_prompt_length) == (1024, 512)
    assert (d.name, d.split, d.eval_split) == ("HuggingFaceH4/ultrafeedback_binarized", "train_prefs", "test_prefs")
    assert hw.precision == "bf16-mixed" and cfg.strategy.name == "deepspeed" and cfg.strategy.stage == 3
    assert cfg.model.config.hidden_size == 4096 and cfg.model.dtype == "bfloat16"
    assert cfg.model.path == cfg.paths.sft_model


def test_sweep_configs_compose(cfg_of):
    cfg = cfg_of("+experiment=dpo_toy", "+sweep=dpo_beta_lr", hydra_cfg=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert set(cfg.hydra.sweeper.params) == {"objective.beta", "objective.optimizer.lr"}


def _has_optuna_plugin() -> bool:
    try:
        return importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(not _has_optuna_plugin(), reason="hydra-optuna-sweeper is not installed")
def test_optuna_sweep_composes_when_the_plugin_is_installed(cfg_of):
    cfg = cfg_of("+experiment=dpo_toy", "+sweep=optuna", hydra_cfg=True)
    assert cfg.optimized_metric == "eval/rewards/accuracies" and cfg.hydra.sweeper.direction == "maximize"


def test_optuna_sweep_file_declares_its_search_space():
    sweep = OmegaConf.load(CONF / "sweep" / "optuna.yaml")
    assert sweep.defaults == [{"override /hydra/sweeper": "optuna"}]
    assert set(sweep.hydra.sweeper.params) == {"objective.beta", "objective.optimizer.lr"}
