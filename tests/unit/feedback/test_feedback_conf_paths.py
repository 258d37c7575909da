"""Feedback configs that put a local dSFT model in the pool point at where ``train.py`` exports it."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[3] / "conf" / "feedback"


def _paths(node, where="") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _paths(v, f"{where}.{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _paths(v, f"{where}[{i}]")]
    return [(where, node)] if isinstance(node, str) else []


def test_every_dsft_path_in_the_feedback_configs_is_the_dsft_export():
    found = []
    for f in sorted(CONF.glob("*.yaml")):
        tree = OmegaConf.to_container(OmegaConf.load(f), resolve=False)
        for where, value in _paths(tree):
            if "runs/dsft" in value:
                found.append((f.name, where, value))
    assert found, "no feedback config names a dSFT export any more: drop this test"
    wrong = [x for x in found if x[2] != "runs/dsft/model"]
    assert not wrong, f"dSFT exports go to runs/dsft/model (README, paths.sft_model), not: {wrong}"
