"""Expected errors: bad input that a person can fix, reported in one line by the command lines.

Each class names what went wrong in its message (the file, the config field, the value and what
was expected). The command lines print ``error: <message>`` and exit with the class's
``exit_code``; the traceback is shown only with ``--verbose``. Anything else that escapes is a
bug and keeps its traceback.
"""

from __future__ import annotations

import signal


class JaxlmError(Exception):
    """An expected error; the message says what to fix."""

    exit_code = 2


class ConfigError(JaxlmError, ValueError):
    """A config field with an unknown name, a wrong type or an out-of-range value."""


class CorpusError(JaxlmError, ValueError):
    """A corpus that cannot be used: missing, empty, ambiguous or undecodable."""


class CheckpointError(JaxlmError):
    """A checkpoint that cannot be found, read or matched; the message names the directory."""


class ConversionError(JaxlmError, ValueError):
    """A model that cannot be converted exactly, or an unreadable model folder; the message
    names the file and the field."""


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


class WorkdirBusy(JaxlmError):
    """Another live process is writing to the run folder (the message names it)."""


class JobError(JaxlmError, ValueError):
    """A job, device inventory or job queue that cannot be used (``jaxlm.jobs``); the message
    names the field or file."""


class SearchError(JaxlmError, ValueError):
    """A search space, study folder or search option that cannot be used (``jaxlm.search``);
    the message names the file, field or value and what was expected."""


class RunsError(JaxlmError, ValueError):
    """A run folder, metric or option the runs tools (``jaxlm.runs``) cannot use: a missing
    folder, a folder holding no runs, an unknown metric name; the message names it."""


class WriteError(JaxlmError, OSError):
    """A file of the run folder that cannot be written: a full disk, a lost mount, no permission.

    Build one with :meth:`of`, which names the file, the cause and the space left on its disk.
    """

    @classmethod
    def of(cls, path: object, error: BaseException, *, needed: int | None = None) -> WriteError:
        """The error for writing ``path`` having failed with ``error``.

        Args:
          path: the file or folder being written.
          error: what the write raised.
          needed: about how many bytes the write needs, when known.

        Returns:
          The error, its message one line.

        Example:
          >>> e = OSError(28, "No space left on device")
          >>> str(WriteError.of("/nonexistent/run/x", e, needed=2048))  # doctest: +ELLIPSIS
          'cannot write /nonexistent/run/x: no space left on device (... free on /, ... 2.0 KiB)'
        """
        return cls(f"cannot write {path}: {describe_os_error(error, path, needed=needed)}")


def describe_os_error(error: BaseException, path: object, *, needed: int | None = None) -> str:
    """A short account of a failed write: the cause, and for a full disk the space on it.

    Args:
      error: the exception (an OSError, or a tensorstore error carrying ``os_error_code``).
      path: a path on the disk written to.
      needed: about how many bytes the write needs, when known.

    Returns:
      For example ``no space left on device (120.0 KiB free on /mnt, it needs about 2.0 MiB)``.
    """
    import errno
    import os
    import shutil
    from pathlib import Path

    text = str(error)
    full = getattr(error, "errno", None) == errno.ENOSPC or any(
        s in text for s in ("No space left on device", "os_error_code='28'")
    )
    if not full:
        cause = getattr(error, "strerror", None) or (text.splitlines()[0] if text else "")
        return (cause or type(error).__name__)[:300]
    where = Path(os.fspath(path))
    while not where.exists() and where != where.parent:
        where = where.parent
    usage = shutil.disk_usage(where)
    mount = where
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    need = f", it needs about {_size(needed)}" if needed else ""
    return f"no space left on device ({_size(usage.free)} free on {mount}{need})"


def _size(n: int) -> str:
    """``2048`` -> ``2.0 KiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class Preempted(Exception):
    """Raised after a SIGTERM or a Ctrl-C: the state was checkpointed and the run can be
    resumed.

    Attributes:
      signum: the signal (``signal.SIGTERM`` or ``signal.SIGINT``); the command line exits
        with ``128 + signum``.
    """

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum = signum
