"""The training loop as a library function: ``train_and_evaluate(config, workdir, hooks=())``.

Setup (validate the config, check the workdir, read the corpus, build the state or restore it),
then a loop that only steps and calls hooks (:mod:`jaxlm.train.hooks`), then the final
evaluation and report. One state pytree and one pure jitted step (:mod:`jaxlm.train.steps`);
batches are a pure function of (seed, step); the state (with the recurrent carry) is
checkpointed, so a run resumed from its workdir ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from jaxlm import alerts, checkpoints, data, monitor, sharding, state, transforms
from jaxlm.config import parse_inject, validate
from jaxlm.data import augment
from jaxlm.data.tokenizers import tokenizer_from_json
from jaxlm.errors import NonFiniteLoss, Preempted, WriteError
from jaxlm.sampling import sample_text
from jaxlm.train import health, resources
from jaxlm.train import plan as plan_lib
from jaxlm.train import steps as steps_lib
from jaxlm.train import workdir as run_folder
from jaxlm.train.evaluate import Evaluator
from jaxlm.train.hooks import (
    Checkpointer,
    Chrono,
    Diagnostics,
    Evaluation,
    Hook,
    MetricsBuffer,
    Preemption,
    Progress,
)
from jaxlm.train.steps import diagnostic_names

log = run_folder.log


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | Path, hooks: Sequence[Hook] = ()
) -> dict[str, Any]:
    """Trains the model a config describes, evaluates it, and checkpoints to ``workdir``.

    Re-running on the same workdir resumes from its latest checkpoint; a finished run returns
    at once. The whole config is validated before any work. One process at a time writes to
    a workdir (an OS file lock, :mod:`jaxlm.checkpoints.lock`); ``status.json`` says how the
    run ended, "failed" with the error included.

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
      Preempted: a SIGTERM or Ctrl-C arrived; the step reached is checkpointed.
      WorkdirBusy: another process is writing to ``workdir``.
      JaxlmError: bad input (config, corpus, checkpoint), a full disk or a non-finite loss;
        nothing saved is lost.
      KeyboardInterrupt: a second Ctrl-C (no checkpoint of the step reached).

    Example:
      >>> from jaxlm.config import load_config
      >>> train_and_evaluate(load_config("lstm:smoke"), "runs/smoke")  # doctest: +SKIP
    """
    if config.model.name == "ngram":  # counted, not trained: no JAX, no hooks
        from jaxlm.train.ngram import run_ngram

        return run_ngram(config, workdir)
    validate(config)
    run_folder.check_init_from(config)  # before any work too
    workdir = checkpoints.absolute(workdir)
    with run_folder.sole_writer(workdir):
        crashed = run_folder.report_previous(workdir)
        # From the start: a signal during data preparation, model init or restore is noticed
        # before the loop, and one during the final evaluation after it (not swallowed).
        with (
            Preemption() as preemption,
            contextlib.closing(
                monitor.Monitor(
                    workdir, config.train.num_steps, heartbeat=monitor.HEARTBEAT_SECONDS
                )
            ) as mon,
            _ending(mon) as ending,
            contextlib.ExitStack() as cleanup,
        ):
            mgr = checkpoints.manager(workdir, config.train.keep_checkpoints)
            cleanup.push(_closer(mgr))
            return _run(config, workdir, mgr, mon, preemption, list(hooks), ending, crashed)


class _Ending:
    """How far the run got, for the status written if it ends by an exception."""

    progress: Progress | None = None


@contextlib.contextmanager
def _ending(mon: monitor.Monitor) -> Iterator[_Ending]:
    """Records in ``status.json`` how a run that ends by an exception ended: "interrupted" (a
    second Ctrl-C) or "failed" with the error; a preemption records itself. A run refused
    before it started (an incompatible workdir) leaves the status of the run before as it is."""
    ending = _Ending()
    try:
        yield ending
    except Preempted:
        raise
    except BaseException as e:
        if not mon.written:
            raise
        step = ending.progress.step if ending.progress is not None else mon.step
        step = getattr(e, "step", None) or step  # a non-finite loss: the step it appeared at
        if isinstance(e, KeyboardInterrupt):
            state, error = (
                "interrupted",
                "Ctrl-C twice: stopped at once, no checkpoint of this step",
            )
        else:
            state, error = "failed", f"{type(e).__name__}: {e}"
        with contextlib.suppress(Exception):  # a full disk: the error itself says so
            if state == "failed":
                mon.event(step, "failure", error.splitlines()[0])
            mon.status(state, step, error=error)
        raise


def _closer(mgr: Any) -> Callable[..., bool]:
    """Closes the checkpoint manager at the end of a run: after its background saves when the
    run ended well or by an error (a good save in flight is kept), at once on KeyboardInterrupt.
    A save that fails while another error is on its way does not hide that error."""

    def close(exc_type: type | None, exc: BaseException | None, tb: Any) -> bool:
        del tb
        if exc_type is None:
            mgr.wait_until_finished()
            mgr.close()
        elif not issubclass(exc_type, KeyboardInterrupt):
            with contextlib.suppress(Exception):
                mgr.wait_until_finished()
            with contextlib.suppress(Exception):
                mgr.close()
        del exc
        return False

    return close


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
    """Steps until the last step or a stop, calling every hook after each step; a skipped
    step (``progress.skipped``) advances the state's step without an update."""
    for hook in hooks:
        hook.on_start(progress)
    while progress.step < progress.num_steps and progress.stop is None:
        if progress.step + 1 in progress.skipped:
            progress.state = _advance(progress.state, batch_at(progress.step))
            progress.device_metrics = None
        else:
            progress.state, progress.device_metrics = train_step(
                progress.state, batch_at(progress.step)
            )
        progress.step += 1
        progress.metrics = progress.metrics_step = progress.evaluation = None
        for hook in hooks:
            hook.after_step(progress)
    for hook in hooks:
        hook.on_end(progress)


def _advance(train_state: state.TrainState, batch: dict[str, jax.Array]) -> state.TrainState:
    """A skipped step: the state's step moves on, nothing else does (the carry is reset when
    the skipped window starts a new epoch, as the step would have done)."""
    step = jax.device_put(train_state.step + 1, train_state.step.sharding)
    reset = batch["reset"]
    carry = jax.tree.map(
        lambda c: jax.device_put(
            jnp.where(steps_lib._rows(reset, c), jnp.zeros_like(c), c), c.sharding
        ),
        train_state.carry,
    )
    return train_state.replace(step=step, carry=carry)


def _run(
    config: ml_collections.ConfigDict,
    workdir: Path,
    mgr: Any,
    mon: monitor.Monitor,
    preemption: Preemption,
    hooks: list[Hook],
    ending: _Ending,
    crashed: str | None = None,
) -> dict[str, Any]:
    start = _check_workdir(config, workdir, mgr)
    config, t = start.config, start.config.train
    mon.alert = alerts.from_config(config.get("monitor"), workdir, log)
    if start.latest is not None and start.latest >= t.num_steps:
        final = run_folder.finished(workdir)
        if final is not None:
            return run_folder.print_finished(workdir, final)
    mon.total_steps = t.num_steps
    mon.status("starting", start.latest or 0)
    corpus = data.load_corpus(config.data, start.tokenizer, seed=config.seed)
    run_folder.prepare(workdir, config, corpus.tokenizer)
    plan = plan_lib.make_plan(config, corpus.tokenizer.vocab_size)  # the mesh fits the batch
    mesh, setup, shardings = plan.mesh, plan.setup, plan.shardings
    extra = augment.margin(config.data)  # 0 unless the step augments its windows
    windows = data.train_data(config, corpus, length=config.data.seq_len + extra)
    log(f"Training windows: {_describe(windows)}")
    mixture = _mixture_shares(windows, corpus, t.num_steps)
    if mixture:
        log(_mixture_line(mixture, windows, corpus, t.num_steps))
    train_state = _initial_state(config, setup, shardings, mgr, start, corpus.tokenizer)
    _log_start(config, train_state, corpus, mesh)
    progress = Progress(step=int(jax.device_get(train_state.step)), num_steps=t.num_steps)
    progress.state = train_state
    progress.skipped = health.read_skips(workdir)
    ending.progress = progress
    mon.keep_metrics_until(progress.step, log=log)  # rows a dead run wrote past its checkpoint
    if progress.skipped:
        log(f"Skipping the windows of steps {sorted(progress.skipped)} ({health.SKIPS_FILE})")
    if crashed:
        mon.event(progress.step, "crash", crashed)
    if mixture and progress.step == 0:  # once, at a fresh start (a resumed run has the row)
        mon.write(0, mixture, "mixture")
    evaluator = Evaluator(
        setup.model, mesh, batch_size=config.data.eval_batch_size, seq_len=config.data.seq_len
    )
    run = _Run(config, workdir, mgr, mon, corpus, evaluator, shardings, mixture)

    def batch_at(step: int) -> dict[str, jax.Array]:
        return sharding.device_batch(windows.batch(step), mesh)

    with jax.set_mesh(mesh):
        compiled = plan_lib.compile_step(plan, config)  # once, ahead of the first step
        rep = plan_lib.report(config, plan, compiled)
        for line in plan_lib.report_lines(rep):
            log(line)
        run = run._replace(meter=_meter(config, rep), names=diagnostic_names(setup.abstract.params))
        vocab = corpus.tokenizer.vocab_size
        tables = augment.tables(config.data, corpus.train, corpus.tokenizer, vocab)
        train_step = plan_lib.run_step(plan, config, compiled, tables)
        mon.status("running", progress.step)
        rollbacks = 0
        while True:
            loop_hooks = _hooks(run, preemption, hooks, setup.model)
            try:
                _loop(progress, train_step, batch_at, loop_hooks)
                break
            except health.Rollback as r:
                rollbacks += 1
                _rollback(run, progress, r, rollbacks, setup, corpus.tokenizer)
            except NonFiniteLoss as e:
                raise NonFiniteLoss(_nonfinite_message(e, mgr), step=e.step) from None
            except WriteError:
                loop_hooks[-1].raise_failed_save()  # a full disk: the failed save says more
                raise
            finally:
                for hook in loop_hooks:
                    if isinstance(hook, health.Watchdog):
                        hook.close()
        return _finish(run, progress, setup.model, preemption)


def _rollback(
    run: _Run,
    progress: Progress,
    request: health.Rollback,
    count: int,
    setup: state.Setup,
    tokenizer: Any,
) -> None:
    """Restores the last checkpoint (or the initial state) and records the flagged step as
    skipped, durably, before anything else (:mod:`jaxlm.train.health`)."""
    limit = run.config.monitor.max_rollbacks
    if count > limit:
        raise health.TooManyRollbacks(
            f"{request}; this is rollback {count} of this run, over config.monitor.max_rollbacks"
            f"={limit}: lower config.optimizer.learning_rate or raise the spike factor"
        )
    run.mgr.wait_until_finished()
    latest = run.mgr.latest_step()
    if latest is not None and latest >= request.step:  # the buffer checks before every save
        raise AssertionError(f"checkpoint {latest} was saved past a flagged step {request.step}")
    progress.skipped = health.record_skip(run.workdir, request.step, str(request))
    start = _Start(run.config, tokenizer, latest)
    progress.state = _initial_state(run.config, setup, run.shardings, run.mgr, start, tokenizer)
    progress.step = int(jax.device_get(progress.state.step))
    progress.stop, progress.save_requested = None, False
    run.mon.keep_metrics_until(progress.step, log=log)
    run.mon.event(
        request.step,
        request.event,
        f"{request.message}: rolled back to step {progress.step}, skipping step "
        f"{request.step}'s windows",
        action="rollback",
        restored=progress.step,
        skipped=sorted(progress.skipped),
    )


def _nonfinite_message(e: NonFiniteLoss, mgr: Any) -> str:
    latest = mgr.latest_step()
    kept = (
        f"checkpoints up to step {latest} are intact in {mgr.directory}"
        if latest is not None
        else "no checkpoint was saved before it"
    )
    return (
        f"{e}; {kept}. Lower config.optimizer.learning_rate or enable clipping "
        "(config.optimizer.clip_norm)."
    )


class _Run(NamedTuple):
    """What the hooks and the final report of a run share."""

    config: ml_collections.ConfigDict
    workdir: Path
    mgr: Any
    mon: monitor.Monitor
    corpus: data.Corpus
    evaluator: Evaluator
    shardings: Any
    mixture: dict[str, float]  # each source's probability and realised share; {} for one corpus
    meter: Callable[[float | None], dict[str, float]] | None = None  # memory and MFU per line
    names: Sequence[str] = ()  # the step's diagnostics by name (steps.diagnostic_names)


def _meter(config: ml_collections.ConfigDict, rep: dict[str, Any]) -> Callable:
    """The resource metrics of each train line: memory, and for the Transformer the MFU of the
    compiled step's FLOPs (XLA counts a recurrent model's scanned loop once, not per time
    step, so its FLOPs would understate it)."""
    if config.model.name != "transformer":
        return resources.meter(None, None)
    peak, whence = resources.device_peak(
        config.precision, config.get("monitor", {}).get("peak_flops", 0.0)
    )
    if peak is None:
        log(f"Model FLOPs utilisation: not reported, {whence}")
    else:
        log(
            f"Model FLOPs utilisation: {rep['flops'] / 1e9:.3f} GFLOP per step per device "
            f"against {peak / 1e12:.3g} TFLOP/s per device ({whence})"
        )
    return resources.meter(rep["flops"], peak)


def _hooks(run: _Run, preemption: Preemption, user: list[Hook], model: Any) -> list[Hook]:
    """The loop's hooks in order: chrono, the stall watchdog, preemption, metrics (with the
    health checks), evaluation, diagnostics, the gate check, the user's, saving."""
    config, mon, mgr = run.config, run.mon, run.mgr
    t, m = config.train, config.monitor
    chrono = Chrono()
    checks = health.StepChecks(
        mon.event,
        spike_policy=m.spike_policy,
        grad_policy=m.grad_policy,
        spike_factor=m.spike_factor,
        grad_factor=m.grad_factor,
    )
    buffer = MetricsBuffer(
        lambda step, values, eta: mon.write(step, values, "train", eta=eta),
        chrono,
        log_every=t.log_every,
        tokens_per_step=config.data.batch_size * config.data.seq_len,
        skip_nonfinite=config.optimizer.skip_nonfinite or m.nonfinite == "warn",
        resources=run.meter,
        check=checks,
    )
    # Plateau and NT-ASGD transforms are driven by the validation loss (a no-op otherwise).
    feedback = jax.jit(
        transforms.report_validation_loss,
        out_shardings=run.shardings.opt_state,
        donate_argnums=0,
    )
    evaluation = Evaluation(
        lambda params, windows: _evaluate(run, params, "validation", windows),
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
        check=mgr.check_for_errors,
        failed=lambda step, error: checkpoints.save_failed(mgr, step, error),
        timed=lambda step, seconds: mon.write(step, {"seconds": seconds}, "checkpoint", echo=False),
    )
    diagnostics = Diagnostics(
        lambda step, values: mon.write(step, values, "diagnostics", echo=False, status=False),
        run.names,
        every_steps=m.diagnostics_every,
        histogram=mon.histograms,
        histograms_every=m.histograms_every,
        chrono=chrono,
    )
    first: list[Hook] = [chrono]
    if m.stall_seconds:
        first.append(_watchdog(mon, chrono, m.stall_seconds))
    faults = parse_inject(m.inject)
    if any(kind == "sleep" for kind, _, _ in faults):
        first.append(health.Faults(faults))
    extra: list[Hook] = []
    if m.gate_every:
        extra.append(_gate_check(run, model, chrono))
    return [*first, preemption, buffer, evaluation, diagnostics, *extra, *user, saver]


def _timed(evaluate: Callable[..., dict[str, float]], *args: Any) -> dict[str, float]:
    """``evaluate(*args)``'s results with its wall time as ``seconds``."""
    t0 = time.perf_counter()
    results = evaluate(*args)
    return {**results, "seconds": time.perf_counter() - t0}


def _watchdog(mon: monitor.Monitor, chrono: Chrono, seconds: float) -> health.Watchdog:
    """The stall watchdog: ``status.json`` says "stalled" and a ``stall`` event fires."""

    def stalled(step: int, idle: float) -> None:
        mon.event(step, "stall", f"no step finished for {idle:.0f} s (limit {seconds:g} s)")
        mon.status("stalled", step, stalled=True)

    def resumed(step: int, stalled_for: float) -> None:
        mon.event(step, "stall_over", f"steps finish again after {stalled_for:.0f} s")
        mon.status("running", step, stalled=False)

    return health.Watchdog(seconds, chrono, stalled, resumed)


def _gate_check(run: _Run, model: Any, chrono: Chrono) -> health.GateSaturation:
    """Saturated LSTM gates on the validation split's first windows, every gate_every steps."""
    m, d = run.config.monitor, run.config.data
    tokens = health.held_tokens(run.corpus.split("validation"), d.eval_batch_size, d.seq_len)
    held = sharding.device_batch({"inputs": tokens}, run.evaluator.mesh)["inputs"]
    eps = m.gate_saturation
    measure = jax.jit(lambda params, tokens: health.gate_saturation(model, params, tokens, eps))
    return health.GateSaturation(
        lambda params: measure(params, held),
        every_steps=m.gate_every,
        warn_fraction=m.gate_warn_fraction,
        write=lambda step, shares: run.mon.write(step, shares, "gates", echo=False),
        event=run.mon.event,
        chrono=chrono,
    )


def _finish(run: _Run, progress: Progress, model: Any, preemption: Preemption) -> dict[str, Any]:
    """The final evaluation over whole splits, the sample and the report; or the stop."""
    mon, stop, where = run.mon, progress.stop, run.mgr.directory
    if stop is not None and stop.preempted:
        mon.status(_signal_state(preemption), progress.step, stop_reason=stop.reason)
        raise Preempted(f"{stop.reason}; checkpoints are in {where}", preemption.signum)
    extra: dict[str, Any] = {} if stop is None else {"stop_reason": stop.reason}
    if stop is not None and not stop.evaluate:
        final = {"step": progress.step, **extra}
        mon.status("stopped", progress.step, final=final)
        log(f"Stopped at step {progress.step}: {stop.reason}")
        run_folder.write_report(run.workdir, run.config)
        return final
    mon.status("evaluating", progress.step)
    params = transforms.averaged_params(progress.state.opt_state, progress.state.params)
    val = _timed(_evaluate, run, params, "validation")
    test = _timed(_evaluate, run, params, "test")
    mon.write(progress.step, val, "validation")
    mon.write(progress.step, test, "test")
    sample = _sample(model, params, run.corpus.tokenizer, run.config)
    preemption.agree()  # several processes: a signal any of them received
    if preemption.requested:  # the last checkpoint is saved; a re-run evaluates again
        reason = f"{preemption.name} during the final evaluation at step {progress.step}"
        mon.status(_signal_state(preemption), progress.step, stop_reason=reason)
        raise Preempted(f"{reason}; checkpoint saved in {where}", preemption.signum)
    extra.update(_per_source(val, test, run.mixture))
    final = run_folder.final_report(progress.step, val, test, sample=sample, **extra)
    run_folder.save_sample(run.workdir, sample)
    mon.status("finished" if stop is None else "stopped", progress.step, final=final, eta=0.0)
    run_folder.print_final(final, run.corpus.tokenizer.unit)
    log(f"Sample:\n{sample}")
    run_folder.write_report(run.workdir, run.config)
    return final


def _evaluate(run: _Run, params: Any, split: str, max_windows: int = 0) -> dict[str, float]:
    """The target corpus's loss over a split (the run's), with a mixture's loss per source
    as ``loss/<source>`` (and ``bits/<source>``)."""
    corpus = run.corpus
    results = run.evaluator(
        params, corpus.split(split), max_windows, counts=corpus.counts.get(split)
    )
    for source in corpus.sources:
        if source.target:
            own = results
        else:
            own = run.evaluator(
                params, source.split(split), max_windows, counts=source.counts.get(split)
            )
        results[f"loss/{source.name}"], results[f"bits/{source.name}"] = own["loss"], own["bits"]
    return results


def _per_source(val: dict, test: dict, mixture: dict[str, float]) -> dict[str, float]:
    """The final report's per-source figures: ``validation_loss/<source>``, ``test_loss/...``
    and the mixture's probabilities and realised shares."""
    out = {}
    for split, results in (("validation", val), ("test", test)):
        out.update({f"{split}_{k}": v for k, v in results.items() if k.startswith("loss/")})
    out.update({f"mixture_{k}": v for k, v in mixture.items()})
    return out


def _mixture_shares(windows: Any, corpus: data.Corpus, num_steps: int) -> dict[str, float]:
    """``probability/<source>`` and ``realised/<source>`` (its share of the
    windows of the run's steps, drawn as training will draw them); {} for one corpus."""
    if not corpus.sources:
        return {}
    realised = windows.realised(num_steps)
    out = {f"probability/{s.name}": s.prob for s in corpus.sources}
    out.update(
        {f"realised/{s.name}": float(r) for s, r in zip(corpus.sources, realised, strict=True)}
    )
    return out


def _mixture_line(mixture: dict[str, float], windows: Any, corpus: data.Corpus, steps: int) -> str:
    how = "windows drawn by weight" if windows.mode == "random" else "streams shared by weight"
    parts = [
        f"{s.name} {s.prob:.3f} (realised {mixture[f'realised/{s.name}']:.3f}, "
        f"{len(s.train):,} training tokens)"
        for s in corpus.sources
    ]
    target = next(s.name for s in corpus.sources if s.target)
    return (
        f"Mixture of {len(parts)} corpora, {how} over {steps:,} steps x "
        f"{windows.batch_size} windows: {', '.join(parts)}; target (the run's validation "
        f"loss): {target}"
    )


def _signal_state(preemption: Preemption) -> str:
    return "interrupted" if preemption.signum == signal.SIGINT else "preempted"


def _log_start(config, train_state, corpus, mesh) -> None:
    n_params = sum(x.size for x in jax.tree.leaves(train_state.params))
    tokenizer = corpus.tokenizer
    n_train = sum(len(s.train) for s in corpus.sources) or len(corpus.train)
    sources = f" in {len(corpus.sources)} corpora" if corpus.sources else ""
    log(
        f"{config.name}: {config.model.name} with {n_params:,} parameters, {tokenizer.kind} "
        f"vocabulary {tokenizer.vocab_size:,}, {n_train:,} training tokens{sources}, "
        f"{jax.device_count()} device(s) in {jax.process_count()} process(es), mesh "
        f"{dict(mesh.shape)}"
    )
    spec = augment.from_config(config.data)
    if spec is not None:
        rates = ", ".join(f"{op} {getattr(spec, op):g}" for op in spec.ops)
        a = config.data.augment
        words = (
            f"; words drawn from the training split's {a.word_table:,} most frequent of at most "
            f"{a.word_tokens} tokens"
            if spec.draws and spec.unit == "word"
            else ""
        )
        log(
            f"Augmenting training windows on the device: {rates} (unit {spec.unit}, source "
            f"{a.source}), {spec.extra} raw tokens of margin{words}"
        )


def _describe(windows: data.batching.TrainData) -> str:
    if windows.mode == "random":
        return "random offsets over the whole training stream, drawn from (seed, step)"
    return "contiguous streams (the state carried from window to window)"


def _sample(model: Any, params: Any, tokenizer: Any, config: ml_collections.ConfigDict) -> str:
    t = config.train
    return sample_text(
        model,
        params,
        tokenizer,
        t.sample_prompt,
        t.sample_tokens,
        config.seed,
        temperature=t.sample_temperature,
    )
