"""README's layout section names every module of zephyr/ and bench/, and every path it names exists."""

from __future__ import annotations

import re

from tests.conftest import REPO


def _layout_paths() -> list[str]:
    text = (REPO / "README.md").read_text()
    start = text.index("\nconf/ ")  # the layout block starts with the conf/ line
    block = text[start : text.index("```", start)]
    return [m.group(1) for m in re.finditer(r"^(\S+)\s{2,}\S", block, flags=re.M)]


def test_layout_matches_the_tree():
    listed = _layout_paths()
    assert listed, "no layout block found in README.md"
    missing = [p for p in listed if not (REPO / p.rstrip("/")).exists()]
    assert not missing, f"README layout names paths that do not exist: {missing}"
    modules = sorted(
        str(p.relative_to(REPO))
        for top in ("zephyr", "bench")
        for p in (REPO / top).rglob("*.py")
        if p.name != "__init__.py"
    )
    unlisted = [m for m in modules if m not in listed]
    assert not unlisted, f"modules missing from README's layout section: {unlisted}"
