"""Secrets stay out of what zephyr writes: redaction of config containers, scrubbing of saved files and argv.

API keys are read from the environment where they are used, never from config. If a user still passes a
secret-looking key (``*api_key*``, ``*token*``, ``*secret*``, ``*password*``, ``*credential*``) on the command
line or in a config, its value is replaced by ``***`` in the resolved config, Hydra's ``.hydra/`` files, the
export metadata, the W&B run name and the ``sys.argv`` that W&B records.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from zephyr.fileio import atomic_write_text

SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.IGNORECASE)
REDACTED = "***"


def redact(obj: Any) -> Any:
    """Copy of a config container with the value of every key that looks secret replaced by ``***``."""
    if isinstance(obj, dict):
        return {
            k: (REDACTED if SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v)) for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def secret_values(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """Values of secret-looking keys given in the config or on the command line (to scrub them from dumps)."""
    values = []
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if SECRET_KEY.search(key) and value:
            values.append(value)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if SECRET_KEY.search(str(k)) and isinstance(v, str) and v:
                    values.append(v)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(OmegaConf.to_container(cfg, resolve=False))
    return sorted(set(values), key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    for value in secrets:
        text = text.replace(value, REDACTED)
    return text


def scrub_run_files(out: Path, secrets: list[str]) -> None:
    """Rewrite Hydra's saved config/overrides (and argv, which W&B records) without secret values."""
    if not secrets:
        return
    for f in (out / ".hydra").glob("*.yaml"):
        text = f.read_text()
        if any(v in text for v in secrets):
            atomic_write_text(f, scrub(text, secrets))
    sys.argv[:] = [scrub(a, secrets) for a in sys.argv]
