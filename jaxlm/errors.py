"""Expected errors: bad input that a person can fix, reported in one line by the command lines.

Each class names what went wrong in its message (the file, the config field, the value and what
was expected). The command lines print ``error: <message>`` and exit with the class's
``exit_code``; the traceback is shown only with ``--verbose``. Anything else that escapes is a
bug and keeps its traceback.
"""

from __future__ import annotations


class JaxlmError(Exception):
    """An expected error; the message says what to fix."""

    exit_code = 2


class ConfigError(JaxlmError, ValueError):
    """A config field with an unknown name, a wrong type or an out-of-range value."""


class CorpusError(JaxlmError, ValueError):
    """A corpus that cannot be used: missing, empty, ambiguous or undecodable."""


class CheckpointError(JaxlmError):
    """A checkpoint that cannot be found, read or matched; the message names the directory."""


class IncompatibleCheckpoint(CheckpointError, ValueError):
    """A workdir whose checkpoint was written by a config this run cannot resume."""


class NonFiniteLoss(JaxlmError, FloatingPointError):
    """The training loss became NaN or infinite; the checkpoints saved before are kept.

    Attributes:
      step: the first step whose loss was not finite.
    """

    exit_code = 1

    def __init__(self, message: str, *, step: int | None = None):
        super().__init__(message)
        self.step = step
