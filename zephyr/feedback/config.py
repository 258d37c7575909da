"""Feedback-pipeline configuration: ``conf/feedback/toy.yaml`` holds every default, other files layer on it.

``zephyr data sft|feedback|binarize``, the demo and the built-in toy pairs all start from that one file (composed
by Hydra, :func:`zephyr.conf.compose`), so a default (``world_knowledge``, ``completion_gen.max_tokens``, ...) has
one value wherever it is read.
"""

from __future__ import annotations

from omegaconf import DictConfig

from zephyr.conf import compose, dotlist_layers, file_layer, merge_layers

BACKEND_KEYS = ("teacher", "user_sim", "pool", "judge")


def load_config(path: str | None = None, overrides: list[str] | None = None) -> DictConfig:
    """``conf/feedback/toy.yaml`` (the defaults) merged with the YAML at ``path`` and ``key=value`` overrides.

    Backend sections (``teacher``, ``user_sim``, ``pool``, ``judge``) are replaced whole; every other key must
    exist in the defaults file (a typo fails, naming the key and the file).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unknown key.
    """
    layers = [file_layer(path)] if path else []
    return merge_layers(
        compose("feedback/toy"),
        [*layers, *dotlist_layers(overrides or ())],
        whole_keys=BACKEND_KEYS,
        hint="(see conf/feedback/toy.yaml)",
    )
