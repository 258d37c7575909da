"""``zephyr generate``, ``zephyr eval mt-bench``, ``zephyr eval win-rate`` and ``zephyr report``."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def _add_judge_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("judge (default: the offline toy verifier judge)")
    g.add_argument("--judge-endpoint", default=None, help="OpenAI-compatible base URL ending in /v1")
    g.add_argument("--judge-model", default=None, help="model name sent to --judge-endpoint")
    g.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="env var holding the judge's key ('' = none)")
    g.add_argument("--judge-local", default=None, help="a local checkpoint dir to use as the judge")


def _judge(args: argparse.Namespace):
    if args.judge_endpoint:
        if not args.judge_model:
            raise ValueError("--judge-endpoint needs --judge-model")
        from zephyr.feedback.backends import OpenAIBackend

        return OpenAIBackend(
            model=args.judge_model, base_url=args.judge_endpoint, api_key_env=args.judge_api_key_env or None
        )
    if args.judge_local:
        from zephyr.generation import LocalCheckpointBackend

        return LocalCheckpointBackend(args.judge_local)
    from zephyr.toy.mt_bench_judge import MTBenchVerifierJudge

    return MTBenchVerifierJudge()


def _model_backend(model: str | None, endpoint: str | None, endpoint_model: str | None, key_env: str | None):
    if endpoint:
        if not endpoint_model:
            raise ValueError("--endpoint needs --endpoint-model")
        from zephyr.feedback.backends import OpenAIBackend

        return OpenAIBackend(model=endpoint_model, base_url=endpoint, api_key_env=key_env or None)
    from zephyr.generation import LocalCheckpointBackend

    return LocalCheckpointBackend(model)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def cmd_generate(args: argparse.Namespace) -> int:
    from zephyr.generation import Generator, generate_file

    if not Path(args.input).is_file():
        raise FileNotFoundError(f"{args.input}: input file not found")
    gen = Generator.from_dir(args.model)
    stats = generate_file(
        gen,
        args.input,
        args.output,
        batch_size=args.batch_size,
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        seed=args.seed,
        stop=args.stop,
        progress=not args.no_progress,
    )
    print(f"{args.output}: {stats['generated']} generated, {stats['skipped']} already there, {stats['total']} rows")
    return 0


def cmd_mt_bench(args: argparse.Namespace) -> int:
    from zephyr.eval import mt_bench as mb

    questions = mb.load_questions(args.questions)
    if args.limit:
        questions = questions[: args.limit]
    out = Path(args.out)
    judge = _judge(args)
    if args.answers:
        answers = mb.load_answers(args.answers)
    else:
        if args.backend:
            from zephyr.feedback.backends import build_backend

            try:
                spec = json.loads(args.backend)
            except json.JSONDecodeError as e:
                raise ValueError(f"--backend: not valid JSON ({e.msg})") from e
            backend = build_backend(spec)
        elif args.model or args.endpoint:
            backend = _model_backend(args.model, args.endpoint, args.endpoint_model, args.api_key_env)
        else:
            raise ValueError("give --model DIR, --endpoint URL, --backend JSON or --answers FILE")
        model_id = args.model_id or backend.name
        answers = mb.generate_answers(
            questions,
            backend,
            out / "model_answer" / f"{_safe(model_id)}.jsonl",
            model_id=model_id,
            max_tokens=args.max_tokens,
            progress=not args.no_progress,
        )
    results: dict = {"judge": judge.name, "questions": str(args.questions or mb.default_question_file())}
    md = []
    if args.mode == "single":
        rows = mb.judge_single(
            questions,
            answers,
            judge,
            out / "model_judgment" / f"{_safe(judge.name)}_single.jsonl",
            progress=not args.no_progress,
        )
        summary = mb.summarize_single(rows, questions)
        header, table = mb.single_table_rows(summary)
        mb.print_table(f"MT-Bench (single, judge {judge.name})", header, table)
        results["single"] = summary
        md.append(f"## MT-Bench single-answer grading (judge: {judge.name})\n\n" + mb.markdown_table(header, table))
    else:
        if not args.baseline_answers:
            raise ValueError("--mode pairwise needs --baseline-answers FILE (FastChat answer rows)")
        baseline = mb.load_answers(args.baseline_answers)
        rows = mb.judge_pairwise(
            questions, answers, baseline, judge, out / "model_judgment" / f"{_safe(judge.name)}_pair.jsonl"
        )
        summary = mb.summarize_pairwise(rows, questions)
        header, table = mb.pairwise_table_rows(summary)
        title = f"{summary['model_1']} vs {summary['model_2']} (judge {judge.name})"
        mb.print_table(title, header, table)
        results["pairwise"] = summary
        md.append(f"## MT-Bench pairwise: {title}\n\n" + mb.markdown_table(header, table))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text("\n".join(md))
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


def cmd_win_rate(args: argparse.Namespace) -> int:
    from zephyr.eval.mt_bench import load_questions
    from zephyr.eval.win_rate import load_answer_set, win_rate, win_rate_markdown

    questions = load_questions(args.questions) if args.questions else load_questions()
    a = load_answer_set(args.answers_a, questions)
    b = load_answer_set(args.answers_b, questions)
    out = Path(args.out)
    name_a = args.name_a or Path(args.answers_a).stem
    name_b = args.name_b or Path(args.answers_b).stem
    judge = _judge(args)
    res = win_rate(a, b, judge, name_a=name_a, name_b=name_b, out_path=out / "win_rate_judgments.jsonl")
    res["judge"] = judge.name
    md = win_rate_markdown(res)
    from zephyr.eval.mt_bench import print_table

    header = ["A", "B", "n", "wins", "losses", "ties", "errors", "win rate", "LC win rate", "avg len A", "avg len B"]
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    row = [name_a, name_b, *(str(res[k]) for k in ("n", "wins", "losses", "ties", "errors"))]
    row += [pct(res["win_rate"]), pct(res["lc_win_rate"]), f"{res['avg_len_a']:.0f}", f"{res['avg_len_b']:.0f}"]
    print_table(f"win rate (judge {judge.name})", header, [row])
    out.mkdir(parents=True, exist_ok=True)
    (out / "win_rate.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "win_rate.md").write_text(md)
    print(f"wrote {out / 'win_rate.json'} and {out / 'win_rate.md'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from zephyr.eval.report import write_report

    for p in write_report(args.dir, args.out):
        print(p)
    return 0


def register(subparsers) -> None:
    """Add ``generate``, ``eval`` (``mt-bench``, ``win-rate``) and ``report``."""
    g = subparsers.add_parser("generate", help="batch generation from a checkpoint over a jsonl of prompts")
    g.add_argument("--model", required=True, help="exported checkpoint directory")
    g.add_argument("--input", required=True, help="jsonl rows with 'messages' or 'prompt' (and optional 'id')")
    g.add_argument("--output", required=True, help="jsonl of answers; rows already there are skipped (resume)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--max-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.add_argument("--no-progress", action="store_true")
    g.set_defaults(func=cmd_generate)

    e = subparsers.add_parser("eval", help="MT-Bench-format evaluation and pairwise win rates")
    esub = e.add_subparsers(dest="eval_command", required=True, metavar="EVAL")
    m = esub.add_parser("mt-bench", help="answer FastChat-format questions and judge them (single or pairwise)")
    m.add_argument("--model", default=None, help="checkpoint directory to evaluate")
    m.add_argument("--endpoint", default=None, help="or: an OpenAI-compatible base URL serving the model")
    m.add_argument("--endpoint-model", default=None, help="model name at --endpoint")
    m.add_argument("--api-key-env", default="", help="env var holding --endpoint's key")
    m.add_argument(
        "--backend",
        default=None,
        help='or: a backend spec as JSON, e.g. \'{"_target_": "zephyr.toy.teacher.ToyTeacher"}\'',
    )
    m.add_argument("--answers", default=None, help="or: an existing FastChat answer file (skips generation)")
    m.add_argument("--model-id", default=None, help="model_id written in answer rows")
    m.add_argument("--questions", default=None, help="FastChat question.jsonl (default: the built-in toy set)")
    m.add_argument("--out", default="runs/eval/mt_bench", help="output dir (model_answer/, model_judgment/, results)")
    m.add_argument("--mode", choices=["single", "pairwise"], default="single")
    m.add_argument("--baseline-answers", default=None, help="pairwise: the other model's FastChat answer file")
    m.add_argument("--max-tokens", type=int, default=1024, help="new tokens per turn")
    m.add_argument("--limit", type=int, default=0, help="only the first N questions")
    m.add_argument("--no-progress", action="store_true")
    _add_judge_args(m)
    m.set_defaults(func=cmd_mt_bench)

    w = esub.add_parser("win-rate", help="AlpacaEval-style win rate of answers A vs B (both orders, length-controlled)")
    w.add_argument("--answers-a", required=True, help="zephyr-generate, AlpacaEval or FastChat answer jsonl")
    w.add_argument("--answers-b", required=True)
    w.add_argument("--name-a", default=None)
    w.add_argument("--name-b", default=None)
    w.add_argument("--questions", default=None, help="question file for FastChat answer rows (default: built-in)")
    w.add_argument("--out", default="runs/eval/win_rate")
    _add_judge_args(w)
    w.set_defaults(func=cmd_win_rate)

    r = subparsers.add_parser("report", help="PNG plots + markdown for a multirun (sweep) dir or a demo dir")
    r.add_argument("dir", help="Hydra multirun dir (summary.json) or demo dir (report.json)")
    r.add_argument("--out", default=None, help="output dir (default: DIR/report for sweeps, DIR for demos)")
    r.set_defaults(func=cmd_report)
