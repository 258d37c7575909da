"""Train with Hydra: ``python train.py [group=option ...] [+experiment=NAME] [-m ...]``.

Composes ``conf/train.yaml`` and calls :func:`zephyr.run.train`. Bad config values and bad data print one line
naming the key, file or row, and exit with status 2.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from zephyr.errors import USER_ERRORS, report_and_exit
    from zephyr.run import train

    try:
        metrics = train(cfg)
    except USER_ERRORS as e:
        report_and_exit(e)
    return metrics.get(cfg.get("optimized_metric") or "", None)


if __name__ == "__main__":
    main()
