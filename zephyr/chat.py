"""One interface for everything that answers chat messages: endpoints, local checkpoints, toy-world models.

Teacher, completion pool, judge, MT-Bench answerer and the server all speak ``ChatBackend``. A real
OpenAI-compatible endpoint, a local Hugging Face checkpoint and the offline toy world's oracle teacher,
rule-based students and verifier judge are interchangeable behind it, so the pipeline has one code path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass
class ChatResponse:
    """What one chat call returned.

    Attributes:
        texts: one completion per requested choice (``n``).
        prompt_tokens: tokens the backend counted for the prompt (0 when unknown).
        completion_tokens: tokens generated over all choices (0 when unknown).
        model: the backend's model name.
        finish_reasons: ``"stop"`` or ``"length"`` per choice.
    """

    texts: list[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    finish_reasons: list[str] = field(default_factory=list)


@runtime_checkable
class ChatBackend(Protocol):
    """Anything that turns a conversation into completions."""

    name: str

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 256,
        n: int = 1,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> ChatResponse:
        """Return ``n`` completions of ``messages`` (``[{"role", "content"}, ...]``)."""
        ...
