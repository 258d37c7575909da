"""Every file under ``conf/`` is loaded here, through Hydra's compose API, and user layers are merged over it.

- ``compose("train", overrides)``: what ``python train.py <overrides>`` runs (Hydra override grammar).
- ``compose("demo/ci")``: ``zephyr demo``'s settings. The layering of one file over another is written in the
  files' defaults lists, not in Python: ``demo/ci.yaml`` lists ``full``; ``iterate/toy.yaml`` lists
  ``/demo@_global_: full`` (``demo@_global_=ci`` picks the ci size); ``feedback/toy.yaml`` is the feedback
  defaults. Each of these files is ``# @package _global_``, so its keys sit at the top of the result.
- :func:`merge_layers`: a user's ``--config FILE`` and ``--set key=value`` dotlists over a composed config.
  These use OmegaConf's dotlist syntax, not Hydra's override grammar, which refuses the documented
  ``--set 'ddpo=[objective.beta=0.05]'`` (an ``=`` inside a list element). The merge runs in struct mode, so a
  typo'd key stops with one line naming the layer it came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose(name: str = "train", overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/<name>.yaml`` composed by Hydra with ``overrides``.

    Outside a Hydra app it initialises Hydra on ``conf/`` for this call only. Inside one (a ``train.py`` job, a
    multirun), it composes with that app's search path and leaves its global state alone.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return hydra_compose(name, overrides=list(overrides))
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def dotlist_layers(overrides: Iterable[str], where: str = "--set") -> list[tuple[str, DictConfig]]:
    """``key=value`` strings -> ``(f"{where} {o}", layer)`` pairs for :func:`merge_layers`.

    Raises:
        ValueError: an override without ``=``.
    """
    layers = []
    for o in overrides:
        if "=" not in o:
            raise ValueError(f"{where} {o}: overrides must look like key=value")
        layers.append((f"{where} {o}", OmegaConf.from_dotlist([o.lstrip("+")])))
    return layers


def file_layer(path: str | Path, where: str = "--config") -> tuple[str, DictConfig]:
    """A user's YAML file as one layer for :func:`merge_layers`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a YAML syntax error, or a file that is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where} {path}: no such config file")
    try:
        layer = OmegaConf.load(path)
    except Exception as e:  # yaml's ScannerError / ParserError
        raise ValueError(f"{where} {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(layer, DictConfig):
        raise ValueError(f"{where} {path}: a config file must be a mapping")
    return f"{where} {path}", layer


def merge_layers(
    cfg: DictConfig,
    layers: Iterable[tuple[str, Any]],
    *,
    open_keys: Sequence[str] = (),
    whole_keys: Sequence[str] = (),
    noun: str = "setting",
    hint: str = "",
) -> DictConfig:
    """Merge each ``(where, layer)`` over ``cfg`` in order; a key that ``cfg`` lacks is refused.

    Args:
        cfg: the composed config (not modified: a merged copy is returned).
        layers: ``(where, mapping)`` pairs, e.g. from :func:`file_layer` and :func:`dotlist_layers`.
        open_keys: dotted keys whose mapping takes any key (its consumer checks them, e.g. ``world.teacher``).
        whole_keys: top-level keys that a layer replaces whole instead of merging into (backend specs: a new
            ``_target_`` brings other keyword arguments than the default's).
        noun: what a key is called in the error (``"demo setting"``).
        hint: appended to the error, e.g. ``(see conf/demo/full.yaml)``.

    Raises:
        ValueError: ``"<where>: unknown <noun> '<key>' <hint>"`` (or what omegaconf said), one line.
    """
    cfg = cfg.copy()
    for where, layer in layers:
        layer = OmegaConf.to_container(OmegaConf.create(layer), resolve=False)
        for key in whole_keys:
            if key in layer:
                OmegaConf.set_struct(cfg, False)
                cfg[key] = layer.pop(key)
        OmegaConf.set_struct(cfg, True)
        for key in open_keys:
            if isinstance(OmegaConf.select(cfg, key), DictConfig):
                OmegaConf.set_struct(OmegaConf.select(cfg, key), False)
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except ConfigKeyError as e:
            raise ValueError(f"{where}: unknown {noun} {e.full_key!r}{' ' + hint if hint else ''}") from None
        except Exception as e:  # omegaconf's ValidationError subclasses
            raise ValueError(f"{where}: {str(e).splitlines()[0]}{' ' + hint if hint else ''}") from None
    OmegaConf.set_struct(cfg, False)
    return cfg
