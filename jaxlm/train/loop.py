"""The training loop as a library function: ``train_and_evaluate(config, workdir, hooks=())``.

Setup (validate the config, check the workdir, read the corpus, build the state or restore it),
then a loop that only steps and calls hooks (:mod:`jaxlm.train.hooks`), then the final
evaluation and report. One state pytree and one pure jitted step (:mod:`jaxlm.train.steps`);
batches are a pure function of (seed, step); the state (with the recurrent carry) is
checkpointed, so a run resumed from its workdir ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxlm import checkpoints, data, monitor, optim, sharding, state, transforms
from jaxlm.config import validate
from jaxlm.data import batching
from jaxlm.data.tokenizers import tokenizer_from_json
from jaxlm.errors import ConfigError, NonFiniteLoss
from jaxlm.sampling import generate
from jaxlm.train import workdir as run_folder
from jaxlm.train.evaluate import Evaluator
from jaxlm.train.hooks import (
    Checkpointer,
    Chrono,
    Evaluation,
    Hook,
    MetricsBuffer,
    Preemption,
    Progress,
)
from jaxlm.train.steps import jit_train_step

log = run_folder.log


class Preempted(Exception):
    """Raised after a SIGTERM: the state was checkpointed and the run can be resumed."""


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | Path, hooks: Sequence[Hook] = ()
) -> dict[str, Any]:
    """Trains the model a config describes, evaluates it, and checkpoints to ``workdir``.

    Re-running on the same workdir resumes from its latest checkpoint; a finished run returns
    at once. The whole config is validated before any work.

    Args:
      config: a run config (see ``configs/`` and :func:`jaxlm.config.load_config`).
      workdir: the run folder (checkpoints, config.json, tokenizer.json, metrics.jsonl,
        TensorBoard events, status.json); relative to the working directory.
      hooks: extra :class:`~jaxlm.train.hooks.Hook` s, called after each step between the
        evaluation and the checkpoint (they see the step's evaluation; a save or stop they
        request happens at this step).

    Returns:
      The final metrics: validation and test loss (nats and bits per token), perplexities,
      and the generated sample (a stopped run: ``stop_reason`` too).

    Raises:
      Preempted: a SIGTERM arrived; the step reached is checkpointed.
      JaxlmError: bad input (config, corpus, checkpoint) or a non-finite loss; nothing saved
        is lost.

    Example:
      >>> from jaxlm.config import load_config
      >>> train_and_evaluate(load_config("lstm:smoke"), "runs/smoke")  # doctest: +SKIP
    """
    validate(config)
    if config.get("init_from"):  # before any work too
        try:
            checkpoints.resolve(config.init_from)
        except checkpoints.CheckpointError as e:
            raise ConfigError(f"config.init_from: {e}") from None
    workdir = checkpoints.absolute(workdir)
    if config.model.name == "ngram":
        from jaxlm.train.ngram import train_ngram

        with Preemption(immediate=True) as preemption:  # nothing to checkpoint: die at once
            if preemption.requested:
                raise Preempted(f"SIGTERM before the n-gram run in {workdir} started")
            return train_ngram(config, workdir)
    # From the start: a SIGTERM during data preparation, model init or restore is noticed
    # before the loop, and one during the final evaluation after it (not swallowed).
    with Preemption() as preemption, contextlib.ExitStack() as cleanup:
        mgr = checkpoints.manager(workdir, config.train.keep_checkpoints)
        cleanup.callback(mgr.close)
        cleanup.callback(mgr.wait_until_finished)
        return _run(config, workdir, mgr, preemption, list(hooks), cleanup)


class _Start(NamedTuple):
    config: ml_collections.ConfigDict
    tokenizer: Any  # the checkpoint's, when resuming
    latest: int | None


def _check_workdir(config: ml_collections.ConfigDict, workdir: Path, mgr: Any) -> _Start:
    """What the workdir holds: the config to resume with (refusing an incompatible one)."""
    latest = mgr.latest_step()
    if latest is None:
        return _Start(config, None, None)
    _, meta = checkpoints.newest_readable_meta(mgr)
    config = checkpoints.resume_config(meta["config"], config, f"workdir {workdir} (step {latest})")
    return _Start(config, tokenizer_from_json(meta["tokenizer"]), latest)


def _initial_state(
    config: ml_collections.ConfigDict,
    setup: state.Setup,
    shardings: Any,
    mgr: Any,
    start: _Start,
    tokenizer: Any,
) -> state.TrainState:
    """A fresh state, one from ``init_from``'s parameters, or the newest intact checkpoint."""
    init = jax.jit(setup.init, out_shardings=shardings)
    if start.latest is None and not config.init_from:
        return init()
    if start.latest is None:
        params, mapping = checkpoints.load_pretrained(
            config.init_from, init().params, tokenizer, model_config=config.model
        )
        log(mapping.summary())
        return init(jax.device_put(params, shardings.params))
    target = sharding.abstract_on(setup.abstract, shardings)
    # A damaged newest checkpoint is reported, set aside, and the one before it used.
    restored, _, step = checkpoints.restore_latest_intact(mgr, target, quarantine=True, log=log)
    log(f"Resumed from {mgr.directory}/{step}")
    return restored


def _loop(
    progress: Progress,
    train_step: Callable,
    batch_at: Callable[[int], dict[str, jax.Array]],
    hooks: Sequence[Hook],
) -> None:
    """Steps until the last step or a stop, calling every hook after each step."""
    for hook in hooks:
        hook.on_start(progress)
    while progress.step < progress.num_steps and progress.stop is None:
        progress.state, progress.device_metrics = train_step(
            progress.state, batch_at(progress.step)
        )
        progress.step += 1
        progress.metrics = progress.metrics_step = progress.evaluation = None
        for hook in hooks:
            hook.after_step(progress)
    for hook in hooks:
        hook.on_end(progress)


def _run(
    config: ml_collections.ConfigDict,
    workdir: Path,
    mgr: Any,
    preemption: Preemption,
    hooks: list[Hook],
    cleanup: contextlib.ExitStack,
) -> dict[str, Any]:
    start = _check_workdir(config, workdir, mgr)
    config, t = start.config, start.config.train
    if start.latest is not None and start.latest >= t.num_steps:
        final = run_folder.finished(workdir)
        if final is not None:
            return run_folder.print_finished(workdir, final)
    corpus = data.load_corpus(config.data, start.tokenizer)
    run_folder.prepare(workdir, config, corpus.tokenizer)
    mesh = _mesh(config)
    streams = batching.make_streams(corpus.train, config.data.batch_size)
    batching.check_trainable(streams, config.data.seq_len, f"{corpus.name} train split")
    setup = state.build(config, corpus.tokenizer.vocab_size)
    rules = sharding.rules_from_config(config.parallel.rules)
    shardings = sharding.state_shardings(setup.abstract, mesh, rules)
    train_state = _initial_state(config, setup, shardings, mgr, start, corpus.tokenizer)
    _log_start(config, train_state, corpus, mesh)
    mon = cleanup.enter_context(contextlib.closing(monitor.Monitor(workdir, t.num_steps)))
    progress = Progress(step=int(jax.device_get(train_state.step)), num_steps=t.num_steps)
    progress.state = train_state
    evaluator = Evaluator(
        setup.model, mesh, batch_size=config.data.eval_batch_size, seq_len=config.data.seq_len
    )
    run = _Run(config, workdir, mgr, mon, corpus, evaluator, shardings)
    train_step = jit_train_step(setup, optim.learning_rate(config), shardings, mesh, t)

    def batch_at(step: int) -> dict[str, jax.Array]:
        batch = batching.train_batch(streams, step, config.data.seq_len, config.seed)
        return sharding.device_batch(batch, mesh)

    with jax.set_mesh(mesh):
        mon.status("running", progress.step)
        try:
            _loop(progress, train_step, batch_at, _hooks(run, preemption, hooks))
        except NonFiniteLoss as e:
            mon.status("failed", e.step or progress.step, error="non-finite loss")
            raise NonFiniteLoss(
                f"{e}; checkpoints up to step {mgr.latest_step()} are intact in "
                f"{mgr.directory}. Lower config.optimizer.learning_rate or enable clipping "
                "(config.optimizer.clip_norm).",
                step=e.step,
            ) from None
        return _finish(run, progress, setup.model, preemption)


def _mesh(config: ml_collections.ConfigDict) -> Any:
    """The run's mesh; the batch sizes must divide over its data axis."""
    mesh = sharding.make_mesh(config.parallel.data, config.parallel.model)
    for name in ("batch_size", "eval_batch_size"):
        if config.data[name] % mesh.shape["data"]:
            raise ConfigError(
                f"config.data.{name}={config.data[name]} must be a multiple of the "
                f"{mesh.shape['data']} data devices"
            )
    return mesh


class _Run(NamedTuple):
    """What the hooks and the final report of a run share."""

    config: ml_collections.ConfigDict
    workdir: Path
    mgr: Any
    mon: monitor.Monitor
    corpus: data.Corpus
    evaluator: Evaluator
    shardings: Any


def _hooks(run: _Run, preemption: Preemption, user: list[Hook]) -> list[Hook]:
    """The loop's hooks in order: chrono, preemption, metrics, evaluation, the user's, saving."""
    config, mon, mgr = run.config, run.mon, run.mgr
    t = config.train
    chrono = Chrono()
    buffer = MetricsBuffer(
        lambda step, values, eta: mon.write(step, values, "train", eta=eta),
        chrono,
        log_every=t.log_every,
        tokens_per_step=config.data.batch_size * config.data.seq_len,
        skip_nonfinite=config.optimizer.skip_nonfinite,
    )
    # Plateau and NT-ASGD transforms are driven by the validation loss (a no-op otherwise).
    feedback = jax.jit(
        transforms.report_validation_loss,
        out_shardings=run.shardings.opt_state,
        donate_argnums=0,
    )
    evaluation = Evaluation(
        lambda params, windows: run.evaluator(params, run.corpus.validation, windows),
        every_steps=t.eval_every,
        max_windows=t.eval_steps,
        feedback=feedback,
        write=lambda step, results: mon.write(step, results, "eval"),
        chrono=chrono,
        buffer=buffer,
    )
    meta = checkpoints.make_meta(config, run.corpus.tokenizer)
    saver = Checkpointer(
        lambda step, s: checkpoints.save(mgr, step, s, meta),
        mgr.wait_until_finished,
        every_steps=t.checkpoint_every,
        chrono=chrono,
        buffer=buffer,
    )
    return [chrono, preemption, buffer, evaluation, *user, saver]


def _finish(run: _Run, progress: Progress, model: Any, preemption: Preemption) -> dict[str, Any]:
    """The final evaluation over whole splits, the sample and the report; or the stop."""
    mon, stop, where = run.mon, progress.stop, run.mgr.directory
    if stop is not None and stop.preempted:
        mon.status("preempted", progress.step)
        raise Preempted(f"{stop.reason}; checkpoints are in {where}")
    extra: dict[str, Any] = {} if stop is None else {"stop_reason": stop.reason}
    if stop is not None and not stop.evaluate:
        final = {"step": progress.step, **extra}
        mon.status("stopped", progress.step, final=final)
        log(f"Stopped at step {progress.step}: {stop.reason}")
        return final
    mon.status("evaluating", progress.step)
    params = transforms.averaged_params(progress.state.opt_state, progress.state.params)
    val = run.evaluator(params, run.corpus.validation)
    test = run.evaluator(params, run.corpus.test)
    mon.write(progress.step, val, "validation")
    mon.write(progress.step, test, "test")
    sample = _sample(model, params, run.corpus.tokenizer, run.config)
    if preemption.requested:  # the last checkpoint is saved; a re-run evaluates again
        mon.status("preempted", progress.step)
        raise Preempted(
            f"SIGTERM during the final evaluation at step {progress.step}; checkpoint saved in "
            f"{where}"
        )
    final = run_folder.final_report(progress.step, val, test, sample=sample, **extra)
    mon.status("finished" if stop is None else "stopped", progress.step, final=final, eta=0.0)
    run_folder.print_final(final, run.corpus.tokenizer.kind)
    log(f"Sample:\n{sample}")
    return final


def _log_start(config, train_state, corpus, mesh) -> None:
    n_params = sum(x.size for x in jax.tree.leaves(train_state.params))
    tokenizer = corpus.tokenizer
    log(
        f"{config.name}: {config.model.name} with {n_params:,} parameters, {tokenizer.kind} "
        f"vocabulary {tokenizer.vocab_size}, {len(corpus.train):,} training tokens, "
        f"{jax.device_count()} device(s) in {jax.process_count()} process(es), mesh "
        f"{dict(mesh.shape)}"
    )


def _sample(model: Any, params: Any, tokenizer: Any, config: ml_collections.ConfigDict) -> str:
    t = config.train
    if not t.sample_tokens:
        return ""
    prompt = tokenizer.encode(t.sample_prompt)
    if len(prompt) == 0:
        prompt = np.zeros(1, np.int32)
    tokens = generate(
        model,
        params,
        jnp.asarray(prompt[None, :]),
        t.sample_tokens,
        jax.random.PRNGKey(config.seed),
        temperature=t.sample_temperature,
    )
    return t.sample_prompt + tokenizer.decode(np.asarray(tokens[0]))
