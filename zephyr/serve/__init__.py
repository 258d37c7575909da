"""OpenAI-compatible HTTP serving of exported checkpoints (``zephyr serve``)."""

from zephyr.serve.app import create_app

__all__ = ["create_app"]
