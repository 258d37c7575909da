"""One measurement in a fresh process: ``python -m bench.worker TASK PARAMS_JSON OUT_JSON``.

``TASK`` is ``<kind>:<side>`` (``sft:zephyr``, ``sft:trl``, ``dpo:zephyr``, ``dpo:trl``, ``sweep:zephyr``,
``sweep:trl``, ``peak:zephyr`` for the matmul peak).
The result (timings, tokens, ``peak_rss_mb`` of this process) is written as JSON to ``OUT_JSON``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m bench.worker TASK PARAMS_JSON OUT_JSON", file=sys.stderr)
        return 2
    task, params, out = argv[0], json.loads(argv[1]), Path(argv[2])
    kind, _, side = task.partition(":")
    if kind == "sft":
        from bench import bench_sft as mod
    elif kind == "dpo":
        from bench import bench_dpo as mod
    elif kind == "sweep":
        from bench import bench_sweep as mod
    elif kind == "peak":
        from bench import flops as mod
    else:
        print(f"bench/worker.py: unknown task kind {kind!r} (sft, dpo, sweep or peak)", file=sys.stderr)
        return 2
    fn = {"zephyr": getattr(mod, "run_zephyr", None), "trl": getattr(mod, "run_trl", None)}.get(side)
    if fn is None:
        print(f"bench/worker.py: unknown side {side!r} in task {task!r} (zephyr or trl)", file=sys.stderr)
        return 2
    from zephyr.objectives.logprobs import use_fused_head

    with use_fused_head(params.get("fused_head", True)):  # off only for zephyr's no_fused_head ablation
        result = fn(params)
    out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
