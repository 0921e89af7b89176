"""Many trials in one compiled step: a population of same-shaped runs trained with ``jax.vmap``.

N members share the config's shapes (model sizes, batch, schedule, seed, corpus) and differ in
their continuous hyperparameters (:data:`jaxlm.train.hparams.CONTINUOUS`: learning rate,
weight decay, clip norm, label smoothing, dropout rates, AR/TAR). Their states are stacked on a
leading member axis and one jitted step trains all of them: ``jax.vmap`` over (parameters,
optimizer state, recurrent carry, dropout key, hyperparameters) with the batch shared. On a
small model, where one run's step cannot fill the machine, this is many trials for little
more than the price of one (``benchmarks/population_speed.py``).

- Every member sees the batches and the initial parameters a solo run of its config would (the
  seed is shared), so member ``i`` trains exactly as ``python -m jaxlm.train`` with its
  hyperparameters does (``tests/search/test_population.py`` checks it to 1e-5).
- Members are evaluated together (one vmapped evaluation window).
- Pruning masks a member out: its parameters and optimizer state stop changing and it stops
  counting (its compute is still spent: shapes do not change).
- PBT (``pbt=True``, Jaderberg et al. 2017, https://arxiv.org/abs/1711.09846): at each
  evaluation, inside one jitted function, the worst quarter of the members copy the
  parameters and optimizer state of the best quarter, and their hyperparameters are
  multiplied by 0.8 or 1.25 (a draw from a key folded from the step: a resumed run draws the
  same). Nothing changes shape, nothing recompiles.
- The population checkpoints (through :mod:`jaxlm.checkpoints`: orbax, checksums, the meta)
  and resumes exactly, like a single run.

What ours adds to Optuna: :func:`search_population` asks N trials, trains them as one
population, reports their evaluations (for the study's pruner) and tells N.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxlm import checkpoints, data, state, transforms
from jaxlm.config import validate
from jaxlm.data import augment, batching
from jaxlm.data.tokenizers import tokenizer_from_json
from jaxlm.errors import ConfigError
from jaxlm.train import hparams as hp_lib
from jaxlm.train.evaluate import summarize
from jaxlm.train.steps import hyper_from_setup, make_eval_step, make_train_step
from jaxlm.train.workdir import log

PBT_FACTORS = (0.8, 1.25)
MEMBERS_FILE = "members.json"
METRICS_FILE = "metrics.jsonl"

# A pruner's answer at an evaluation: (step, validation losses [N], active [N]) -> prune [N].
Prune = Callable[[int, np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass
class PopulationResult:
    """What :func:`train_population` returns.

    Attributes:
      step: the steps trained.
      validation_loss: each member's final loss over the whole validation split (nats/token).
      test_loss: the same over the test split.
      best_eval_loss: each member's lowest loss at a periodic evaluation (inf: none).
      active: which members were not pruned.
      pruned_at: the step each member was pruned at (None: not pruned).
      hparams: each member's hyperparameters at the end (PBT changes them).
      evaluations: ``[(step, [loss per member]), ...]`` of the periodic evaluations.
    """

    step: int
    validation_loss: list[float]
    test_loss: list[float]
    best_eval_loss: list[float]
    active: list[bool]
    pruned_at: list[int | None]
    hparams: list[dict[str, float]]
    evaluations: list[tuple[int, list[float]]]


def member_configs(
    config: ml_collections.ConfigDict, members: Sequence[Mapping[str, float]]
) -> list[ml_collections.ConfigDict]:
    """Each member's config: ``config`` with the member's dotted fields set, validated.

    Args:
      config: the shared run config.
      members: one ``{dotted field: value}`` per member.

    Returns:
      The configs, in order.

    Raises:
      ConfigError: no members, a field that is not a continuous hyperparameter (it would
        change the program's shapes; named), or a value the config rejects.

    Example:
      >>> from jaxlm.config import load_config
      >>> configs = member_configs(load_config("lstm:smoke"), [{"model.dropout": 0.2}])
      >>> configs[0].model.dropout
      0.2
      >>> member_configs(load_config("lstm:smoke"), [{"model.embed_dim": 16}])
      Traceback (most recent call last):
      ...
      jaxlm.errors.ConfigError: population member 0: model.embed_dim changes the shapes ...
    """
    if not members:
        raise ConfigError("population: no members (give at least one)")
    out = []
    for i, member in enumerate(members):
        c = config.copy_and_resolve_references()
        for dotted, value in member.items():
            if dotted not in hp_lib.CONTINUOUS:
                raise ConfigError(
                    f"population member {i}: {dotted} changes the shapes or the program of the "
                    "step, so it cannot vary inside a population; only continuous "
                    f"hyperparameters can ({', '.join(hp_lib.CONTINUOUS)})"
                )
            try:
                section, _, name = dotted.rpartition(".")
                node = c
                for part in section.split("."):
                    node = node[part]
                current = node[name]
            except (KeyError, AttributeError):
                raise ConfigError(
                    f"population member {i}: config.{dotted} does not exist for model "
                    f"{config.model.name!r}"
                ) from None
            if not isinstance(current, int | float) or isinstance(current, bool):
                raise ConfigError(
                    f"population member {i}: config.{dotted}={current!r} is not a scalar; set "
                    "it to one number in the config to vary it"
                )
            node[name] = float(value)
        validate(c)
        out.append(c)
    hp_lib.check_same_shapes(out)
    return out


def population_fields(configs: Sequence[ml_collections.ConfigDict]) -> tuple[str, ...]:
    """The hyperparameters traced in a population's step: those any member switches on."""
    on = set().union(*(hp_lib.fields_in_force(c) for c in configs))
    return tuple(f for f in hp_lib.CONTINUOUS if f in on)


def stacked_hparams(
    configs: Sequence[ml_collections.ConfigDict], fields: Sequence[str]
) -> dict[str, np.ndarray]:
    """``{field: float32[N]}``: each member's value of each traced field."""
    rows = [hp_lib.from_config(c, fields) for c in configs]
    return {f: np.asarray([r[f] for r in rows], np.float32) for f in fields}


def make_population_step(
    setup: state.Setup, config: ml_collections.ConfigDict
) -> Callable[[Any, dict[str, jax.Array]], tuple[Any, dict[str, jax.Array]]]:
    """``step(pop, batch) -> (pop, metrics)``: one train step of every member, for ``jax.jit``.

    ``pop`` is ``{"state": TrainState [N, ...], "hparams": {field: [N]}, "active": bool [N],
    ...}``; the batch is shared. A member that is not active keeps its parameters, optimizer
    state and carry (its step counter moves with the others). A ``loss_sum`` [N] in ``pop``
    gets each member's train loss added (what a log line averages: it is checkpointed, so a
    resumed run logs what an uninterrupted one does).

    Args:
      setup: :func:`jaxlm.state.build` of the shared config.
      config: the shared config.

    Returns:
      The step; ``metrics`` are the train step's, each with a leading member axis.
    """
    one = make_train_step(
        setup.model,
        setup.tx,
        None,
        carry_state=config.train.carry_state,
        loss_scaling=setup.policy.needs_loss_scaling,
        hyper=hyper_from_setup(setup, config.train),
    )

    def member(s: state.TrainState, hparams: dict, active: jax.Array, batch: dict):
        new, metrics = one(s, batch, hparams)
        kept = jax.tree.map(
            lambda n, o: jnp.where(active, n, o),
            (new.params, new.opt_state, new.carry),
            (s.params, s.opt_state, s.carry),
        )
        params, opt_state, carry = kept
        return new.replace(params=params, opt_state=opt_state, carry=carry), metrics

    def step(pop: dict, batch: dict) -> tuple[dict, dict]:
        new, metrics = jax.vmap(member, in_axes=(0, 0, 0, None))(
            pop["state"], pop["hparams"], pop["active"], batch
        )
        out = {**pop, "state": new}
        if "loss_sum" in pop:  # the train losses since the last log line, per member
            out["loss_sum"] = pop["loss_sum"] + metrics["loss"]
        return out, metrics

    return step


def make_population_eval(model: Any) -> Callable:
    """``eval(params, carry, sums, batch) -> (carry, sums)`` of every member (vmapped)."""
    return jax.vmap(make_eval_step(model), in_axes=(0, 0, 0, None))


def exploit_and_explore(
    pop: dict,
    losses: jax.Array,
    key: jax.Array,
    factors: tuple[float, float] = PBT_FACTORS,
    perturb: Sequence[str] | None = None,
) -> dict:
    """PBT's truncation selection, in the graph: the worst quarter copies the best quarter.

    The members ranked in the bottom ``N // 4`` by ``losses`` take the parameters, optimizer
    state and carry of the top ``N // 4`` (the k-th worst copies the k-th best), and their
    hyperparameters are the copied member's times 0.8 or 1.25, drawn from ``key`` per member
    and field; rates are kept below 0.95. Fewer than 4 members: unchanged.

    Args:
      pop: the population (see :func:`make_population_step`).
      losses: float32 [N] validation losses (lower is better).
      key: the draw's key (fold the step in for reproducibility).
      factors: the two multipliers.
      perturb: the hyperparameters to perturb (those the members vary); the others are
        copied as they are. None: all of them.

    Returns:
      The population after the exchange, same shapes.

    Example:
      >>> pop = {"state": {"w": jnp.arange(4.0)}, "hparams": {"optimizer.learning_rate":
      ...        jnp.ones(4)}, "active": jnp.ones(4, bool)}
      >>> out = exploit_and_explore(pop, jnp.asarray([3.0, 1.0, 2.0, 4.0]), jax.random.key(0))
      >>> out["state"]["w"].tolist()  # member 3 (worst) copied member 1 (best)
      [0.0, 1.0, 2.0, 1.0]
      >>> float(out["hparams"]["optimizer.learning_rate"][3]) in (0.8, 1.25)
      True
    """
    n = losses.shape[0]
    q = n // 4
    if q == 0:
        return pop
    order = jnp.argsort(losses)  # best first
    best, worst = order[:q], order[n - q :][::-1]  # the worst copies the best, and so on
    source = jnp.arange(n).at[worst].set(best)
    replaced = jnp.zeros(n, bool).at[worst].set(True)
    new_state = jax.tree.map(lambda x: x[source], pop["state"])
    names = sorted(pop["hparams"])
    draws = jax.random.bernoulli(key, 0.5, (n, len(names)))
    scale = jnp.where(draws, factors[1], factors[0]).astype(jnp.float32)
    new_hp = {}
    for j, name in enumerate(names):
        value = pop["hparams"][name]
        moved = value[source]
        if perturb is None or name in perturb:
            moved = moved * scale[:, j]
        if name in hp_lib.RATES:
            moved = jnp.minimum(moved, 0.95)
        new_hp[name] = jnp.where(replaced, moved, value)
    return {**pop, "state": new_state, "hparams": new_hp}


def train_population(
    config: ml_collections.ConfigDict,
    members: Sequence[Mapping[str, float]],
    workdir: str | pathlib.Path,
    *,
    pbt: bool = False,
    prune: Prune | None = None,
    on_evaluation: Callable[[int, np.ndarray], None] | None = None,
    final_evaluation: bool = True,
    stop_after: int | None = None,
) -> PopulationResult:
    """Trains N members of one shape in one compiled step, evaluates and checkpoints them.

    Re-running on the same workdir resumes from its latest checkpoint (the members must be
    the same, ``members.json``); a resumed population ends exactly where an uninterrupted one
    does.

    Args:
      config: the shared run config (its continuous fields are each member's defaults).
      members: one ``{dotted field: value}`` per member (continuous fields only).
      workdir: the population's folder: ``members.json``, ``metrics.jsonl`` (rows with a
        ``member``), ``checkpoints/`` (the stacked states).
      pbt: population-based training at each periodic evaluation
        (:func:`exploit_and_explore`).
      prune: called at each periodic evaluation with ``(step, losses, active)``; the members
        it returns True for are masked out.
      on_evaluation: called with ``(step, losses)`` after each periodic evaluation.
      final_evaluation: evaluate the whole validation and test splits at the end.
      stop_after: stop (checkpointed) after this many steps of this call, as a preemption
        would; for tests.

    Returns:
      A :class:`PopulationResult`.

    Raises:
      ConfigError: a member that changes shapes or holds a bad value; a workdir of other
        members; augmentation (``config.data.augment``), which a population does not apply.

    Example:
      >>> from jaxlm.config import load_config
      >>> result = train_population(load_config("lstm:smoke"),
      ...     [{"optimizer.learning_rate": 1e-3}, {"optimizer.learning_rate": 3e-3}],
      ...     "runs/pop")  # doctest: +SKIP
      >>> result.validation_loss  # doctest: +SKIP
      [3.61, 3.35]
    """
    configs = member_configs(config, members)
    if any(augment.is_on(c.data) for c in configs):
        raise ConfigError(
            "population: config.data.augment is not applied in a population's step; set its "
            "rates to 0, or train (and search) without --population"
        )
    config = configs[0]
    fields = population_fields(configs)
    workdir = checkpoints.absolute(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _check_members(workdir, members, fields, pbt)
    t = config.train
    with checkpoints.exclusive(workdir, log=log):
        mgr = checkpoints.manager(workdir, t.keep_checkpoints)
        try:
            return _train(config, configs, members, fields, workdir, mgr, pbt, prune,
                          on_evaluation, final_evaluation, stop_after)  # fmt: skip
        finally:
            mgr.wait_until_finished()
            mgr.close()


def _check_members(
    workdir: pathlib.Path, members: Sequence[Mapping[str, float]], fields: Sequence[str], pbt: bool
) -> None:
    """Writes ``members.json``, or refuses a workdir that holds another population."""
    record = {"members": [dict(m) for m in members], "fields": list(fields), "pbt": pbt}
    path = workdir / MEMBERS_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != json.loads(json.dumps(record)):
            raise ConfigError(
                f"{path} holds another population ({len(saved['members'])} members "
                f"{saved['members']}, pbt={saved['pbt']}); use another workdir"
            )
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def _train(config, configs, members, fields, workdir, mgr, pbt, prune, on_eval, final_eval, stop):
    n, t = len(configs), config.train
    latest = mgr.latest_step()
    tokenizer = None
    if latest is not None:
        _, meta = checkpoints.newest_readable_meta(mgr)
        tokenizer = tokenizer_from_json(meta["tokenizer"])
    corpus = data.load_corpus(config.data, tokenizer, seed=config.seed)
    setup = state.build(config, corpus.tokenizer.vocab_size)
    windows = data.train_data(config, corpus)  # the windows a solo run of the config reads

    def fresh() -> dict:
        one = setup.init()
        return {
            "state": jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), one),
            "hparams": {k: jnp.asarray(v) for k, v in stacked_hparams(configs, fields).items()},
            "active": jnp.ones(n, bool),
            "best": jnp.full(n, jnp.inf, jnp.float32),
            "pruned_at": jnp.full(n, -1, jnp.int32),
            "loss_sum": jnp.zeros(n, jnp.float32),
        }

    pop = jax.jit(fresh)()
    if latest is not None:
        device = jax.devices()[0]
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(
                x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(device)
            ),
            pop,
        )
        pop, _, latest = checkpoints.restore_latest_intact(mgr, target, quarantine=True, log=log)
        log(f"Resumed the population from {mgr.directory}/{latest}")
    step = int(jax.device_get(pop["state"].step[0]))
    metrics_file = workdir / METRICS_FILE
    evaluations = _keep_rows(metrics_file, step)
    meta = checkpoints.make_meta(
        config, corpus.tokenizer, population={"members": n, "fields": list(fields), "pbt": pbt}
    )

    train_step = jax.jit(make_population_step(setup, config), donate_argnums=0)
    pop_eval = jax.jit(make_population_eval(setup.model))
    feedback = jax.jit(jax.vmap(transforms.report_validation_loss))
    varied = sorted({f for m in members for f in m})
    exploit = jax.jit(functools.partial(exploit_and_explore, perturb=varied))
    base_key = jax.random.PRNGKey(config.seed)
    log(f"Population of {n} {config.model.name} members, traced hyperparameters {list(fields)}")

    def evaluate(params, carry_fn, tokens, max_windows):
        return _evaluate(pop_eval, params, carry_fn, tokens, max_windows, config, n)

    carry0 = jax.jit(lambda: jax.tree.map(
        lambda x: jnp.broadcast_to(x, (n, *x.shape)),
        setup.model.initial_carry(config.data.eval_batch_size),
    ))  # fmt: skip
    done_here = 0
    with open(metrics_file, "a") as rows:
        while step < t.num_steps:
            batch = windows.batch(step)
            pop, _ = train_step(pop, {k: jnp.asarray(v) for k, v in batch.items()})
            step += 1
            done_here += 1
            if step % t.log_every == 0 or step == t.num_steps:
                window = step - (step - 1) // t.log_every * t.log_every
                mean = np.asarray(pop["loss_sum"], np.float64) / window
                pop["loss_sum"] = jnp.zeros(n, jnp.float32)
                if not np.all(np.isfinite(mean) | ~np.asarray(pop["active"])):
                    log(f"non-finite train loss at step {step}: {mean.tolist()}")
                _write(rows, step, "train", mean)
            if step % t.eval_every == 0 and step < t.num_steps and t.eval_every > 0:
                s = pop["state"]
                params = jax.vmap(transforms.averaged_params)(s.opt_state, s.params)
                loss = evaluate(params, carry0, corpus.validation, t.eval_steps)
                opt_state = feedback(s.opt_state, jnp.asarray(loss, jnp.float32))
                pop = {**pop, "state": s.replace(opt_state=opt_state)}
                active = np.asarray(pop["active"])
                counted = np.where(active, loss, np.inf)
                pop["best"] = jnp.minimum(pop["best"], jnp.asarray(counted, jnp.float32))
                _write(rows, step, "eval", loss, active=active)
                evaluations.append((step, [float(x) for x in loss]))
                if on_eval is not None:
                    on_eval(step, loss)
                if prune is not None:
                    cut = np.asarray(prune(step, loss, active), bool) & active
                    if cut.any():
                        log(f"step {step}: pruned members {np.flatnonzero(cut).tolist()}")
                        pop["active"] = jnp.asarray(active & ~cut)
                        pop["pruned_at"] = jnp.where(jnp.asarray(cut), step, pop["pruned_at"])
                if pbt:
                    ranked = jnp.asarray(np.where(np.asarray(pop["active"]), loss, np.inf))
                    pop = exploit(
                        pop, ranked.astype(jnp.float32), jax.random.fold_in(base_key, step)
                    )
                rows.flush()
            at_end = step == t.num_steps or (stop is not None and done_here >= stop)
            if step % t.checkpoint_every == 0 or at_end:
                rows.flush()
                checkpoints.save(mgr, step, pop, meta)
            if stop is not None and done_here >= stop:
                break
    mgr.wait_until_finished()
    result = _result(pop, step, evaluations, fields)
    if final_eval and step >= t.num_steps:
        s = pop["state"]
        params = jax.vmap(transforms.averaged_params)(s.opt_state, s.params)
        result.validation_loss = evaluate(params, carry0, corpus.validation, 0).tolist()
        result.test_loss = evaluate(params, carry0, corpus.test, 0).tolist()
        with open(metrics_file, "a") as rows:
            _write(rows, step, "validation", np.asarray(result.validation_loss))
            _write(rows, step, "test", np.asarray(result.test_loss))
    return result


def _evaluate(pop_eval, params, carry_fn, tokens, max_windows, config, n) -> np.ndarray:
    """Each member's mean loss over a split (or its first ``max_windows`` windows)."""
    streams = batching.make_streams(tokens, config.data.eval_batch_size, pad_to=config.data.seq_len)
    carry = carry_fn()
    sums = (jnp.zeros(n, jnp.float32), jnp.zeros(n, jnp.float32))
    for i, batch in enumerate(batching.eval_batches(streams, config.data.seq_len)):
        if max_windows and i >= max_windows:
            break
        batch.pop("reset")
        carry, sums = pop_eval(params, carry, sums, {k: jnp.asarray(v) for k, v in batch.items()})
    total, count = (np.asarray(x, np.float64) for x in jax.device_get(sums))
    return np.asarray([summarize(a, c)["loss"] for a, c in zip(total, count, strict=True)])


def _write(rows, step: int, split: str, values: np.ndarray, active: Any = None) -> None:
    for i, value in enumerate(np.asarray(values).tolist()):
        row = {"step": step, "split": split, "member": i, "loss": value}
        if active is not None:
            row["active"] = bool(active[i])
        rows.write(json.dumps(row) + "\n")


def _keep_rows(path: pathlib.Path, step: int) -> list[tuple[int, list[float]]]:
    """Drops the rows a dead run wrote past its checkpoint; returns the evaluations kept."""
    if not path.exists():
        return []
    kept = [r for r in map(json.loads, path.read_text().splitlines()) if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    evals: dict[int, list[float]] = {}
    for r in kept:
        if r["split"] == "eval":
            evals.setdefault(r["step"], []).append(r["loss"])
    return sorted(evals.items())


def _result(pop: dict, step: int, evaluations, fields) -> PopulationResult:
    hp = {k: np.asarray(v) for k, v in jax.device_get(pop["hparams"]).items()}
    n = len(np.asarray(pop["active"]))
    pruned = np.asarray(pop["pruned_at"]).tolist()
    return PopulationResult(
        step=step,
        validation_loss=[math.nan] * n,
        test_loss=[math.nan] * n,
        best_eval_loss=np.asarray(pop["best"], np.float64).tolist(),
        active=np.asarray(pop["active"]).tolist(),
        pruned_at=[None if p < 0 else p for p in pruned],
        hparams=[{k: float(hp[k][i]) for k in fields} for i in range(n)],
        evaluations=evaluations,
    )


def search_population(
    study: Any,
    config: ml_collections.ConfigDict,
    distributions: dict[str, Any],
    study_dir: pathlib.Path,
    *,
    n: int,
    pbt: bool,
    trials: int,
) -> list[PopulationResult]:
    """Runs a study's trials N at a time, each N as one population: ask N, train, tell N.

    Each member's hyperparameters are one trial's (``study.ask(distributions)``). At each
    periodic evaluation every active member reports its validation loss to its trial, and the
    ones the study's pruner prunes are masked out (without PBT) and told PRUNED. The others are
    told their final validation loss. With PBT a member's hyperparameters change over the run:
    its trial is told the value its slot reached, and the slot's final hyperparameters are
    recorded as the trial's user attribute ``pbt_hparams``. A population interrupted midway
    resumes from its folder (``study_dir/populations/<first trial number>``) with the same
    trials when the same call is made again.

    Args:
      study: an ``optuna.Study`` (minimising the validation loss).
      config: the shared config.
      distributions: ``{dotted field: optuna distribution}``, continuous fields only.
      study_dir: the study folder.
      n: members per population.
      pbt: population-based training inside each population.
      trials: finished trials wanted (COMPLETE or PRUNED); populations run until there are
        at least this many.

    Returns:
      The result of each population run by this call.

    Raises:
      ConfigError: a distribution over a field that cannot vary inside a population.
    """
    import optuna

    for field in distributions:
        if field not in hp_lib.CONTINUOUS:
            raise ConfigError(
                f"--population: the search space's {field} changes the shapes or the program "
                "of the step; a population can only vary continuous hyperparameters "
                f"({', '.join(hp_lib.CONTINUOUS)}); search it without --population"
            )
    if n < 1:
        raise ConfigError(f"--population={n}: need at least 1 member")
    study_dir = pathlib.Path(study_dir)
    results = []
    TrialState = optuna.trial.TrialState
    while True:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        pending = _unfinished_population(study, study_dir)
        if pending is None and len(done) >= trials:
            return results
        if pending is None:
            asked = [study.ask(distributions) for _ in range(n)]
            folder = study_dir / "populations" / str(asked[0].number)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "trials.json").write_text(json.dumps([t.number for t in asked]))
            for i, trial in enumerate(asked):  # a RUNNING trial that a population owns
                trial.set_user_attr("population", str(folder))
                trial.set_user_attr("member", i)
        else:
            folder, asked = pending
        members = [{k: float(v) for k, v in t.params.items()} for t in asked]
        results.append(_run_population(study, config, members, asked, folder, pbt))


def _unfinished_population(study: Any, study_dir: pathlib.Path):
    """A population folder whose trials are still RUNNING (a killed search): resume it."""
    import optuna

    root = study_dir / "populations"
    if not root.is_dir():
        return None
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for folder in sorted(root.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1):
        listed = folder / "trials.json"
        if not listed.exists():
            continue
        numbers = json.loads(listed.read_text())
        if all(by_number[k].state == optuna.trial.TrialState.RUNNING for k in numbers):
            return folder, [optuna.Trial(study, by_number[k]._trial_id) for k in numbers]
    return None


def _run_population(study, config, members, asked, folder, pbt) -> PopulationResult:
    import optuna

    pruned = [False] * len(asked)

    def prune(step: int, losses: np.ndarray, active: np.ndarray) -> np.ndarray:
        cut = np.zeros(len(asked), bool)
        for i, trial in enumerate(asked):
            if not active[i]:
                continue
            trial.report(float(losses[i]), step)
            if not pbt and trial.should_prune():
                cut[i] = pruned[i] = True
        return cut

    result = train_population(config, members, folder / "run", pbt=pbt, prune=prune)
    for i, trial in enumerate(asked):
        if pbt:
            trial.set_user_attr("pbt_hparams", result.hparams[i])
        if not result.active[i]:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            value = result.validation_loss[i]
            if math.isfinite(value):
                study.tell(trial, value)
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return result
