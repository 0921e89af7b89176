"""Command line: ``python -m jaxlm.train --config=configs/lstm.py[:variant] [--workdir=DIR]``.

``--dry_run`` compiles the train step ahead of time, prints the memory per device and the
FLOPs per step (:func:`jaxlm.train.plan.dry_run`) and a line of JSON with them, and exits
without training (``--dry_run_json=PATH`` writes the JSON to a file too).

Also installed as ``jaxlm-train``. ``--config`` takes a recipe file or a recipe's name
(``--config=lstm:smoke`` works from any folder). Every config field can be overridden, e.g.
``--config.model.hidden_sizes=(256,256)``. An expected error (a bad config, a missing corpus, an
incompatible workdir, another run writing to the workdir, a full disk) is one line on stderr
and exit status 2; ``--verbose`` shows the traceback. A SIGTERM checkpoints the run and exits
with 143; a Ctrl-C does the same and exits with 130, a second Ctrl-C exits at once.

Several processes (one per host, or per GPU) run one job with ``--coordinator=HOST:PORT
--num_processes=N --process_id=I`` each, or with no flags under srun or mpirun; a SIGTERM to
any of them makes all save the same step and exit with 143.
"""

from __future__ import annotations

import logging as logging_lib
import os
import re
import signal
import sys
import traceback
import warnings
from pathlib import Path

from absl import app, flags, logging

FLAGS = flags.FLAGS


class _EarlySigterm:
    """Records a SIGTERM that lands before the run installs its own handler (during the imports,
    flag parsing and config loading); the run reads ``raised`` when it takes over and stops
    before the loop, so the process exits with 143 instead of dying silently."""

    raised = False

    def __call__(self, signum, frame):
        del signum, frame
        self.raised = True


def _define_flags() -> None:
    """The flags of this command line; defined here, when it runs, never by an import."""
    from ml_collections import config_flags

    if "config" in FLAGS:
        return
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Recipe file or name, optionally with a variant: configs/lstm.py:smoke or lstm:smoke",
        lock_config=True,
    )
    flags.DEFINE_string(
        "workdir",
        None,
        "Run folder; default runs/<config.name> (fine-tuning: runs/<name>_ft_<strategy>).",
    )
    flags.DEFINE_bool(
        "keep_heap",
        True,
        "Keep freed memory in the heap so each step's large temporaries do not page-fault "
        "(glibc only; see jaxlm.runtime.heap). --nokeep_heap returns freed memory to the system.",
    )
    flags.DEFINE_bool(
        "dry_run",
        False,
        "Compile the train step ahead of time, print the sharding rules, the memory per device "
        "(parameters, optimizer state, the step's temporaries and peak) and the FLOPs per step, "
        "then one line of JSON with them, and exit without training or writing to the workdir.",
    )
    flags.DEFINE_string(
        "dry_run_json", None, "Write the dry run's JSON to this file too (implies --dry_run)."
    )
    flags.DEFINE_bool("verbose", False, "Show the traceback of an expected error too.")
    flags.DEFINE_string(
        "coordinator",
        None,
        "HOST:PORT of process 0, for a run of several processes (jax.distributed); with "
        "--num_processes and --process_id. Under srun or mpirun, left out: JAX finds them.",
    )
    flags.DEFINE_integer("num_processes", None, "How many processes take part (--coordinator).")
    flags.DEFINE_integer("process_id", None, "This process's index, from 0 (--coordinator).")
    flags.mark_flag_as_required("config")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax and TFDS log every file they touch at INFO
    if FLAGS.keep_heap:
        from jaxlm.runtime import keep_freed_memory

        keep_freed_memory()
    from jaxlm.errors import JaxlmError, Preempted
    from jaxlm.runtime.cluster import detected_cluster

    if not FLAGS.verbose:
        _quiet_orbax_errors()
    config = FLAGS.config
    dry = FLAGS.dry_run or FLAGS.dry_run_json
    # An n-gram run on one process is counted with numpy: it never starts JAX (nor imports it).
    several = FLAGS.coordinator or FLAGS.num_processes or detected_cluster(os.environ)
    counted = config.model.name == "ngram" and not (dry or several)
    if not counted:
        _join_others()
    from jaxlm.train import workdir

    try:
        if dry:
            _dry_run(config, FLAGS.dry_run_json)
            return
        if counted:
            from jaxlm.train.ngram import run_ngram as run
        else:
            from jaxlm.train.loop import train_and_evaluate as run
        run(config, FLAGS.workdir or workdir.default_workdir(config))
    except Preempted as e:
        print(e, file=sys.stderr)
        sys.exit(128 + e.signum)
    except JaxlmError as e:
        _expected(e)


def _join_others() -> None:
    """Joins the other processes of a run of several (the flags, or srun/mpirun's
    environment); first, before JAX starts its backends."""
    from jaxlm import sharding
    from jaxlm.errors import JaxlmError

    try:
        joined = sharding.start_distributed(
            FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id
        )
    except JaxlmError as e:
        _expected(e)
    if joined:
        print(f"Joined a run of several processes through {joined}", flush=True)


def _expected(e: BaseException) -> None:
    """An expected error: one line and its exit status (the traceback with --verbose)."""
    if FLAGS.verbose:
        raise e
    print(f"error: {e}", file=sys.stderr)
    sys.exit(getattr(e, "exit_code", 2))


def _dry_run(config, json_path: str | None) -> None:
    """Prints the dry run's report and its JSON line (last on stdout) and writes the JSON file,
    on process 0 (every process compiles)."""
    import jax

    from jaxlm.errors import WriteError
    from jaxlm.train import plan
    from jaxlm.train.workdir import log

    line = plan.report_json(plan.dry_run(config))
    if json_path and jax.process_index() == 0:
        try:
            Path(json_path).write_text(line + "\n")
        except OSError as e:
            raise WriteError.of(json_path, e) from None
    log(plan.DRY_RUN_PREFIX + line)


class _OrbaxErrors(logging_lib.Filter):
    """Drops the error records of orbax's background saves (its own, and asyncio's "Task
    exception was never retrieved" for the writes it abandoned): a failed save is reported by
    the run in one line. ``--verbose`` keeps them."""

    def filter(self, record: logging_lib.LogRecord) -> bool:
        background = "/orbax/" in record.pathname or record.name == "asyncio"
        return not (record.levelno >= logging_lib.ERROR and background)


def _quiet_orbax_errors() -> None:
    for handler in logging_lib.getLogger().handlers + logging_lib.getLogger("absl").handlers:
        handler.addFilter(_OrbaxErrors())
    hook = sys.unraisablehook

    def unraisablehook(unraisable):
        # tensorstore's callbacks into the event loop orbax closed after a failed save
        value = unraisable.exc_value
        if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
            hook(unraisable)

    sys.unraisablehook = unraisablehook
    # and, at exit after a failed save, the writes orbax had scheduled and never ran
    warnings.filterwarnings(
        "ignore", r"coroutine '.*serialize.*' was never awaited", RuntimeWarning
    )


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
    """absl's flag parsing, with a recipe name resolved to its file and expected errors (an
    unknown override, an unknown variant, a missing file) reported in one line."""
    from jaxlm.config import load_config, resolve_config_arg
    from jaxlm.errors import JaxlmError

    try:
        argv = [resolve_config_arg(a) for a in argv]
        for arg in argv:  # ml_collections would bury a recipe's own error in a traceback text
            if arg.startswith("--config="):
                load_config(arg[len("--config=") :])
        return FLAGS(argv)
    except JaxlmError as e:  # a missing recipe, an unknown variant
        _fatal(str(e))
    except (AttributeError, KeyError) as e:  # ml_collections' error for an unknown field
        report = _unknown_override(e, argv)
        if report is None:  # raised by the config file itself: show its traceback
            raise
        _fatal(report)
    except flags.Error as e:
        _fatal(str(e))


def _fatal(report: str) -> None:
    print(f"FATAL Flags parsing error: {report}", file=sys.stderr)
    sys.exit(2)


def run() -> None:
    """The console script ``jaxlm-train``."""
    signal.signal(signal.SIGTERM, _EarlySigterm())
    try:
        _define_flags()
        app.run(main, flags_parser=parse_flags)
    except KeyboardInterrupt:
        # A second Ctrl-C (or one before the run started): leave at once, without waiting
        # for background threads (a save in flight is left unfinished, and ignored later).
        print("Interrupted; the last finished checkpoint is kept", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)
    finally:
        # The run is over and its status written. Python gives SIGTERM its default action
        # back before its last clean-up (which takes a while after JAX ran), so a SIGTERM
        # then would end a finished run with -15 instead of its own status: ignore it.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    run()
