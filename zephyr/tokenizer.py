"""The tokenizer: the real Mistral-7B v1 SentencePiece vocabulary with the Zephyr chat template.

The embedded default needs no hub: the ``mistral-common`` wheel ships Mistral's ``tokenizer.model``
(32,000 pieces, md5 37974873eb68a7ab30c4912fc36264ae, the same file as mistralai/Mistral-7B-v0.1). We turn it
into a normal Hugging Face tokenizer once and cache the saved directory, because two transformers-5 traps
make the obvious routes wrong: ``LlamaTokenizer(vocab_file=...)`` silently builds a 3-token vocabulary, and
``AutoTokenizer`` on a bare ``tokenizer.model`` picks a generic backend with wrong ids. Loading the directory
with ``LlamaTokenizer.from_pretrained(..., legacy=True)`` and saving it works.

``legacy=True`` is pinned: it puts a ``▁`` after every special token, so ``</s>\\n`` is ``2, 28705, 13`` as in
published Zephyr token streams (49 ids for the reference conversation instead of 46). transformers does not
write ``legacy`` into ``tokenizer_config.json`` by itself; we do, so a reload (and ``pipeline(model=DIR)``)
tokenizes the same way.

Any other checkpoint (Llama, Qwen2, Gemma2, ...) brings its own tokenizer, loaded as it is: its chat template,
BOS (or none: Qwen2 adds no BOS and gets none) and special tokens are kept, so training, ``zephyr serve`` and
``zephyr generate`` all render and tokenize with the same files. Only a tokenizer without a chat template gets
Zephyr's, and only one without a pad token gets ``pad = eos``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerBase

from zephyr.data.chat_template import ZEPHYR_CHAT_TEMPLATE

MISTRAL_V1_MD5 = "37974873eb68a7ab30c4912fc36264ae"
EMBEDDED_NAME = "embedded:mistral-7b-v1"


def _mistral_model_file() -> Path:
    try:
        import mistral_common
    except ImportError as e:  # pragma: no cover - a hard dependency
        raise ImportError(
            "the embedded tokenizer needs the 'mistral-common' package: pip install mistral-common"
        ) from e
    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mistral-common no longer ships the Mistral v1 tokenizer model")
    return path


def cache_dir() -> Path:
    """Where zephyr keeps derived artefacts (``$ZEPHYR_CACHE``, default ``~/.cache/zephyr``)."""
    return Path(os.environ.get("ZEPHYR_CACHE", Path.home() / ".cache" / "zephyr"))


def _build_embedded(target: Path) -> None:
    src = _mistral_model_file()
    digest = hashlib.md5(src.read_bytes()).hexdigest()
    if digest != MISTRAL_V1_MD5:
        raise ValueError(f"{src}: md5 {digest} is not the Mistral v1 tokenizer ({MISTRAL_V1_MD5})")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        shutil.copy(src, raw / "tokenizer.model")
        tok = LlamaTokenizer.from_pretrained(str(raw), add_bos_token=True, add_eos_token=False, legacy=True)
        tok.chat_template = ZEPHYR_CHAT_TEMPLATE
        built = Path(tmp) / "built"
        save_tokenizer(tok, built)
        try:
            os.replace(built, target)  # atomic: a concurrent builder either wins or finds the finished dir
        except OSError:
            if not (target / "tokenizer_config.json").is_file():
                raise


def save_tokenizer(tok: PreTrainedTokenizerBase, out_dir: str | os.PathLike) -> None:
    """``save_pretrained`` plus the keys transformers drops (``legacy``) so a reload tokenizes identically."""
    out = Path(out_dir)
    tok.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    if getattr(tok, "legacy", None) is not None:
        cfg["legacy"] = bool(tok.legacy)
    cfg.pop("is_local", None)
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def load_tokenizer(name_or_path: str | os.PathLike | None = None, *, chat_template: str | None = None):
    """Load a tokenizer with the Zephyr chat template.

    Args:
        name_or_path: ``None`` (or ``"embedded"``) for the embedded Mistral-7B v1 tokenizer; otherwise a hub
            name or a local directory, loaded with ``AutoTokenizer.from_pretrained``.
        chat_template: override the template. By default a tokenizer without one gets the Zephyr template and
            one that has its own keeps it.

    Returns:
        A transformers tokenizer with ``bos=<s>`` (1), ``eos=</s>`` (2) for Mistral, and ``pad = eos`` when
        the tokenizer has no pad token (the recipe's choice; attention masks and label masks do the rest).

    Raises:
        ValueError: the tokenizer has neither a pad nor an eos token (naming it): nothing can end a turn.
    """
    if name_or_path is None or str(name_or_path) in ("embedded", EMBEDDED_NAME):
        target = cache_dir() / f"tokenizer-mistral-v1-{MISTRAL_V1_MD5[:8]}"
        if not (target / "tokenizer_config.json").is_file():
            _build_embedded(target)
        tok = AutoTokenizer.from_pretrained(str(target))
    else:
        path = Path(name_or_path)
        if (str(name_or_path).startswith((".", "/")) or path.exists()) and not path.is_dir():
            raise FileNotFoundError(f"tokenizer path {name_or_path} does not exist or is not a directory")
        tok = AutoTokenizer.from_pretrained(str(name_or_path))
    if chat_template is not None:
        tok.chat_template = chat_template
    elif not getattr(tok, "chat_template", None):
        tok.chat_template = ZEPHYR_CHAT_TEMPLATE
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(
                f"tokenizer {name_or_path or EMBEDDED_NAME}: no eos_token (and no pad_token); "
                "a chat model needs one to end a turn (set eos_token in its tokenizer_config.json)"
            )
        tok.pad_token = tok.eos_token
    return tok
