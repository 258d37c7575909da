"""Evaluation: batch generation, MT-Bench-format answers and judging, pairwise win rates, sweep/demo reports."""
