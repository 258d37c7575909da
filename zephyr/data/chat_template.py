"""The Zephyr chat template, a plain-Python renderer of it, and conversation validation.

The Jinja string is the one alignment-handbook ships for zephyr-7b-beta (``DEFAULT_CHAT_TEMPLATE``,
identical in ``recipes/zephyr-7b-beta/sft/config_full.yaml``). The assistant branch really has two spaces
before ``+``: we keep the string byte-for-byte so a tokenizer saved by zephyr is interchangeable with the
released one. transformers renders with ``trim_blocks`` and ``lstrip_blocks``, so every message becomes
``<|role|>\\n{content}</s>\\n`` and the generation prompt is ``<|assistant|>\\n``. The template emits no BOS;
``<s>`` comes from the tokenizer when the rendered text is tokenized with special tokens (:func:`encode`, which
also keeps a template that writes its own BOS from getting a second one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ZEPHYR_CHAT_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)

ROLES = ("system", "user", "assistant")
GENERATION_PROMPT = "<|assistant|>\n"


class ConversationError(ValueError):
    """A conversation that breaks the schema; the message says what is wrong (the caller adds file/row)."""


def render(messages: Sequence[dict[str, str]], add_generation_prompt: bool = False, eos: str = "</s>") -> str:
    """Render ``messages`` exactly as the Jinja template does (used to test the tokenizer's template).

    Args:
        messages: ``[{"role": ..., "content": ...}, ...]``; roles outside system/user/assistant render nothing.
        add_generation_prompt: append ``<|assistant|>\\n`` after the last message.
        eos: the end-of-turn string (the tokenizer's eos token).

    Returns:
        The prompt string.
    """
    out = "".join(f"<|{m['role']}|>\n{m['content']}{eos}\n" for m in messages if m["role"] in ROLES)
    return out + (GENERATION_PROMPT if add_generation_prompt and messages else "")


def with_system(messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """Return ``messages`` with an empty system turn first when there is none, as the handbook does."""
    messages = list(messages)
    if not messages or messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": ""})
    return messages


def prompt_format(data_cfg: Any) -> dict[str, bool]:
    """How a run renders prompts, as its export records it (``zephyr_export.json`` ``prompt_format``).

    Args:
        data_cfg: the run's ``data`` config (a mapping; ``insert_empty_system`` defaults to True, as in conf/data).
    """
    return {"insert_empty_system": bool(data_cfg.get("insert_empty_system", True))}


def render_prompt(tokenizer, messages: Sequence[dict[str, str]], *, insert_empty_system: bool) -> str:
    """A prompt as text: the chat template with the generation prompt, after an empty system turn if asked.

    The one prompt rendering of the project: training (SFT conversations and DPO prompts), ``zephyr serve``,
    ``zephyr generate``, MT-Bench answers, the feedback pipeline's local checkpoints and the demo all call it
    (through :func:`prompt_ids`), so a model is queried in exactly the format it was trained on.
    """
    messages = with_system(messages) if insert_empty_system else list(messages)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode(tokenizer, text: str, **kwargs: Any) -> Any:
    """Tokenize rendered chat text with exactly one BOS: the tokenizer's, unless the template already wrote it.

    Zephyr's template emits no BOS (the tokenizer adds ``<s>``); templates such as Llama-3's start with
    ``{{ bos_token }}``, and tokenizing those with special tokens on would give two. Every path that turns
    rendered chat text into ids (SFT rows, DPO prompts and completions, generation) goes through here.

    Args:
        tokenizer: a Hugging Face tokenizer.
        text: the chat template's output.
        **kwargs: passed to the tokenizer call (e.g. ``return_offsets_mapping=True``).
    """
    bos = getattr(tokenizer, "bos_token", None)
    written = bool(bos) and text.startswith(bos)
    return tokenizer(text, add_special_tokens=not written, **kwargs)


def prompt_ids(tokenizer, messages: Sequence[dict[str, str]], *, insert_empty_system: bool) -> list[int]:
    """Token ids of :func:`render_prompt`'s text, with one BOS (see :func:`encode`)."""
    text = render_prompt(tokenizer, messages, insert_empty_system=insert_empty_system)
    return encode(tokenizer, text)["input_ids"]


def validate_messages(messages: Any, *, require_assistant_last: bool = False) -> list[dict[str, str]]:
    """Check one conversation and return it as a list of ``{"role", "content"}`` dicts.

    Rules: a non-empty list of mappings with string ``role`` and ``content``; roles are system/user/assistant;
    a system turn may only come first; after it, turns alternate user/assistant starting with user; no content
    is empty or whitespace; at least one assistant turn.

    Args:
        messages: the value of a row's ``messages`` (or ``chosen``/``rejected``) column.
        require_assistant_last: also require the last turn to be the assistant's (preference data).

    Returns:
        The validated conversation (extra keys dropped).

    Raises:
        ConversationError: naming the turn index and the broken rule.
    """
    if not isinstance(messages, (list, tuple)) or len(messages) == 0:
        raise ConversationError("'messages' must be a non-empty list of {role, content} turns")
    out: list[dict[str, str]] = []
    for i, turn in enumerate(messages):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise ConversationError(f"turn {i} must be a mapping with 'role' and 'content'")
        role, content = turn["role"], turn["content"]
        if role not in ROLES:
            raise ConversationError(f"turn {i} has unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if not isinstance(content, str):
            raise ConversationError(f"turn {i} ({role}) content must be a string, got {type(content).__name__}")
        if not content.strip():
            raise ConversationError(f"turn {i} ({role}) has empty content")
        if role == "system" and i != 0:
            raise ConversationError(f"turn {i} is a system turn; only the first turn may be system")
        out.append({"role": role, "content": content})
    dialogue = out[1:] if out[0]["role"] == "system" else out
    for j, turn in enumerate(dialogue):
        expected = "user" if j % 2 == 0 else "assistant"
        if turn["role"] != expected:
            i = j + (len(out) - len(dialogue))
            raise ConversationError(
                f"turn {i} is {turn['role']!r} but {expected!r} was expected (turns must alternate user/assistant)"
            )
    if not any(t["role"] == "assistant" for t in dialogue):
        raise ConversationError("conversation has no assistant turn")
    if require_assistant_last and dialogue[-1]["role"] != "assistant":
        raise ConversationError("the last turn must be the assistant's")
    return out
