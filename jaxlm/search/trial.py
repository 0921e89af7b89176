"""One trial: an ordinary training run in ``studies/x/trials/<n>/`` that talks to Optuna.

:class:`PruningHook` is the loop hook that reports the validation loss of each evaluation to an
``optuna.Trial`` and stops the run when Optuna says to prune (usable in your own code with any
trial). :func:`run_trial` builds a trial's config from the study's base config and the trial's
parameters, trains it with the hook (resuming from the trial's checkpoints when it ran before),
and tells Optuna the outcome; ``python -m jaxlm.search trial --study=DIR --number=N`` is the
same as a process (what ``--workers=N`` submits to the job balancer). :func:`trial_liveness`
tells a trial whose process died (SIGKILL, a lost machine) from one still running, by the run
folder's ``status.json`` heartbeat and pid, which Optuna's JournalStorage cannot do.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jaxlm import monitor
from jaxlm.errors import JaxlmError, SearchError, WorkdirBusy
from jaxlm.search import study as study_lib
from jaxlm.search.space import apply_params
from jaxlm.train.hooks import Hook, Progress

_HOST = socket.gethostname()


class PruningHook(Hook):
    """Reports each evaluation's validation loss to an Optuna trial, and stops the run, without
    the final evaluation, when the trial's pruner says so (the run is checkpointed at the step
    it stopped, and its folder kept).

    Args:
      trial: an ``optuna.Trial`` (from ``study.ask()``, or ``optuna.Trial(study, trial_id)``).
      metric: the key of ``progress.evaluation`` to report (``loss``: nats per token).

    Attributes:
      pruned: whether the run was stopped by the pruner.
      last: ``(step, value)`` of the last report, or None.

    Example:
      >>> import optuna
      >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
      >>> study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=3.0))
      >>> hook = PruningHook(study.ask())
      >>> progress = Progress(step=10, num_steps=100, evaluation={"loss": 3.5})
      >>> hook.after_step(progress)
      >>> hook.pruned, progress.stop.evaluate
      (True, False)

      In a run of your own:
      ``jaxlm.train_and_evaluate(config, workdir, hooks=[PruningHook(trial)])``.
    """

    def __init__(self, trial: Any, metric: str = "loss"):
        self.trial = trial
        self.metric = metric
        self.pruned = False
        self.last: tuple[int, float] | None = None

    def after_step(self, progress: Progress) -> None:
        value = (progress.evaluation or {}).get(self.metric)
        if value is None:
            return
        value = float(value)
        self.last = (progress.step, value)
        with warnings.catch_warnings():  # a resumed run evaluates again at steps it reported
            warnings.filterwarnings("ignore", message=".*is already reported")
            self.trial.report(value, progress.step)
        if math.isfinite(value) and self.trial.should_prune():
            self.pruned = True
            progress.request_stop(
                f"pruned by Optuna at step {progress.step} (validation {self.metric} {value:.4f})",
                evaluate=False,
            )


class _Recorder(Hook):
    """What a trial records besides its losses: parameter count, time to the first step (data,
    init, compilation included)."""

    def __init__(self, started: float):
        self.started = started
        self.param_count: int | None = None
        self.first_step_s: float | None = None

    def on_start(self, progress: Progress) -> None:
        import jax

        self.param_count = int(sum(x.size for x in jax.tree.leaves(progress.state.params)))

    def after_step(self, progress: Progress) -> None:
        if self.first_step_s is None:
            import jax

            jax.block_until_ready(progress.device_metrics)
            self.first_step_s = time.perf_counter() - self.started


@contextlib.contextmanager
def _compile_seconds() -> Iterator[tuple[list[float], list[str]]]:
    """The XLA compilations inside the block (their seconds) and the persistent cache's hits,
    from JAX's own monitoring events."""
    import jax

    compiles: list[float] = []
    hits: list[str] = []

    def on_duration(name: str, duration: float, **_: object) -> None:
        if name == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    def on_event(name: str, **_: object) -> None:
        if name == "/jax/compilation_cache/cache_hits":
            hits.append(name)

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    try:
        yield compiles, hits
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
        jax.monitoring.unregister_event_listener(on_event)


@contextlib.contextmanager
def compilation_cache(study_dir: Path) -> Iterator[Path]:
    """Points JAX's persistent compilation cache at the study's ``xla_cache/`` inside the block
    (every entry kept, however fast it compiled), so a trial whose programs are the same as an
    earlier trial's reads them instead of compiling; JAX's settings before are restored after
    (a trial run in a process of its own, or in yours).

    Yields:
      The cache folder.
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    folder = (study_dir / study_lib.CACHE_DIR).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    before = {name: getattr(jax.config, name) for name in names}
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    cc.set_cache_dir(str(folder))
    cc.reset_cache()  # a cache JAX already initialised (or found unset) is looked at again
    try:
        yield folder
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
        cc.reset_cache()


def write_trial_file(study_dir: Path, number: int, params: dict[str, Any], **extra: Any) -> None:
    """Writes ``trials/<n>/trial.json``: the trial's number, parameters, and who asked for it
    (pid, host, time), so a trial asked but never started is told from one starting."""
    folder = study_lib.trial_dir(study_dir, number)
    folder.mkdir(parents=True, exist_ok=True)
    data = {"number": number, "params": params, "pid": os.getpid(), "host": _HOST}
    data.update(time=time.time(), **extra)
    study_lib.write_json_atomic(folder / study_lib.TRIAL_FILE, data)


def trial_liveness(study_dir: Path, number: int, *, grace: float = 120.0) -> str:
    """Whether an Optuna RUNNING trial is still being worked on.

    Returns:
      ``"alive"``: its run is going (live pid on this host, or a fresh heartbeat) or it was
      asked for moments ago; ``"dead"``: its process is gone (killed, lost, preempted, or it
      never started and whoever asked for it is gone): it may be run again, as the same trial.

    Example:
      >>> import tempfile
      >>> trial_liveness(Path(tempfile.mkdtemp()), 0)  # asked by nobody, nothing there
      'dead'
    """
    folder = study_lib.trial_dir(study_dir, number)
    status = monitor.read_status(folder, log=lambda _: None)
    if status is not None:
        here, pid = status.get("host") == _HOST, status.get("pid")
        if here and pid == os.getpid():
            return "dead"  # its run was in this process, which is not running it now
        if here and _alive(pid):
            return "alive"  # running, or finished and about to tell Optuna
        if not here and monitor.run_state(status) in monitor.ACTIVE_STATES:
            return "alive"  # a fresh heartbeat from another machine
        if status.get("updated", 0) > _asked_at(folder):
            return "dead"  # its run started and ended without telling Optuna
    try:
        asked = json.loads((folder / study_lib.TRIAL_FILE).read_text())
    except (OSError, ValueError):
        return "dead"
    if asked.get("host") == _HOST:
        if asked.get("pid") == os.getpid():
            return "dead"  # asked by this process, which is not running it (the caller knows)
        return "alive" if _alive(asked.get("pid")) and _recent(asked, grace * 30) else "dead"
    return "alive" if _recent(asked, grace) else "dead"


def _asked_at(folder: Path) -> float:
    try:
        return float(json.loads((folder / study_lib.TRIAL_FILE).read_text()).get("time", 0))
    except (OSError, ValueError, TypeError):
        return 0.0


def _recent(asked: dict[str, Any], seconds: float) -> bool:
    return time.time() - float(asked.get("time", 0)) < seconds


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def objective_values(
    objectives: list[study_lib.Objective],
    final: dict[str, Any],
    status: dict[str, Any] | None,
    param_count: int | None,
) -> list[float]:
    """The objectives' values of a finished run: from its final report, else ``status.json``
    (``train_tokens_per_s``, ``eval_loss``...), or its parameter count.

    Raises:
      SearchError: an objective the run did not log.

    Example:
      >>> objs = study_lib.parse_objectives("validation_loss,params")
      >>> objective_values(objs, {"validation_loss": 1.5}, None, 1000)
      [1.5, 1000.0]
    """
    values = []
    for objective in objectives:
        name = objective.name
        if name == "param_count" and param_count is not None:
            values.append(float(param_count))
        elif name in final:
            values.append(float(final[name]))
        elif status is not None and isinstance(status.get(name), int | float):
            values.append(float(status[name]))
        else:
            known = sorted(
                k
                for k, v in {**(status or {}), **final}.items()
                if isinstance(v, int | float) and k not in ("pid", "updated", "heartbeat")
            )
            raise SearchError(
                f"objective {name}: the run logged no such metric; known: "
                f"{', '.join([*known, 'param_count'])}"
            )
    return values


def open_study(study_dir: Path, settings: study_lib.Settings, config: Any) -> Any:
    """The study as Optuna has it, with the study's pruner (a trial process's view)."""
    import optuna

    storage = study_lib.open_storage(study_dir, settings.storage)
    return optuna.load_study(
        study_name=settings.name,
        storage=storage,
        pruner=study_lib.make_pruner(settings.pruner, config),
    )


def run_trial(
    study_dir: str | Path,
    number: int,
    *,
    study: Any = None,
    log: Callable[[str], None] = print,
) -> str:
    """Trains trial ``number`` of the study in ``study_dir`` and tells Optuna how it ended.

    The config is the study's base config with the trial's parameters
    (:func:`~jaxlm.search.space.apply_params`); the run folder is ``trials/<number>/``, so a
    trial that ran before (killed) resumes from its last checkpoint with the same parameters.

    Args:
      study_dir: the study folder.
      number: the trial's number (Optuna's ``trial.number``), RUNNING in the study.
      study: the ``optuna.Study`` when the caller has it open (None: opened from the folder).
      log: where a line on the outcome goes.

    Returns:
      The trial's state as Optuna now has it: ``COMPLETE``, ``PRUNED`` or ``FAIL``
      (``RUNNING`` again if a signal stopped it: the same command resumes it).

    Raises:
      Preempted: SIGTERM or Ctrl-C; the trial is checkpointed and stays RUNNING.
    """
    import optuna

    from jaxlm.train.loop import Preempted, train_and_evaluate

    study_dir = Path(study_dir).absolute()
    settings = study_lib.read_settings(study_dir)
    if settings is None:
        raise SearchError(f"{study_dir}: no {study_lib.STUDY_FILE}; is this a study folder?")
    base = study_lib.load_base_config(study_dir)
    if study is None:
        study = open_study(study_dir, settings, base)
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    frozen = study._storage.get_trial(trial_id)
    if frozen.state.is_finished():
        return frozen.state.name
    workdir = study_lib.trial_dir(study_dir, number)
    started = time.perf_counter()
    t0 = time.time()
    recorder = _Recorder(started)
    single = len(settings.objectives) == 1
    hooks: list[Hook] = [recorder]
    pruning = None
    if single:  # with --pruner=none too: the learning curves go to Optuna (plots, status)
        pruning = PruningHook(optuna.Trial(study, trial_id))
        hooks.append(pruning)
    storage = study._storage
    storage.set_trial_user_attr(trial_id, "workdir", str(workdir))
    attempts = int(frozen.user_attrs.get("attempts", 0)) + 1
    storage.set_trial_user_attr(trial_id, "attempts", attempts)
    try:
        config = apply_params(base, frozen.params)
        with compilation_cache(study_dir), _compile_seconds() as (compiles, hits):
            final = train_and_evaluate(config, workdir, hooks=hooks)
    except Preempted:
        raise
    except WorkdirBusy as e:  # another process runs this trial (a search sharing the study)
        log(f"Trial {number} is being run by another process: {e}")
        return "RUNNING"
    except JaxlmError as e:  # a config the sampler picked that cannot train, a NaN loss
        storage.set_trial_user_attr(trial_id, "error", f"{type(e).__name__}: {e}")
        study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        log(f"Trial {number} failed: {e}")
        return "FAIL"
    attrs = {
        "steps": int(final.get("step", 0)),
        "seconds": time.time() - t0,
        "first_step_s": recorder.first_step_s,
        "compile_s": float(sum(compiles)),
        # JAX reports a backend compile for a persistent-cache hit too (in far less time)
        "compiles": len(compiles) - len(hits),
        "cache_hits": len(hits),
        "param_count": recorder.param_count,
    }
    for key, value in attrs.items():
        if value is not None:
            storage.set_trial_user_attr(trial_id, key, value)
    status = monitor.read_status(workdir, log=lambda _: None)
    if pruning is not None and pruning.pruned:
        study.tell(number, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
        log(f"Trial {number} pruned at step {final.get('step')}")
        return "PRUNED"
    param_count = recorder.param_count or _stored_count(frozen)
    try:
        values = objective_values(settings.objectives, final, status, param_count)
    except SearchError as e:
        storage.set_trial_user_attr(trial_id, "error", str(e))
        study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        raise
    if not all(math.isfinite(v) for v in values):
        storage.set_trial_user_attr(trial_id, "error", f"non-finite objective {values}")
        study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        return "FAIL"
    study.tell(number, values if not single else values[0], skip_if_finished=True)
    names = [o.name for o in settings.objectives]
    log(f"Trial {number} finished: {dict(zip(names, values, strict=True))}")
    return "COMPLETE"


def _stored_count(frozen: Any) -> int | None:
    value = frozen.user_attrs.get("param_count")
    return int(value) if isinstance(value, int | float) else None
