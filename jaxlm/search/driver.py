"""The search: ask Optuna for trials, run them, until ``trials`` have finished.

:func:`search` creates the study folder (or joins the study in it, refusing one made from
another config or space), resumes every trial whose process died (same trial, same parameters,
from its checkpoint), asks Optuna for new trials while fewer than ``trials`` have finished, and
runs them: in this process for one worker, or as jobs of the job balancer
(:mod:`jaxlm.jobs`) for several. Then it writes the status table, ``best_config.py`` and the
plots (:mod:`jaxlm.search.results`).

What this adds to Optuna's own ``study.optimize``: trials are run folders that resume, a dead
RUNNING trial is finished as the same trial (Optuna's ``RetryHeartbeatStaleTrialCallback``
would enqueue a copy under a new number and start from scratch, and needs an RDB storage's
heartbeat; JournalStorage has none), ``trials`` counts finished trials across restarts and
processes, and trials go through the balancer's devices.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from jaxlm.errors import SearchError
from jaxlm.search import study as study_lib
from jaxlm.search.space import (
    Distribution,
    check_space,
    describe_space,
    grid_space,
    to_distributions,
)
from jaxlm.search.trial import run_trial, trial_liveness, write_trial_file

ENDED = ("COMPLETE", "PRUNED", "FAIL")
ACTIVE_JOB = ("queued", "running")  # the job balancer's states of a job not yet ended
MAX_ATTEMPTS = 3  # a trial whose process dies this many times is failed


def prepare_study(
    config: ml_collections.ConfigDict,
    space: Mapping[str, Distribution],
    study_dir: str | Path,
    *,
    config_spec: str = "",
    space_spec: str = "",
    sampler: str = "tpe",
    pruner: str = "none",
    objectives: Sequence[study_lib.Objective] | str = "validation_loss",
    storage: str | None = None,
    seed: int = 0,
) -> tuple[Any, study_lib.Settings, dict[str, Any]]:
    """Checks everything, then creates the study (or joins the one in the folder).

    Every check comes before anything is written: the space against the config
    (:func:`~jaxlm.search.space.check_space`), the sampler and pruner, the objectives, and the
    folder's own ``study.json`` (another config, space or sampler is refused, and nothing in
    the folder changes).

    Args:
      config: the base config.
      space: the search space.
      study_dir: the study folder.
      config_spec, space_spec: how they were given, for the messages and ``study.json``.
      sampler, pruner: names (see :mod:`jaxlm.search.study`).
      objectives: ``"validation_loss"``, ``"validation_loss,tokens_per_s"``, or parsed.
      storage: a SQLAlchemy URL, or None for the journal in the folder.
      seed: the sampler's seed.

    Returns:
      ``(study, settings, distributions)``: the ``optuna.Study``, what ``study.json`` says, and
      the Optuna distributions by dotted field.

    Raises:
      SearchError: any bad input, said in one line.
    """
    import optuna

    study_dir = Path(study_dir).absolute()
    where = space_spec or "space"
    check_space(space, config, where)
    if isinstance(objectives, str):
        objectives = study_lib.parse_objectives(objectives)
    objectives = list(objectives)
    if sampler not in study_lib.SAMPLERS:
        raise SearchError(f"--sampler={sampler}: expected one of {', '.join(study_lib.SAMPLERS)}")
    if pruner not in study_lib.PRUNERS:
        raise SearchError(f"--pruner={pruner}: expected one of {', '.join(study_lib.PRUNERS)}")
    if pruner != "none" and len(objectives) > 1:
        raise SearchError(f"--pruner={pruner}: Optuna prunes single-objective studies only")
    if pruner != "none" and objectives[0] != study_lib.Objective("validation_loss", "minimize"):
        raise SearchError(
            f"--pruner={pruner} prunes on the validation loss: the objective must be "
            f"validation_loss (minimized), got {objectives[0].name} ({objectives[0].direction})"
        )
    distributions = to_distributions(space, sampler)
    grid = grid_space(space) if sampler == "grid" else None
    study_lib.make_sampler(sampler, seed=seed, grid=grid, n_objectives=len(objectives))
    study_lib.make_pruner(pruner, config)
    settings = study_lib.Settings(
        name=study_dir.name,
        config=config_spec,
        config_digest=study_lib.config_digest(config),
        space=describe_space(space),
        objectives=objectives,
        sampler=sampler,
        pruner=pruner,
        storage=storage,
        seed=seed,
    )
    if study_dir.exists() and study_lib.read_settings(study_dir) is None:
        if any(p.name != ".search.lock" for p in study_dir.iterdir()):
            raise SearchError(
                f"{study_dir} is a folder that holds no study ({study_lib.STUDY_FILE} missing) "
                "and is not empty; give a new or empty --study folder"
            )
    with study_lib.folder_lock(study_dir):
        old = study_lib.read_settings(study_dir)
        if old is not None:
            study_lib.check_same(old, settings, study_dir)
            settings = old._replace(seed=seed)
        if old is None:  # first, so a folder with a journal always has its study.json
            study_lib.write_text_atomic(
                study_dir / study_lib.BASE_CONFIG_FILE,
                study_lib.config_source(config, f"The base config of study {settings.name}."),
            )
            study_lib.write_json_atomic(study_dir / study_lib.STUDY_FILE, settings.to_json())
        storage_obj = study_lib.open_storage(study_dir, settings.storage)
        study = optuna.create_study(
            study_name=settings.name,
            storage=storage_obj,
            directions=[o.direction for o in settings.objectives],
            pruner=study_lib.make_pruner(pruner, config),
            load_if_exists=True,
        )
    # Offset by the trials there, so a continued study does not draw the same points again;
    # not a grid's: GridSampler shuffles its points with the seed, and every process sharing
    # the study must see them in one order (trial n gets point n)
    offset = 0 if sampler == "grid" else len(study.trials)
    study.sampler = study_lib.make_sampler(
        sampler, seed=seed + offset, grid=grid, n_objectives=len(objectives)
    )
    return study, settings, distributions


def counts(study: Any) -> dict[str, int]:
    """How many trials are in each state (``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING``...)."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def finished_count(study: Any) -> int:
    """Trials that ended (complete, pruned or failed): what ``--trials`` counts."""
    c = counts(study)
    return sum(c.get(s, 0) for s in ENDED)


class _InProcess:
    """Trials run one at a time in this process."""

    def __init__(self, study: Any, study_dir: Path, log: Callable[[str], None]):
        self.study, self.study_dir, self.log = study, study_dir, log

    def start(self, number: int) -> None:
        # Told through a study of its own, as a trial process would (the driver's sampler is
        # for asking: GridSampler.after_trial calls study.stop, meant for study.optimize).
        run_trial(self.study_dir, number, log=self.log)

    def adopt(self) -> list[int]:
        return []

    def poll(self) -> list[int]:
        return []

    def close(self) -> None:
        pass


class _Balanced:
    """Trials as jobs of the job balancer (a balancer on the queue is started in a thread of
    this process unless one already runs there)."""

    def __init__(self, study_dir: Path, queue: Path, inventory: str, log: Callable[[str], None]):
        from jaxlm import jobs
        from jaxlm.jobs.loop import balancer_running

        self.jobs, self.study_dir, self.queue, self.log = jobs, study_dir, queue, log
        self.running: dict[int, str] = {}
        self.thread: threading.Thread | None = None
        self.balancer = None
        if not balancer_running(queue):
            self.balancer = jobs.Balancer(queue, inventory, poll=0.5, log=None)
            self.thread = threading.Thread(
                target=self.balancer.run, kwargs={"until_done": False}, daemon=True
            )
            self.thread.start()

    def start(self, number: int) -> None:
        folder = study_lib.trial_dir(self.study_dir, number)
        command = (
            sys.executable,
            "-m",
            "jaxlm.search",
            "trial",
            f"--study={self.study_dir}",
            f"--number={number}",
        )
        for job_id, record in self.jobs.status(queue=self.queue).items():
            if record.job.workdir == str(folder) and record.state in ACTIVE_JOB:
                self.running[number] = job_id  # its job is still queued or running (adopted)
                return
        job = self.jobs.Job(
            command=command,
            workdir=str(folder),
            name=f"trial {number} of {self.study_dir.name}",
            cwd=os.getcwd(),
            env={"PYTHONPATH": _pythonpath()},  # the trial runs the jaxlm this process runs
            dry_run=True,
        )
        self.running[number] = self.jobs.submit(job, queue=self.queue)

    def adopt(self) -> list[int]:
        """The trials of this study whose jobs are queued or running on the queue already (a
        search that was killed and started again): watched as if this process started them."""
        trials = (self.study_dir / study_lib.TRIALS_DIR).absolute()
        for job_id, record in self.jobs.status(queue=self.queue).items():
            folder = Path(record.job.workdir or "")
            if folder.parent == trials and folder.name.isdigit() and record.state in ACTIVE_JOB:
                self.running[int(folder.name)] = job_id
        return list(self.running)

    def poll(self) -> list[int]:
        """The trials whose jobs ended since the last call."""
        records = self.jobs.status(queue=self.queue)
        ended = [n for n, i in self.running.items() if records[i].state not in ACTIVE_JOB]
        for number in ended:
            record = records[self.running.pop(number)]
            if record.state != "finished":
                self.log(
                    f"Trial {number}: its job {record.id} {record.state}: {record.message[:200]}"
                )
        return ended

    def close(self) -> None:
        if self.balancer is not None:
            self.balancer.stop()
            if self.thread is not None:
                self.thread.join(timeout=30)


def _pythonpath() -> str:
    import jaxlm

    here = str(Path(jaxlm.__file__).resolve().parents[1])
    rest = os.environ.get("PYTHONPATH", "")
    return here + (os.pathsep + rest if rest else "")


def search(
    config: ml_collections.ConfigDict,
    space: Mapping[str, Distribution],
    study_dir: str | Path,
    *,
    trials: int | None = None,
    workers: int = 1,
    config_spec: str = "",
    space_spec: str = "",
    sampler: str = "tpe",
    pruner: str = "none",
    objectives: Sequence[study_lib.Objective] | str = "validation_loss",
    storage: str | None = None,
    seed: int = 0,
    queue: str | Path | None = None,
    inventory: str = "auto",
    population: int | None = None,
    pbt: bool = False,
    report: bool = True,
    log: Callable[[str], None] = print,
) -> Any:
    """Runs a hyperparameter search until ``trials`` trials have finished.

    Args:
      config: the base config; each trial sets the space's fields in a copy.
      space: dotted field -> distribution (:func:`~jaxlm.search.space.load_space`).
      study_dir: the study folder (created, or joined: the same command continues a study,
        and several processes running it share the work).
      trials: finished trials to reach (complete, pruned or failed, counted over every run of
        the command); None: the grid's size for ``grid``, else 20.
      workers: trials at once; 1 runs them in this process, more submits them to the job
        balancer on ``queue``.
      config_spec, space_spec: how config and space were named (``study.json``, messages).
      sampler, pruner, objectives, storage, seed: see :func:`prepare_study`.
      queue: the job queue for ``workers > 1`` (default ``<study>/jobs``).
      inventory: the balancer's devices (``auto``, ``cpu``, a JSON file).
      population, pbt: train ``population`` trials in one compiled step
        (:mod:`jaxlm.search.population`).
      report: write the plots and ``best_config.py`` at the end.
      log: where progress lines go.

    Returns:
      The ``optuna.Study``.

    Raises:
      SearchError: bad input (before any trial starts).

    Example:
      >>> from jaxlm.config import load_config
      >>> from jaxlm.search import grid, search
      >>> space = {"optimizer.learning_rate": grid([1e-3, 3e-3])}
      >>> config = load_config("lstm:smoke")
      >>> study = search(config, space, "studies/x", sampler="grid")  # doctest: +SKIP
    """
    study_dir = Path(study_dir).absolute()
    if workers < 1:
        raise SearchError(f"--workers={workers}: expected at least 1")
    if trials is not None and trials < 1:
        raise SearchError(f"--trials={trials}: expected at least 1")
    study, settings, distributions = prepare_study(
        config,
        space,
        study_dir,
        config_spec=config_spec,
        space_spec=space_spec,
        sampler=sampler,
        pruner=pruner,
        objectives=objectives,
        storage=storage,
        seed=seed,
    )
    grid_size = None
    if sampler == "grid":
        grid_size = 1
        for values in grid_space(space).values():
            grid_size *= len(values)
    if trials is None:
        trials = grid_size if grid_size is not None else 20
    if grid_size is not None:  # each point once: GridSampler hands out a running point again
        trials = min(trials, grid_size)  # once every point has started
    if population is not None or pbt:
        _population(study, config, distributions, study_dir, population, pbt, trials)
    else:
        _run(
            study,
            settings,
            config,
            distributions,
            study_dir,
            trials,
            workers,
            queue,
            inventory,
            log,
        )
    if report:
        from jaxlm.search import results

        results.write_report(study_dir, study=study, log=log)
    return study


def _population(study, config, distributions, study_dir, n, pbt, trials) -> None:
    from jaxlm.search import population

    population.search_population(
        study, config, distributions, study_dir, n=n or 8, pbt=pbt, trials=trials
    )


def _run(
    study: Any,
    settings: study_lib.Settings,
    config: ml_collections.ConfigDict,
    distributions: dict[str, Any],
    study_dir: Path,
    trials: int,
    workers: int,
    queue: str | Path | None,
    inventory: str,
    log: Callable[[str], None],
) -> None:
    """The driver's loop: dead trials first, then new ones, ``workers`` at a time."""

    if workers == 1:
        runner: Any = _InProcess(study, study_dir, log)
    else:
        _prepare_corpus(config)
        queue = Path(queue or study_dir / study_lib.JOBS_DIR).absolute()
        runner = _Balanced(study_dir, queue, inventory, log)
    in_flight: set[int] = set(runner.adopt())
    try:
        while True:
            for number in runner.poll():
                in_flight.discard(number)
                _after_job(study, study_dir, number, log)
            started = _resume_dead(study, study_dir, in_flight, workers, runner, log)
            while not started and len(in_flight) < workers:
                trial = _ask(study, study_dir, distributions, trials)
                if trial is None:
                    break
                log(f"Trial {trial.number}: {trial.params}")
                in_flight.add(trial.number)
                started = True
                runner.start(trial.number)
                if workers == 1:
                    in_flight.discard(trial.number)
                    break
            if not in_flight and not started:
                break
            if workers > 1:
                time.sleep(0.5)
    finally:
        runner.close()
    log(f"Study {settings.name}: {finished_count(study)} trials finished ({counts(study)})")


def _ask(study: Any, study_dir: Path, distributions: dict[str, Any], trials: int) -> Any:
    """A new trial, or None when ``trials`` are finished or running (every RUNNING trial
    counts, whoever runs it, and the count is taken under the folder's lock: processes sharing
    the study do not overshoot together) or the grid is exhausted."""
    import optuna

    with study_lib.folder_lock(study_dir):
        c = counts(study)
        if sum(c.get(s, 0) for s in ENDED) + c.get("RUNNING", 0) >= trials:
            return None
        sampler = study.sampler
        if isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study):
            return None
        trial = study.ask(distributions)
        write_trial_file(study_dir, trial.number, trial.params)
    return trial


def _prepare_corpus(config: ml_collections.ConfigDict) -> None:
    """Prepares the base config's corpus once, before several trial processes start: TFDS's
    first preparation of a corpus in a data folder is not safe to run twice at once (the
    second process fails renaming its folder into place)."""
    from jaxlm.data import builders, corpus_splits

    parts, label = corpus_splits(config.data)
    builders.ensure_prepared(parts, label, config.data.data_dir or None)


def _resume_dead(study, study_dir, in_flight, workers, runner, log) -> bool:
    """Starts again the RUNNING trials whose process died, as the same trials."""
    import optuna

    started = False
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.number in in_flight or len(in_flight) >= workers:
            continue
        if trial_liveness(study_dir, t.number) != "dead":
            continue
        attempts = int(t.user_attrs.get("attempts", 0))
        if attempts >= MAX_ATTEMPTS:
            log(f"Trial {t.number}: its process died {attempts} times: failed")
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            continue
        log(f"Trial {t.number} was left running by a process that died: resuming it {t.params}")
        in_flight.add(t.number)
        started = True
        runner.start(t.number)
        if workers == 1:
            in_flight.discard(t.number)
            return True
    return started


def _after_job(study: Any, study_dir: Path, number: int, log: Callable[[str], None]) -> None:
    """A trial job ended; if the trial is still RUNNING its process died without telling
    Optuna: the next round resumes it (or fails it after ``MAX_ATTEMPTS``)."""
    import optuna

    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    state = study._storage.get_trial(trial_id).state
    if state == optuna.trial.TrialState.RUNNING:
        log(f"Trial {number}: its process ended without telling the study; it will resume")
