"""Demo bookkeeping without training: settings merge, seed aggregation, reuse of finished seeds, prompt rendering."""

from __future__ import annotations

import json

import pytest

from zephyr.data.chat_template import prompt_ids
from zephyr.demo import MODELS, aggregate, load_settings, run_demo

pytestmark = pytest.mark.unit


def _report(seed: int, accs: list[float], dsft_s: float) -> dict:
    return {
        "seed": seed,
        "heldout_n": 500,
        "accuracy": dict(zip(MODELS, accs)),
        "stages": {"sft_data": 1.0, "dsft": dsft_s, "eval": 2.0},
        "total_s": 3.0 + dsft_s,
    }


def test_aggregate_mean_std_min_max():
    reps = [_report(0, [0.0, 0.5, 0.5, 0.7, 0.1], 10.0), _report(1, [0.0, 0.3, 0.6, 0.9, 0.0], 20.0)]
    agg = aggregate(reps)
    assert agg["seeds"] == [0, 1]
    assert agg["seed"] == 0
    assert agg["accuracy"]["dsft"] == pytest.approx(0.4)
    assert agg["accuracy_std"]["dsft"] == pytest.approx(0.1)  # population std of 0.5, 0.3
    assert agg["accuracy"]["ddpo"] == pytest.approx(0.8)
    assert agg["accuracy_min"]["dsft_compute_matched"] == 0.5
    assert agg["accuracy_max"]["dsft_compute_matched"] == 0.6
    assert agg["stages"]["dsft"] == pytest.approx(15.0)
    assert agg["total_s"] == pytest.approx(18.0)
    assert list(agg["accuracy"]) == list(MODELS)
    with pytest.raises(ValueError, match="no per-seed"):
        aggregate([])


def test_settings_ci_overrides_full_and_dotlist():
    full, ci = load_settings("full"), load_settings("ci")
    assert ci.sft_data.n < full.sft_data.n and ci.eval.n < full.eval.n
    assert ci.eval.seed == full.eval.seed  # the held-out draw is the same question source
    assert "dsft" in full.feedback.pool and len(full.feedback.pool) >= 4
    assert any(o.startswith("objective.rpo_alpha=") for o in full.ddpo)
    s = load_settings("ci", ["feedback.prompts=7", "ddpo=[objective.beta=0.5]"])
    assert s.feedback.prompts == 7 and list(s.ddpo) == ["objective.beta=0.5"]
    with pytest.raises(ValueError, match="size"):
        load_settings("huge")
    with pytest.raises(ValueError, match="key=value"):
        load_settings("ci", ["oops"])


def test_seeds_reuse_finished_reports_and_write_aggregate(tmp_path):
    for s, accs in ((3, [0.0, 0.2, 0.2, 0.4, 0.0]), (4, [0.0, 0.4, 0.4, 0.6, 0.0])):
        (tmp_path / f"seed_{s}").mkdir()
        (tmp_path / f"seed_{s}" / "report.json").write_text(json.dumps(_report(s, accs, 5.0)))
    rep = run_demo(tmp_path, size="ci", seed=3, seeds=2)  # nothing to train: both seeds are finished
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == rep
    assert rep["seeds"] == [3, 4]
    assert rep["accuracy"]["ddpo"] == pytest.approx(0.5)
    assert rep["accuracy_std"]["ddpo"] == pytest.approx(0.1)
    for name in ("report.md", "accuracy.png", "stages.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "dsft_compute_matched" in (tmp_path / "report.md").read_text()


def test_prompt_rendering_matches_training(tokenizer):
    from zephyr.data.sft import tokenize_conversation

    msgs = [{"role": "user", "content": "What is 12 + 30?"}]
    ids = prompt_ids(tokenizer, msgs, insert_empty_system=True)
    full = tokenize_conversation(tokenizer, [*msgs, {"role": "assistant", "content": "The answer is 42."}])
    assert ids[0] == tokenizer.bos_token_id
    assert full.input_ids[: len(ids)] == ids  # the generation prompt is the training prefix, token for token
    assert full.labels[len(ids) - 1] == -100 and full.labels[len(ids)] != -100


def test_world_families_and_teacher_drive_heldout_questions_and_teacher():
    from zephyr.demo import heldout_tasks, make_teacher, world_families

    s = load_settings("ci", ["world.families=[unit_conversion,reverse_list]", "world.teacher.unit_error=1.0"])
    assert world_families(s) == ["unit_conversion", "reverse_list"]
    tasks = heldout_tasks(s)
    assert len(tasks) == s.eval.n and {t.family for t in tasks} == {"unit_conversion", "reverse_list"}
    assert heldout_tasks(s) == tasks  # fixed: the same questions for every model and seed
    teacher = make_teacher(s, seed=0)
    assert teacher.profile.unit_error == 1.0 and teacher.profile.carry_error == 0.9
    assert world_families(load_settings("ci", ["world.families=null"])) is None
    with pytest.raises(ValueError, match=r"world.families: unknown families \['algebra'\]"):
        world_families(load_settings("ci", ["world.families=[algebra]"]))
    with pytest.raises(ValueError, match="at least one family"):
        world_families(load_settings("ci", ["world.families=[]"]))
    with pytest.raises(ValueError, match="world.teacher: .*wit"):
        make_teacher(load_settings("ci", ["world.teacher.wit=0.5"]), seed=0)


def test_aggregate_and_markdown_show_per_family_accuracy():
    from zephyr.eval.report import demo_markdown

    reps = [_report(0, [0.0, 0.2, 0.2, 0.4, 0.1], 1.0), _report(1, [0.0, 0.3, 0.2, 0.5, 0.1], 1.0)]
    reps[0]["by_family"] = {m: {"unit_conversion": 0.0, "count_letter": 0.6} for m in MODELS}
    reps[1]["by_family"] = {m: {"unit_conversion": 0.2, "count_letter": 0.7} for m in MODELS}
    reps[1]["by_family"]["ddpo"]["unit_conversion"] = 0.7
    agg = aggregate(reps)
    assert agg["by_family"]["ddpo"] == {"count_letter": pytest.approx(0.65), "unit_conversion": pytest.approx(0.35)}
    assert agg["by_family"]["dsft"]["unit_conversion"] == pytest.approx(0.1)
    md = demo_markdown(agg)
    assert "| model | count_letter | unit_conversion |" in md
    assert "| ddpo | 0.650 | 0.350 |" in md
    del reps[0]["by_family"]  # an older report without it: no per-family table, no error
    assert "by_family" not in aggregate(reps) and "Per task family" not in demo_markdown(aggregate(reps))


def test_print_report_shows_families_in_80_columns():
    from rich.console import Console

    from zephyr.demo import print_report

    rep = aggregate([_report(0, [0.0, 0.25, 0.25, 0.45, 0.19], 1.0)] * 2)
    rep["by_family"] = {m: {"count_letter": 0.7, "reverse_list": 0.0, "unit_conversion": 0.65} for m in MODELS}
    console = Console(record=True, width=80)
    print_report(rep, console)
    text = console.export_text()
    assert "dsft_compute_matched" in text and "conversion" in text  # names whole, headers folded at "_"
    assert "0.450 ± 0.000" in text and "0.650" in text
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.parametrize("insert_empty_system", [True, False])
def test_demo_evaluation_answers_through_the_generation_engine(tokenizer, tiny_model, insert_empty_system):
    from omegaconf import OmegaConf

    from zephyr.demo import evaluate
    from zephyr.generation import Generator, GeneratorBackend
    from zephyr.toy.tasks import sample_tasks

    tasks = sample_tasks(5, 0, split="heldout")
    settings = OmegaConf.create({"eval": {"max_new_tokens": 6, "batch_size": 2}})
    got = evaluate(tiny_model, tokenizer, tasks, settings, insert_empty_system=insert_empty_system)
    engine = GeneratorBackend(Generator(tiny_model, tokenizer, insert_empty_system=insert_empty_system), batch_size=2)
    want = engine.chat_batch([[{"role": "user", "content": t.question}] for t in tasks], temperature=0.0, max_tokens=6)
    assert [e["answer"] for e in got["examples"]] == [r.texts[0] for r in want]
    assert got["accuracy"] == 0.0 and set(got["by_family"]) == {t.family for t in tasks}
