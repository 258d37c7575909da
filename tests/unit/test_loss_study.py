"""``+experiment=loss_study``: the per-loss configs, the ``heldout`` block, ``heldout_kl``, summary and bar plots."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import REPO, TINY_CONFIG
from zephyr.errors import ConfigError
from zephyr.eval import report
from zephyr.eval.heldout import check_heldout, heldout_settings, heldout_tasks, sampled_kl
from zephyr.sweep import summarize

LOSSES = str(OmegaConf.load(REPO / "conf" / "sweep" / "loss.yaml").hydra.sweeper.params.loss).split(",")


def test_the_sweep_covers_the_issues_losses():
    need = {"sigmoid", "ipo", "sigmoid_norm", "apo_zero", "discopop", "simpo", "orpo", "kto", "sigmoid_sft"}
    assert need <= set(LOSSES)
    assert all((REPO / "conf" / "loss" / f"{name}.yaml").is_file() for name in LOSSES)


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_starts_from_the_demos_dsft_on_the_demos_pairs(compose, tmp_path, loss):
    cfg = compose("+experiment=loss_study", f"loss={loss}")
    demo = tmp_path / "runs" / "demo"
    assert cfg.model.path == str(demo / "dsft" / "model")
    assert cfg.objective.optimizer.lr == 5.0e-4 and cfg.trainer.max_epochs == 2 and cfg.seed == 0
    assert (cfg.data.max_length, cfg.data.max_prompt_length, cfg.data.eval_size) == (192, 96, 0)
    target = cfg.objective._target_.rsplit(".", 1)[-1]
    if loss == "kto":  # the same pairs, split into halves, 16 rows = 8 pairs' completions per step
        assert target == "KTOModule" and cfg.data.path is None and cfg.data.batch_size == 16
        assert cfg.data.toy._target_ == "zephyr.feedback.kto.unpair"
        assert cfg.data.toy.pairs.path == str(demo / "data" / "pairs.jsonl")
        return
    assert cfg.data.path == str(demo / "data" / "pairs.jsonl") and cfg.data.batch_size == 8
    if loss in ("simpo", "orpo"):
        assert target == "ReferenceFreeModule" and cfg.objective.loss == loss
        return
    assert target == "DPOModule" and cfg.objective.beta == 0.1 and cfg.objective.rpo_alpha is None
    expected = ["sigmoid", "sft"] if loss == "sigmoid_sft" else loss
    loss_type = cfg.objective.loss_type
    assert (OmegaConf.to_container(loss_type) if OmegaConf.is_list(loss_type) else loss_type) == expected


def test_the_heldout_block_is_the_demos_eval(compose):
    assert compose().heldout is None  # off by default
    demo = OmegaConf.load(REPO / "conf" / "demo" / "full.yaml")
    block = compose("+experiment=loss_study").heldout
    settings = heldout_settings(block)
    assert OmegaConf.to_container(settings.world.families) == OmegaConf.to_container(demo.world.families)
    assert OmegaConf.to_container(settings.eval) == OmegaConf.to_container(demo.eval)
    assert [t.question for t in heldout_tasks(settings)] == [t.question for t in heldout_tasks(demo)]


def test_missing_demo_outputs_say_run_zephyr_demo_first(compose):
    from zephyr.run import check_model_path

    with pytest.raises(ConfigError, match=r"has no checkpoint; run `zephyr demo` first \(it writes runs/demo"):
        check_model_path(compose("+experiment=loss_study"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("heldout.n=0", "heldout.n=0 must be an integer >= 1"),
        ("heldout.kl_n=-1", "heldout.kl_n=-1 must be an integer >= 0"),
        ("heldout.families=[unit_conversion,nope]", "heldout.families: unknown families ['nope']"),
        ("+heldout.temperature=1", "heldout: unknown key(s) ['temperature']"),
        ("hardware.devices=2", "heldout runs on one process (hardware.devices=2"),
    ],
)
def test_bad_heldout_blocks_are_refused_in_one_line(compose, override, message):
    with pytest.raises(ConfigError) as err:
        check_heldout(compose("+experiment=loss_study", override))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_heldout_kl_is_the_mean_sampled_log_ratio(tokenizer):
    """heldout_kl = mean of log π(y|x) − log π_sft(y|x) over seeded samples y ~ π, scored on the sampled ids."""
    from zephyr.generation import Generator, StreamState
    from zephyr.models.mistral import build_model
    from zephyr.toy.tasks import sample_tasks

    policy = build_model(config=TINY_CONFIG, init_seed=0).eval()
    other = build_model(config=TINY_CONFIG, init_seed=1).eval()
    tasks = sample_tasks(3, 7, split="heldout", families=["count_letter"])
    assert sampled_kl(policy, policy, tokenizer, tasks, max_new_tokens=6, seed=5) == 0.0
    kl = sampled_kl(policy, other, tokenizer, tasks, max_new_tokens=6, seed=5, batch_size=2)
    # by hand: the same seeded samples, full-logits log-probs of each sampled token under both models
    gen = Generator(policy, tokenizer, insert_empty_system=True)
    ratios = []
    for i, t in enumerate(tasks):
        prompt = gen.prompt_ids([{"role": "user", "content": t.question}])
        st = StreamState()
        for _ in gen.stream(prompt, temperature=1.0, max_tokens=6, seed=5 + i, state=st):
            pass
        y = st.token_ids + ([tokenizer.eos_token_id] if st.finish_reason == "stop" else [])
        ids = torch.tensor([prompt + y])
        with torch.no_grad():
            lp = [m(input_ids=ids).logits[0, len(prompt) - 1 : -1].log_softmax(-1) for m in (policy, other)]
        picked = [p.gather(-1, torch.tensor(y)[:, None]).sum().item() for p in lp]
        ratios.append(picked[0] - picked[1])
    assert math.isfinite(kl) and kl == pytest.approx(sum(ratios) / len(ratios), abs=1e-4)
    assert kl != 0.0


def _loss_multirun(root, seeds=(0, 1)):
    """A loss-study multirun folder as Hydra + zephyr write it: per job .hydra/overrides.yaml and metrics.json."""
    job = 0
    for seed in seeds:
        for i, loss in enumerate(("sigmoid", "simpo", "kto")):
            d = root / str(job)
            (d / ".hydra").mkdir(parents=True)
            (d / ".hydra" / "overrides.yaml").write_text(f"- +experiment=loss_study\n- loss={loss}\n- seed={seed}\n")
            metrics = {"train/loss": 0.5, "heldout_accuracy": 0.2 + 0.1 * i + 0.02 * seed, "heldout_kl": 1.0 + i}
            metrics.update({"heldout_accuracy/count_letter": 0.5, "global_step": 4.0, "runtime_s": 3.0})
            (d / "metrics.json").write_text(json.dumps(metrics))
            job += 1
    return root


def test_summary_gets_heldout_columns_and_the_report_draws_bars_per_loss(tmp_path):
    d = _loss_multirun(tmp_path / "multirun")
    rows = summarize(d, swept=["loss"])
    assert [r["loss"] for r in rows] == ["sigmoid", "simpo", "kto"] * 2
    assert [r["heldout_accuracy"] for r in rows[:3]] == pytest.approx([0.2, 0.3, 0.4])
    header = (d / "summary.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "seed", "heldout_accuracy", "heldout_kl", "heldout_accuracy/count_letter"} <= set(header)

    df = report.load_sweep(d)
    assert report.swept_keys(df) == ["loss", "seed"]
    assert report.is_categorical(df, "loss") and not report.is_categorical(df, "seed")
    assert report.metric_columns(df)[:2] == ["heldout_accuracy", "heldout_kl"]
    fig = report.plot_sweep(df, "loss", ["heldout_accuracy", "heldout_kl"])
    acc, kl = fig.axes[0], fig.axes[1]
    assert [t.get_text() for t in acc.get_xticklabels()] == ["sigmoid", "simpo", "kto"]
    assert [p.get_height() for p in acc.patches] == pytest.approx([0.21, 0.31, 0.41])  # mean of seeds 0, 1
    assert [p.get_height() for p in kl.patches] == pytest.approx([1.0, 2.0, 3.0])
    from matplotlib.container import ErrorbarContainer

    (err,) = [c for c in acc.containers if isinstance(c, ErrorbarContainer)]
    halves = [(seg[1][1] - seg[0][1]) / 2 for seg in err.lines[2][0].get_segments()]
    assert halves == pytest.approx([0.01, 0.01, 0.01]) and "2 seeds" in acc.get_title()  # pstdev of 2 seeds
    assert acc.get_xscale() == "linear"

    written = report.write_sweep_report(d)
    names = {p.name for p in written}
    assert {"loss_sweep.png", "loss_heldout.png", "report.md"} <= names and "seed_heldout.png" not in names
    assert (d / "report" / "loss_heldout.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "highest `heldout_accuracy`: 0.42 (job 5: loss=kto, seed=1)" in (d / "report" / "report.md").read_text()
