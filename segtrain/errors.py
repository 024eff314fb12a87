"""segtrain's own exception type.

:class:`SegTrainError` subclasses :class:`poisongen.errors.PoisonGenError`, so both CLIs show it the same
way: one red line on stderr, exit code 2, never a traceback.
"""

from __future__ import annotations

from poisongen.errors import PoisonGenError


class SegTrainError(PoisonGenError):
    """A problem the user can fix in a segtrain call: bad option, bad checkpoint, bad data. One line."""


class CheckpointError(SegTrainError):
    """A checkpoint cannot be read, is not segtrain's, or does not fit the model or the data."""


__all__ = ["CheckpointError", "SegTrainError"]
