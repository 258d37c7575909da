"""Config loading, backend factory, OpenAI backend retries (mock transport), and the toy-world CLI path."""

import argparse
import json
from pathlib import Path

import httpx
import openai
import pytest
from omegaconf import OmegaConf

from zephyr.feedback.backends import OpenAIBackend, build_backend, build_pool, redact
from zephyr.feedback.cli import load_config, register

pytestmark = pytest.mark.unit

CONF = Path(__file__).resolve().parents[3] / "conf" / "feedback"


def test_toy_yaml_is_the_default_and_real_configs_load(tmp_path):
    toy = OmegaConf.to_container(OmegaConf.load(CONF / "toy.yaml"))
    assert OmegaConf.to_container(load_config()) == toy
    assert OmegaConf.to_container(load_config(str(CONF / "toy.yaml"))) == toy
    for name in ("openai", "vllm"):
        cfg = load_config(str(CONF / f"{name}.yaml"))
        assert len(cfg.pool) >= 4 and cfg.sft.instructions.source == "self_instruct"
        targets = {"zephyr.feedback.backends.OpenAIBackend", "zephyr.generation.LocalCheckpointBackend"}
        assert all(m._target_ in targets and "type" not in m for m in cfg.pool)
        assert "api_key" not in OmegaConf.to_yaml(cfg).replace("api_key_env", "")


def test_unknown_key_names_file_and_backends_replace_whole(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("feedback:\n  judge_retry: 2\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: .*judge_retry"):
        load_config(str(bad))
    ok = tmp_path / "ok.yaml"
    ok.write_text("judge: {type: openai, model: m, api_key_env: null}\nfeedback: {judge_retries: 9}\n")
    cfg = load_config(str(ok), ["binarize.ties=random"])
    assert OmegaConf.to_container(cfg.judge) == {"type": "openai", "model": "m", "api_key_env": None}
    assert cfg.feedback.judge_retries == 9 and cfg.binarize.ties == "random" and cfg.feedback.critique is True


def test_build_backend_errors_and_toy_types(monkeypatch):
    with pytest.raises(ValueError, match="environment variable"):
        build_backend({"type": "openai", "model": "m", "api_key": "sk-x"})
    with pytest.raises(ValueError, match="backend spec: unknown type 'gpt' \\(openai \\| local \\| toy_teacher"):
        build_backend({"type": "gpt"})
    monkeypatch.delenv("ZEPHYR_TEST_KEY", raising=False)
    with pytest.raises(RuntimeError, match="environment variable ZEPHYR_TEST_KEY is not set"):
        build_backend({"type": "openai", "model": "m", "api_key_env": "ZEPHYR_TEST_KEY"})
    assert build_backend({"type": "toy_judge"}).name == "toy-verifier"
    assert build_backend({"_target_": "zephyr.toy.teacher.ToyTeacher", "seed": 3}).name == "toy-teacher"
    pool = build_pool({"type": "toy_pool", "seed": 0})
    assert len(pool) >= 4 and len({m.name for m in pool}) == len(pool)
    with pytest.raises(ValueError, match="repeated"):
        build_pool([{"type": "toy_student", "name": "s"}, {"type": "toy_student", "name": "s"}])


def _backend_with(monkeypatch, handler, **kw):
    monkeypatch.setenv("ZEPHYR_TEST_KEY", "sk-test-secret-value")
    b = OpenAIBackend("m", base_url="http://fake/v1", api_key_env="ZEPHYR_TEST_KEY", backoff_base=0.001, **kw)
    b._client = openai.OpenAI(
        base_url="http://fake/v1",
        api_key="sk-test-secret-value",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    return b


def _ok(text):
    return httpx.Response(
        200,
        json={
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        },
    )


def test_openai_backend_retries_429_and_5xx_then_succeeds(monkeypatch):
    statuses = iter([500, 429, 503])
    seen = []

    def handler(request):
        seen.append(json.loads(request.content))
        code = next(statuses, 200)
        return _ok("hi") if code == 200 else httpx.Response(code, json={"error": {"message": "busy"}})

    b = _backend_with(monkeypatch, handler)
    r = b.chat([{"role": "user", "content": "q"}], temperature=0.2, max_tokens=7, seed=11, stop=["\n\n"])
    assert r.texts == ["hi"] and (r.prompt_tokens, r.completion_tokens) == (5, 2)
    assert b.stats == {"calls": 4, "retries": 3, "errors": 0, "bad_bodies": 0}
    assert seen[0]["seed"] == 11 and seen[0]["max_tokens"] == 7 and seen[0]["stop"] == ["\n\n"]
    assert "sk-test" not in repr(b)


def test_openai_backend_gives_up_and_does_not_retry_400(monkeypatch):
    b = _backend_with(monkeypatch, lambda req: httpx.Response(500, json={"error": {"message": "down"}}), max_retries=2)
    with pytest.raises(RuntimeError, match=r"InternalServerError after 3 attempt\(s\)"):
        b.chat([{"role": "user", "content": "q"}])
    assert b.stats["retries"] == 2
    calls = []

    def bad_request(req):
        calls.append(1)
        return httpx.Response(400, json={"error": {"message": "bad key sk-test-secret-value"}})

    b = _backend_with(monkeypatch, bad_request)
    with pytest.raises(RuntimeError, match="BadRequestError after 1 attempt") as e:
        b.chat([{"role": "user", "content": "q"}])
    assert len(calls) == 1 and "sk-test-secret-value" not in str(e.value)
    assert redact("x sk-test-secret-value y") == "x *** y"


def _cli(argv):
    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"))
    args = p.parse_args(argv)
    return args.func(args)


def test_toy_world_cli_sft_feedback_binarize(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert _cli(["data", "sft", "--out", out, "--n", "30", "--no-progress"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "train_sft.jsonl").read_text().splitlines()]
    assert len(rows) + len((tmp_path / "run" / "test_sft.jsonl").read_text().splitlines()) == 30
    assert _cli(["data", "feedback", "--out", out, "--n", "20", "--no-progress"]) == 0
    raw = [json.loads(x) for x in (tmp_path / "run" / "ultrafeedback.jsonl").read_text().splitlines()]
    assert len(raw) == 20
    for r in raw:
        assert set(r) == {"source", "instruction", "models", "completions", "correct_answers", "incorrect_answers"}
        assert len(r["completions"]) == 4 and len(set(r["models"])) == 4
        for c in r["completions"]:
            assert set(c["annotations"]) == {"instruction_following", "honesty", "truthfulness", "helpfulness"}
            assert 1 <= c["overall_score"] <= 10
    assert _cli(["data", "binarize", "--out", out, "--no-progress", "--rejected", "random_lower"]) == 0
    report = json.loads((tmp_path / "run" / "binarize_report.json").read_text())
    assert report["pairs"] == report["train_prefs"] + report["test_prefs"] > 0
    assert report["mean_score_chosen"] > report["mean_score_rejected"]
    # the verifier knows the truth: chosen answers are more often correct than rejected ones
    from zephyr.toy.tasks import is_correct, parse_question

    pairs = [json.loads(x) for x in (tmp_path / "run" / "train_prefs.jsonl").read_text().splitlines()]
    right = [
        (is_correct(parse_question(p["prompt"]), p["chosen"][1]["content"]),
         is_correct(parse_question(p["prompt"]), p["rejected"][1]["content"]))
        for p in pairs
    ]  # fmt: skip
    assert sum(c for c, _ in right) > sum(r for _, r in right)


def test_cli_refuses_a_key_in_the_config_before_writing_anything(tmp_path, capsys):
    from zephyr.feedback.cli import main

    key = "sk-live-" + "9f3a" * 8
    cfg = tmp_path / "leaky.yaml"
    cfg.write_text(
        f"pool:\n  - {{type: openai, model: a, api_key_env: null}}\n  - {{type: openai, model: b, api_key: {key}}}\n"
    )
    out = tmp_path / "out"
    assert main(["data", "feedback", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("zephyr data feedback: error: pool[1].api_key: a secret")
    assert key not in err
    assert not out.exists()  # no folder, no config_feedback.yaml
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and p != cfg and key in p.read_text(errors="replace")]
    assert leaked == []
    # the same through --set, for every stage
    assert main(["data", "sft", "--out", str(out), "--set", f"teacher.api_key={key}"]) == 2
    assert "teacher.api_key: a secret" in capsys.readouterr().err and not out.exists()


def test_openai_backend_retries_a_200_with_a_truncated_body(monkeypatch):
    replies = iter(["cut", "cut"])

    def handler(request):
        if next(replies, None) == "cut":
            body = _ok("hi").content
            return httpx.Response(200, content=body[: len(body) // 2], headers={"content-type": "application/json"})
        return _ok("hi")

    b = _backend_with(monkeypatch, handler)
    assert b.chat([{"role": "user", "content": "q"}]).texts == ["hi"]
    assert b.stats == {"calls": 3, "retries": 2, "errors": 0, "bad_bodies": 2}
    cut = httpx.Response(200, content=b'{"id": "x", "choi', headers={"content-type": "application/json"})
    b = _backend_with(monkeypatch, lambda request: cut, max_retries=1)
    with pytest.raises(RuntimeError, match="JSONDecodeError after 2 attempt"):
        b.chat([{"role": "user", "content": "q"}])
    assert b.stats == {"calls": 2, "retries": 1, "errors": 1, "bad_bodies": 2}
    b = _backend_with(monkeypatch, lambda request: httpx.Response(200, text='{"id": "x"'), max_retries=1)
    with pytest.raises(RuntimeError, match="BadBodyError after 2 attempt"):
        b.chat([{"role": "user", "content": "q"}])
    assert b.stats == {"calls": 2, "retries": 1, "errors": 1, "bad_bodies": 2}


def test_feedback_defaults_have_one_home_the_toy_yaml():
    """Regression: FeedbackConfig's own defaults disagreed with the YAML (world_knowledge, max_tokens)."""
    from dataclasses import asdict, fields

    from zephyr.feedback.complete import FeedbackConfig

    toy = OmegaConf.load(CONF / "toy.yaml")
    fc = FeedbackConfig.from_config()
    assert fc.world_knowledge is False and toy.feedback.world_knowledge is False
    assert fc.completion_gen == {"temperature": 0.7, "top_p": 1.0, "max_tokens": 256}
    for f in fields(FeedbackConfig):
        want = toy.feedback[f.name] if f.name in toy.feedback else toy[f.name]
        assert asdict(fc)[f.name] == (OmegaConf.to_container(want) if OmegaConf.is_config(want) else want), f.name
    with pytest.raises(TypeError):
        FeedbackConfig()  # no second set of defaults in the dataclass
    assert FeedbackConfig.from_config(workers=1, critique=False).workers == 1
    cfg = load_config(overrides=["feedback.world_knowledge=true", "seed=7"])
    assert FeedbackConfig.from_config(cfg).world_knowledge is True and FeedbackConfig.from_config(cfg).seed == 7


OLD_TOY_BACKENDS = """
teacher: {type: toy_teacher}
user_sim: {type: toy_user}
pool: {type: toy_pool, seed: 0}
judge: {type: toy_judge}
"""  # conf/feedback/toy.yaml's backends before they were written as _target_


def _built(cfg) -> dict:
    return {
        "teacher": build_backend(cfg.teacher),
        "user_sim": build_backend(cfg.user_sim),
        "judge": build_backend(cfg.judge),
        "pool": build_pool(cfg.pool),
    }


def test_shipped_backends_are_hydra_targets_and_the_old_type_keys_build_the_same(tmp_path):
    new = load_config(str(CONF / "toy.yaml"))
    assert {k: new[k]._target_ for k in ("teacher", "user_sim", "judge", "pool")} == {
        "teacher": "zephyr.toy.teacher.ToyTeacher",
        "user_sim": "zephyr.toy.user.ToyUserSimulator",
        "judge": "zephyr.toy.judge.VerifierJudge",
        "pool": "zephyr.toy.students.default_pool",
    }
    old_file = tmp_path / "old_toy.yaml"
    old_file.write_text(OLD_TOY_BACKENDS)
    a, b = _built(new), _built(load_config(str(old_file)))
    for key in ("teacher", "user_sim", "judge"):
        assert type(a[key]) is type(b[key]) and a[key].name == b[key].name, key
    assert [(type(m).__name__, m.name) for m in a["pool"]] == [(type(m).__name__, m.name) for m in b["pool"]]
    assert len(a["pool"]) == 5 and a["pool"][0].chat([{"role": "user", "content": "What is 2 + 3?"}], seed=1).texts[0]


def test_old_and_new_openai_specs_build_the_same_backend():
    old = {"type": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1", "api_key_env": None, "timeout": 7}
    new = {**{k: v for k, v in old.items() if k != "type"}, "_target_": "zephyr.feedback.backends.OpenAIBackend"}
    assert (
        repr(build_backend(old))
        == repr(build_backend(new))
        == ("OpenAIBackend(model='m', base_url='http://127.0.0.1:9/v1', api_key_env=None)")
    )
    assert build_backend(new).timeout == 7.0 and build_pool([old, {**new, "name": "b"}])[1].name == "b"


def test_backend_spec_errors_are_one_line():
    with pytest.raises(ValueError, match="backend spec: give _target_ or the older type key, not both"):
        build_backend({"type": "toy_judge", "_target_": "zephyr.toy.judge.VerifierJudge"})
    with pytest.raises(ValueError, match="backend spec: needs a _target_"):
        build_backend({"model": "m"})
    with pytest.raises(ValueError, match=r"backend spec: cannot build zephyr.toy.judge.VerifierJudge: .*colour"):
        build_backend({"_target_": "zephyr.toy.judge.VerifierJudge", "colour": "red"})
    with pytest.raises(ValueError, match="builds no chat backend"):
        build_backend({"type": "toy_pool"})
    with pytest.raises(FileNotFoundError, match="not an exported checkpoint"):
        build_backend({"type": "local", "path": "/nonexistent/model"})
