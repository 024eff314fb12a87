"""The project's own exception types.

Every user-facing problem is a :class:`PoisonGenError`. The CLIs show it as one red line and exit
with code 2, never a traceback.
"""

from __future__ import annotations


class PoisonGenError(Exception):
    """A problem the user can fix: bad input, bad dataset, bad option. One line of text."""

    exit_code = 2

    def __init__(self, message: str):
        # Keep it one line whatever the caller passed.
        super().__init__(" ".join(str(message).split()))


class DatasetError(PoisonGenError):
    """The dataset on disk is missing, malformed or of no known layout."""


class ConfigError(PoisonGenError):
    """An option value is out of range or inconsistent with the others."""


class TriggerError(PoisonGenError):
    """The trigger pattern cannot be read or does not fit the images."""


class SelectionError(PoisonGenError):
    """Too few samples can be poisoned under the given constraints."""


def choices(values) -> str:
    """Format valid options for an error message: ``{a, b, c}``."""
    return "{" + ", ".join(str(v) for v in values) + "}"
