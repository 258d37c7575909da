"""The offline toy world: verifiable task families, an imperfect teacher, a student pool, a user simulator and
two verifier judges: ``VerifierJudge`` (``judge.py``) answers UltraFeedback rating prompts for the feedback
pipeline; ``MTBenchVerifierJudge`` (``mt_bench_judge.py``) answers MT-Bench judge prompts for evaluation.

Everything here speaks ``zephyr.chat.ChatBackend``, so the toy world plugs into the same data pipeline
as real OpenAI-compatible endpoints.
"""

from zephyr.toy.judge import VerifierJudge
from zephyr.toy.rules import ErrorProfile, RuleChatModel
from zephyr.toy.students import POOL_PROFILES, RuleStudent, default_pool
from zephyr.toy.tasks import (
    FAMILIES,
    Task,
    extract_answer,
    follows_format,
    is_correct,
    parse_question,
    render_reply,
    sample_tasks,
)
from zephyr.toy.teacher import ToyTeacher, sft_dialogues

__all__ = [
    "FAMILIES",
    "POOL_PROFILES",
    "ErrorProfile",
    "RuleChatModel",
    "RuleStudent",
    "Task",
    "ToyTeacher",
    "VerifierJudge",
    "default_pool",
    "extract_answer",
    "follows_format",
    "is_correct",
    "parse_question",
    "render_reply",
    "sample_tasks",
    "sft_dialogues",
]
