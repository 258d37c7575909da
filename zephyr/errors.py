"""The errors a user can cause, and how entry points report them: one line, exit code 2, no traceback."""

from __future__ import annotations

import sys

from zephyr.data.chat_template import ConversationError
from zephyr.data.io import DataError


class ConfigError(ValueError):
    """A config that cannot run; the message names the key."""


class NonFiniteLossError(RuntimeError):
    """Raised when the loss or log-probs stop being finite; the message names the step."""


USER_ERRORS = (ConfigError, DataError, ConversationError, FileNotFoundError, NonFiniteLossError)


def report_and_exit(err: BaseException, prog: str = "train.py") -> None:
    """Print ``prog: error: <message>`` to stderr and exit with status 2."""
    print(f"{prog}: error: {err}", file=sys.stderr)
    sys.exit(2)
