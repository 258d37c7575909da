"""The ZeRO-3 config that ``strategy=deepspeed_stage_3`` builds trains under the real DeepSpeed engine on CPU.

Two processes under torchrun (gloo). The first run on a machine JIT-compiles DeepSpeed's small CPU comm
extension (30-120 s, cached in ``$TORCH_EXTENSIONS_DIR``), hence ``slow``.
"""

from __future__ import annotations

import json
import math
import sys

import pytest

from tests.conftest import free_port
from tests.integration.helpers_scale import run

pytestmark = pytest.mark.slow


def test_zero3_config_trains_under_torchrun_on_two_cpu_processes(tmp_path):
    pytest.importorskip("deepspeed")
    report_path = tmp_path / "report.json"
    proc = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),  # a fixed port collides with a second test run on the same machine
            "-m",
            "zephyr.scale.deepspeed_cpu_check",
            "--steps",
            "3",
            "--report",
            str(report_path),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(report_path.read_text())
    zero = report["ds_config"]["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["offload_optimizer"] == {"device": "none"} and zero["offload_param"] == {"device": "none"}
    assert report["ds_config"]["bf16"] == {"enabled": True}
    assert report["plan"] == "global batch 8 = 2 per device x 2 accumulation x 2 devices"
    # zero3 init: every rank holds no full tensor after from_pretrained
    assert report["zero3_init_partitioned"] is True and report["local_numel_after_init"] == 0
    assert report["full_numel"] == report["expected_numel"] == 4_170_048
    # a few optimizer steps that lower the loss from ln(32000) ~ 10.37
    assert report["optimizer_steps"] == 3
    losses = report["losses"]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert abs(losses[0] - math.log(32000)) < 0.1 and losses[-1] < losses[0] - 0.2
    # the chunked loss through the lm_head module under ZeRO-3 equals the engine's full-logits loss (bf16 compute)
    assert report["chunked_loss"] is True and report["chunked_vs_full_loss_abs_diff"] < 1e-2
    # 16-bit weights gathered on rank 0 for the save
    assert report["gathered"] == {"num_tensors": 21, "numel": 4_170_048, "dtypes": ["torch.bfloat16"]}
