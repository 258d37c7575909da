"""Feedback-pipeline configuration: ``conf/feedback/toy.yaml`` holds every default, other files layer on it.

``zephyr data sft|feedback|binarize``, the demo and the built-in toy pairs all start from that one file, so a
default (``world_knowledge``, ``completion_gen.max_tokens``, ...) has one value wherever it is read.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

BACKEND_KEYS = ("teacher", "user_sim", "pool", "judge")
DEFAULTS_FILE = Path(__file__).resolve().parents[2] / "conf" / "feedback" / "toy.yaml"


def load_config(path: str | None = None, overrides: list[str] | None = None) -> DictConfig:
    """``conf/feedback/toy.yaml`` (the defaults) merged with the YAML at ``path`` and ``key=value`` overrides.

    Backend sections (``teacher``, ``user_sim``, ``pool``, ``judge``) are replaced whole; every other key must
    exist in the defaults file (a typo fails, naming the key and the file).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unknown key.
    """
    base = OmegaConf.load(DEFAULTS_FILE)
    layers: list[tuple[str, DictConfig]] = []
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        layers.append((path, OmegaConf.load(path)))
    if overrides:
        layers.append(("--set", OmegaConf.from_dotlist(list(overrides))))
    for where, layer in layers:
        layer = OmegaConf.to_container(layer, resolve=False)
        if not isinstance(layer, dict):
            raise ValueError(f"{where}: a feedback config must be a mapping")
        for key in BACKEND_KEYS:
            if key in layer:
                base[key] = layer.pop(key)
        OmegaConf.set_struct(base, True)
        try:
            base = OmegaConf.merge(base, layer)
        except Exception as e:  # omegaconf raises ConfigKeyError / ValidationError subclasses
            raise ValueError(f"{where}: {str(e).splitlines()[0]}") from None
        OmegaConf.set_struct(base, False)
    return base
