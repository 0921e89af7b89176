"""Command line: ``python -m jaxlm.train --config=configs/lstm.py[:variant] [--workdir=DIR]``.

Every config field can be overridden, e.g. ``--config.model.hidden_sizes=(256,256)``.
"""

from __future__ import annotations

import re
import signal
import sys
import traceback
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from jaxlm import runtime

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Recipe file, optionally with a variant: configs/lstm.py:smoke",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder; defaults to runs/<config.name>.")
_KEEP_HEAP = flags.DEFINE_bool(
    "keep_heap",
    True,
    "Keep freed memory in the heap so each step's large temporaries do not page-fault "
    "(glibc only; see jaxlm.malloc). --nokeep_heap returns freed memory to the system.",
)


class _EarlySigterm:
    """Records a SIGTERM that lands before the trainer installs its own handler (during the
    imports, flag parsing and config loading); the trainer reads ``raised`` when it takes over
    and stops before the loop, so the process exits with 143 instead of dying silently."""

    raised = False

    def __call__(self, signum, frame):
        del signum, frame
        self.raised = True


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax and TFDS log every file they touch at INFO
    if _KEEP_HEAP.value:
        runtime.keep_freed_memory()
    from jaxlm import trainer

    config = _CONFIG.value
    workdir = _WORKDIR.value or f"runs/{config.name}"
    try:
        trainer.train_and_evaluate(config, workdir)
    except trainer.Preempted as e:
        print(e, file=sys.stderr)
        sys.exit(143)


def _unknown_override(e: BaseException, argv: list[str]) -> str | None:
    """The one-line report of an unknown field in a ``--config.*`` override, else None.

    ml_collections raises KeyError (or AttributeError wrapping one) whose message starts with
    the missing key, e.g. ``'hiden_size'`` and a "Did you mean" hint. Only errors raised while
    applying an override (in ``config_flags/config_path.py``) count: an AttributeError or
    KeyError inside a config file's ``get_config`` is that file's bug, not an unknown field.
    """
    frames = traceback.extract_tb(e.__traceback__)
    if not any(Path(f.filename).parts[-2:] == ("config_flags", "config_path.py") for f in frames):
        return None
    inner: object = e
    while isinstance(inner, BaseException) and inner.args:
        inner = inner.args[0]
    message = " ".join(str(inner).split())
    match = re.match(r"'([^']+)'", message)
    key = match.group(1) if match else None
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    field = next((o for o in overrides if key in o[len("--config.") :].split(".")), None)
    if field is None:
        field = overrides[0] if len(overrides) == 1 else "--config.*"
    return f"unknown config field in {field}: {message}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with unknown ``--config.*`` fields reported in one line."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:  # ml_collections' error for an unknown field
        report = _unknown_override(e, argv)
        if report is None:  # raised by the config file itself: show its traceback
            raise
        print(f"FATAL Flags parsing error: {report}", file=sys.stderr)
        sys.exit(2)
    except flags.Error as e:
        print(f"FATAL Flags parsing error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _EarlySigterm())
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=parse_flags)
