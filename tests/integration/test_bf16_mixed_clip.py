"""The GPU default on the CPU: ``bf16-mixed`` with the fused AdamW default and ``gradient_clip_val: 1.0``.

Every GPU run crashed at its first optimizer step this way (H200, ``strategy=auto``) until the module clipped
fused steps itself (:meth:`zephyr.modules.base.ZephyrModule.configure_gradient_clipping`).
"""

from __future__ import annotations

import json

import pytest

from tests.integration.helpers_train import run_train

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_bf16_mixed_with_clipping_trains(tmp_path, objective):
    extra = ["objective=dpo", "data.limit=16"] if objective == "dpo" else ["data.toy.n=32"]
    run_train(
        *extra,
        "hardware.precision=bf16-mixed",
        "trainer.gradient_clip_val=1.0",
        "trainer.max_epochs=-1",
        "trainer.max_steps=2",
        "data.eval_size=4",
        f"paths.output_dir={tmp_path}",
        f"objective.reference.cache_dir={tmp_path / 'ref'}" if objective == "dpo" else "export=false",
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["global_step"] == 2.0
