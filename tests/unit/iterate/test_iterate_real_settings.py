"""The real-data path of ``zephyr iterate``: settings checks, per-round prompt slices, pool selection, hub prompts."""

from __future__ import annotations

import pytest
import yaml
from rich.console import Console

from zephyr.feedback.complete import load_prompts
from zephyr.feedback.store import write_jsonl
from zephyr.iterate import (
    REAL_EXAMPLE,
    is_real,
    load_iterate_settings,
    member_name,
    real_feedback,
    round_prompts,
    source_slice,
    win_rate_questions,
)

pytestmark = pytest.mark.unit


def _prompts(path, n):
    write_jsonl(path, [{"prompt": f"Question number {i}?", "source": "s" + str(i % 2)} for i in range(n)])
    return path


@pytest.fixture
def real(tmp_path):
    """Overrides of a minimal real-data run: a start model folder, a prompt file of 10, a feedback file."""
    fb = tmp_path / "fb.yaml"
    fb.write_text(yaml.safe_dump({"pool": [{"_target_": "zephyr.toy.students.RuleStudent", "name": "a"}]}))
    src = _prompts(tmp_path / "p.jsonl", 10)
    start = tmp_path / "sft-model"
    start.mkdir()
    (start / "config.json").write_text("{}")
    return [
        f"iterate.start={start}",
        f"iterate.prompt_source={{source: jsonl, path: {src}, n: 4}}",
        f"iterate.feedback={fb}",
    ]


def test_real_settings_and_prompt_slices(real):
    s = load_iterate_settings("ci", [*real, "iterate.rounds=2"])
    assert is_real(s) and not is_real(load_iterate_settings("ci"))
    r1, r2 = round_prompts(s, 0, 1), round_prompts(s, 0, 2)
    assert len(r1) == len(r2) == 4 and not {p["prompt_id"] for p in r1} & {p["prompt_id"] for p in r2}
    assert round_prompts(s, 0, 1) == r1  # seeded: a rerun draws the same slice
    assert {p["prompt_id"] for p in round_prompts(s, 1, 1)} != {p["prompt_id"] for p in r1}  # another seed
    same = load_iterate_settings("ci", [*real, "iterate.rounds=2", "iterate.prompts=same"])
    assert round_prompts(same, 0, 2) == round_prompts(same, 0, 1) == r1


def test_source_too_small_for_fresh_rounds(tmp_path):
    spec = {"source": "jsonl", "path": str(_prompts(tmp_path / "p.jsonl", 10)), "n": 4}
    assert len(source_slice(spec, 0, 1, "same", 3)) == 4  # the same 4 every round: 10 are enough
    with pytest.raises(ValueError, match=r"p.jsonl\): 10 distinct prompts, fresh prompts over 3 round\(s\) of n=4 "
                       r"need 12"):  # fmt: skip
        source_slice(spec, 0, 1, "fresh", 3)


@pytest.mark.parametrize(
    ("drop", "extra", "error", "message"),
    [
        ("iterate.prompt_source", [], ValueError, f"set iterate.prompt_source too \\(see {REAL_EXAMPLE}\\)"),
        ("iterate.feedback", [], ValueError, "set iterate.feedback too"),
        (None, ["iterate.feedback=nowhere.yaml"], FileNotFoundError, "feedback config file not found: nowhere.yaml"),
        (None, ["iterate.pool=[a]"], ValueError, "name the policy member 'dsft'"),
        (None, ["iterate.prompt_source.n=0"], ValueError, "iterate.prompt_source.n: prompts per round"),
        (
            None,
            ["iterate.start=org/sft-model"],
            ValueError,
            "iterate.start=org/sft-model: generation.backend=local loads a local model folder",
        ),
    ],
)
def test_real_settings_refused_in_one_line(real, drop, extra, error, message):
    over = [o for o in real if not (drop and o.startswith(drop + "="))]
    with pytest.raises(error, match=message):
        load_iterate_settings("ci", [*over, *extra])


def test_member_name_reads_specs_without_building():
    assert member_name({"_target_": "x.OpenAIBackend", "model": "gpt-4o"}) == "gpt-4o"
    assert member_name({"_target_": "x.OpenAIBackend", "name": "zephyr", "model": "HuggingFaceH4/zephyr"}) == "zephyr"
    assert member_name({"_target_": "x.LocalCheckpointBackend", "path": "runs/dsft/model/"}) == "model"
    assert member_name({"_target_": "zephyr.toy.students.default_pool"}) is None


def test_pool_member_not_in_the_feedback_file(tmp_path, real):
    fb = tmp_path / "fb2.yaml"
    pool = [
        {"_target_": "zephyr.feedback.backends.OpenAIBackend", "name": "m1", "model": "m1", "base_url": "http://x"},
        {"_target_": "zephyr.generation.LocalCheckpointBackend", "path": str(tmp_path / "not_there")},
    ]
    fb.write_text(yaml.safe_dump({"pool": pool, "judge": {"_target_": "zephyr.toy.judge.VerifierJudge"}}))
    s = load_iterate_settings("ci", [*real[:2], f"iterate.feedback={fb}", "iterate.pool=[m1,m2,dsft]"])
    with pytest.raises(
        ValueError, match=r"iterate.pool: \['m2'\] not in the pool of .*fb2.yaml \(\['m1', 'not_there'\]\)"
    ):
        real_feedback(s, tmp_path / "r", 0, [], policy=None, console=Console(quiet=True))


def test_win_rate_questions_use_known_answers_as_references(tmp_path, real):
    h = tmp_path / "h.jsonl"
    write_jsonl(h, [{"prompt": "What is 2+2?", "correct_answers": ["4"]}, {"prompt": "Hi"}])
    s = load_iterate_settings("ci", [*real, f"iterate.win_rate.prompts={{source: jsonl, path: {h}, n: 5}}"])
    q = win_rate_questions(s)
    assert [(x["category"], x["reference"]) for x in q] == [("math", ["4"]), ("general", [""])]
    assert q[0]["source"] == "h" and q[0]["turns"] == ["What is 2+2?"]
    assert win_rate_questions(load_iterate_settings("ci", real)) == []  # no held-out prompts: no evaluation


def test_hub_prompts_go_through_load_dataset(tmp_path):
    """``source: hub`` is ``datasets.load_dataset(name, split=...)``: here a local dataset folder of jsonl files."""
    d = tmp_path / "my_prompts"
    (d / "data").mkdir(parents=True)
    write_jsonl(
        d / "data" / "train_prefs-00000-of-00001.jsonl", [{"prompt": f"p{i}", "prompt_id": f"id{i}"} for i in range(5)]
    )
    write_jsonl(d / "data" / "test_prefs-00000-of-00001.jsonl", [{"prompt": "held out", "prompt_id": "t0"}])
    rows = load_prompts({"source": "hub", "name": str(d), "split": "train_prefs", "n": 3})
    assert [r["prompt_id"] for r in rows] == ["id0", "id1", "id2"] and rows[0]["source"] == str(d)
    assert [r["instruction"] for r in load_prompts({"source": "hub", "name": str(d), "split": "test_prefs"})] == [
        "held out"
    ]
    with pytest.raises(ValueError, match="source 'hub' needs a dataset name"):
        load_prompts({"source": "hub"})


def test_prompt_rows_refuse_empty_text(tmp_path):
    p = tmp_path / "p.jsonl"
    write_jsonl(p, [{"prompt": "ok"}, {"prompt": "  "}])
    with pytest.raises(ValueError, match=r"p.jsonl:2: field 'prompt' is not a non-empty string"):
        load_prompts({"source": "jsonl", "path": str(p)})


def test_shipped_real_data_example_loads():
    """``zephyr iterate --config conf/iterate/ultrafeedback.yaml`` (the README's real-data entry) is a valid file."""
    s = load_iterate_settings("full", [], REAL_EXAMPLE)
    assert is_real(s) and s.iterate.start == "HuggingFaceH4/mistral-7b-sft-beta"
    assert s.iterate.prompt_source.name == s.iterate.win_rate.prompts.name == "HuggingFaceH4/ultrafeedback_binarized"
    assert (s.iterate.prompt_source.split, s.iterate.win_rate.prompts.split) == ("train_prefs", "test_prefs")
    assert list(s.model) == [] and "+experiment=zephyr_7b_dpo" in s.ddpo
    assert s.iterate.generation.backend == "vllm" and s.iterate.feedback == "conf/feedback/vllm.yaml"


def test_example_round_dpo_run_composes_on_the_round_pairs(tmp_path):
    """Round 2 of the example: +experiment=zephyr_7b_dpo's recipe, trained on the round's pairs from round 1's
    export, with the start model as reference under iterate.reference=sft."""
    from zephyr.conf import compose
    from zephyr.iterate import round_dpo_overrides, train_overrides

    s = load_iterate_settings("full", ["iterate.reference=sft"], REAL_EXAMPLE)
    rdir, start = tmp_path / "round_2", tmp_path / "round_1" / "ddpo" / "model"
    over = round_dpo_overrides(s, rdir, train_overrides(s, tmp_path, 0, 2), start, "org/sft", None)
    cfg = compose("train", over)
    assert cfg.data.path == str(rdir / "pairs.jsonl") and cfg.data.name is None  # not the hub dataset
    assert cfg.model.path == str(start) and cfg.objective.optimizer.lr == 5.0e-7 and cfg.trainer.max_epochs == 1
    assert cfg.objective.reference.path == "org/sft" and cfg.iterate.round == 2
    assert cfg.objective.reference.cache_dir == str(rdir / "ref_cache") and cfg.strategy.stage == 3
