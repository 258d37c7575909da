"""zephyr: the Zephyr-7B alignment recipe (teacher data, AI feedback, dSFT, dDPO, evaluation) in one place."""

__version__ = "0.1.0"
