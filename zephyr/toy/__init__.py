"""The offline toy world: verifiable task families, an imperfect teacher, a student pool and a verifier judge."""

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

__all__ = [
    "FAMILIES",
    "Task",
    "extract_answer",
    "follows_format",
    "is_correct",
    "parse_question",
    "render_reply",
    "sample_tasks",
]
