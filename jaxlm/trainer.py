"""The training loop as a library function: ``train_and_evaluate(config, workdir)``.

One state pytree, one pure jitted step with explicit shardings and buffer donation; batches are
a pure function of (seed, step); dropout keys are ``fold_in(rng, step)``; the state (with the
recurrent carry) is checkpointed, so a run resumed from its workdir ends exactly where an
uninterrupted run ends.
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import PartitionSpec

from jaxlm import (
    checkpoint,
    data,
    finetune,
    losses,
    monitor,
    optim,
    precision,
    runtime,
    sharding,
    transforms,
)
from jaxlm.config import validate
from jaxlm.data import batching
from jaxlm.data.tokenizers import save_tokenizer, tokenizer_from_json
from jaxlm.models import get_model
from jaxlm.precision import Policy
from jaxlm.sampling import generate
from jaxlm.state import TrainState

LN2 = math.log(2.0)


class Preempted(Exception):
    """Raised after a SIGTERM: the state was checkpointed and the run can be resumed."""


# --------------------------------------------------------------------------------------------
# The pure functions: init, train step, eval step.


def make_init_fn(model, tx: optax.GradientTransformation, batch_size: int, seq_len: int, seed: int):
    """A function from nothing to a fresh TrainState (to ``eval_shape`` or ``jit``)."""

    def init() -> TrainState:
        init_key, base_key = jax.random.split(jax.random.PRNGKey(seed))
        tokens = jnp.zeros((batch_size, seq_len), jnp.int32)
        carry = model.initial_carry(batch_size)
        params = model.init(init_key, tokens, carry)["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=base_key,
            carry=carry,
        )

    return init


def make_train_step(
    model,
    tx,
    schedule,
    *,
    carry_state: bool = True,
    label_smoothing: float = 0.0,
    loss_scaling: bool = False,
):
    """``train_step(state, batch) -> (state, metrics)``, pure, for ``jax.jit``.

    Args:
      model: a jaxlm model.
      tx: the optimizer.
      schedule: the learning-rate schedule (reported in the metrics).
      carry_state: carry the recurrent state from window to window (else start each at zero).
      label_smoothing: see :func:`jaxlm.losses.cross_entropy`.
      loss_scaling: float16: differentiate the loss times the optimizer state's dynamic loss
        scale (``tx`` must be wrapped by :func:`jaxlm.precision.wrap_optimizer`).

    Returns:
      The step function. ``batch`` holds ``inputs``/``targets`` ``[B, T]`` and ``reset``.
    """

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        reset = jnp.logical_or(batch["reset"], not carry_state)
        carry = jax.tree.map(lambda c: jnp.where(reset, jnp.zeros_like(c), c), state.carry)
        dropout_key = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            logits, new_carry, aux = model.apply(
                {"params": params},
                batch["inputs"],
                carry,
                deterministic=False,
                rngs={"dropout": dropout_key},
            )
            total, count = losses.cross_entropy(
                logits, batch["targets"], label_smoothing=label_smoothing
            )
            loss = total / count + aux.get("reg_loss", 0.0)
            if loss_scaling:
                loss = loss * precision.loss_scale(state.opt_state)
            if label_smoothing:  # report the plain log-likelihood, not the smoothed loss
                total, count = losses.cross_entropy(logits, batch["targets"])
            return loss, (new_carry, total / count, aux)

        (_, (new_carry, nll, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            carry=jax.lax.stop_gradient(new_carry),
        )
        metrics = {
            "loss": nll,
            "grad_norm": optax.tree.norm(grads) / precision.loss_scale(state.opt_state)
            if loss_scaling
            else optax.tree.norm(grads),
            "lr": jnp.asarray(schedule(state.step), jnp.float32),
            **aux,  # e.g. reg_loss (AR/TAR) of recurrent models
            **precision.loss_scale_metrics(opt_state),  # float16: scale and skipped steps
        }
        return new_state, metrics

    return train_step


def make_eval_step(model):
    """``eval_step(params, carry, sums, batch) -> (carry, sums)`` for ``jax.jit``.

    ``sums`` is ``(loss_sum, count)`` over the windows so far: the running sums stay inside the
    compiled step, so no eager arithmetic mixes arrays of different processes.
    """

    def eval_step(params, carry, sums, batch):
        logits, carry, _ = model.apply({"params": params}, batch["inputs"], carry)
        total, count = losses.cross_entropy(logits, batch["targets"], mask=batch["mask"])
        return carry, (sums[0] + total, sums[1] + count)

    return eval_step


# --------------------------------------------------------------------------------------------
# Shardings and device placement.


def state_shardings(abstract: TrainState, mesh, rules) -> TrainState:
    """Parameters and optimizer state by path rules; the carry split over "data"."""
    specs = [(pattern, PartitionSpec(*spec)) for pattern, spec in rules]
    return TrainState(
        step=sharding.replicated(mesh),
        params=sharding.rule_shardings(abstract.params, mesh, specs),
        opt_state=sharding.rule_shardings(abstract.opt_state, mesh, specs),
        rng=sharding.replicated(mesh),
        carry=jax.tree.map(lambda _: sharding.batch_sharding(mesh), abstract.carry),
    )


device_batch = sharding.device_batch


def _check_batch(name: str, size: int, mesh) -> None:
    n = mesh.shape["data"]
    if size % n:
        raise ValueError(f"config.data.{name}={size} must be a multiple of the {n} data devices")


# --------------------------------------------------------------------------------------------
# Evaluation.


def evaluate(
    model, params, tokens: np.ndarray, mesh, *, batch_size: int, seq_len: int, max_windows: int = 0
) -> dict[str, float]:
    """Loss over a whole split (or its first ``max_windows`` windows), summed before dividing.

    Args:
      model: a jaxlm model.
      params: its parameters.
      tokens: the split's token ids.
      mesh: the device mesh.
      batch_size: number of parallel streams.
      seq_len: window length.
      max_windows: stop after this many windows (0: the whole split).

    Returns:
      ``loss`` (nats per token), ``bits`` (bits per token), ``perplexity`` and ``tokens``.
    """
    streams = batching.make_streams(tokens, batch_size, pad_to=seq_len)
    step = _eval_step(model, mesh)
    carry = _initial_carry(model, batch_size, mesh)()
    sums = jax.device_put((np.float32(0), np.float32(0)), sharding.replicated(mesh))
    for i, batch in enumerate(batching.eval_batches(streams, seq_len)):
        if max_windows and i >= max_windows:
            break
        batch.pop("reset")
        carry, sums = _serialise_on_cpu_hosts(step(params, carry, sums, device_batch(batch, mesh)))
    total, count = float(sums[0]), float(sums[1])
    if count <= 0:  # a loss of 0 (perplexity 1) over nothing would look like a perfect model
        raise ValueError(
            f"evaluated no tokens ({len(tokens)} tokens in the split, max_windows={max_windows}, "
            f"batch_size={batch_size}, seq_len={seq_len})"
        )
    loss = total / count
    return {
        "loss": loss,
        "bits": loss / LN2,
        "perplexity": math.exp(min(loss, 700)),
        "tokens": count,
    }


def _serialise_on_cpu_hosts(outputs):
    """Waits for a step on multi-process CPU runs, else returns at once.

    The CPU backend's gloo collectives deadlock when two computations with collectives run at
    once across processes (seen on 2 processes x 2 devices); GPU and TPU order them on streams.
    """
    if jax.process_count() > 1 and jax.default_backend() == "cpu":
        jax.block_until_ready(outputs)
    return outputs


@functools.lru_cache(maxsize=8)
def _initial_carry(model, batch_size: int, mesh):
    # Made by a jitted function, not device_put of a local array (that would be a cross-host
    # transfer on several processes); cached, so each evaluation does not compile it again.
    return jax.jit(
        functools.partial(model.initial_carry, batch_size),
        out_shardings=sharding.batch_sharding(mesh),
    )


@functools.lru_cache(maxsize=8)
def _eval_step(model, mesh):
    return jax.jit(
        make_eval_step(model),
        out_shardings=(sharding.batch_sharding(mesh), sharding.replicated(mesh)),
        compiler_options=runtime.compiler_options(model),
    )


# --------------------------------------------------------------------------------------------
# The loop.


def _log(*args) -> None:
    """Prints on process 0 only (every process runs the loop)."""
    if jax.process_index() == 0:
        print(*args, flush=True)


def _newest_readable_meta(mgr) -> dict[str, Any]:
    """The config and tokenizer of the newest checkpoint whose metadata reads back."""
    errors = []
    for step in sorted(mgr.all_steps(), reverse=True):
        try:
            return checkpoint.read_meta(mgr, step)
        except Exception as e:  # a damaged checkpoint; restore_latest_intact reports it
            errors.append(f"{mgr.directory / str(step)}: {e}")
    raise RuntimeError("no checkpoint has readable metadata:\n  " + "\n  ".join(errors))


def _finished_summary(workdir: Path, step: int) -> dict[str, Any]:
    status = monitor.read_status(workdir) or {}
    _log(f"Run in {workdir} already finished at step {step}; nothing to do.")
    final = status.get("final", {})
    for key, value in final.items():
        _log(f"  {key}: {value}")
    return final


class _SigtermFlag:
    """Turns SIGTERM into a flag the run checks, so it can checkpoint before exiting.

    Installed for the whole of :func:`train_and_evaluate`. A handler installed before it that
    has a ``raised`` attribute (the command line's, set up before the slow imports) passes on a
    SIGTERM it already received. ``default=True`` installs the default action instead (a run
    with nothing to checkpoint), after taking over such an earlier flag.
    """

    def __init__(self, *, default: bool = False):
        self.raised = False
        self._default = default
        self._old = None

    def __enter__(self):
        handler = signal.SIG_DFL if self._default else self
        try:
            self._old = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread
            self._old = None
        if getattr(self._old, "raised", False):
            self.raised = True
        return self

    def __call__(self, signum, frame):
        del signum, frame
        self.raised = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains the model a config describes, evaluates it, and checkpoints to ``workdir``.

    Re-running on the same workdir resumes from its latest checkpoint; a finished run returns
    at once.

    Args:
      config: a run config (see ``configs/`` and :func:`jaxlm.config.base_config`).
      workdir: the run folder (checkpoints, config.json, tokenizer.json, metrics.jsonl,
        TensorBoard events, status.json).

    Returns:
      The final metrics: validation and test loss (nats and bits per token), perplexities,
      and the generated sample.

    Example:
      >>> import importlib.util
      >>> spec = importlib.util.spec_from_file_location("c", "configs/lstm.py")
      >>> cfg = importlib.util.module_from_spec(spec); spec.loader.exec_module(cfg)
      >>> train_and_evaluate(cfg.get_config("smoke"), "/tmp/smoke")  # doctest: +SKIP
    """
    if config.model.name == "ngram":
        from jaxlm.models.ngram import run as ngram_run

        with _SigtermFlag(default=True) as sigterm:  # no checkpoints: SIGTERM ends it at once
            if sigterm.raised:
                raise Preempted(f"SIGTERM before the n-gram run in {workdir} started")
            return ngram_run.train_and_evaluate(config, workdir)
    # From the start: a SIGTERM during data preparation, model init or restore is noticed
    # before the loop, and one during the final evaluation after it (not swallowed).
    with _SigtermFlag() as sigterm:
        validate(config)
        workdir = Path(workdir)
        mgr = checkpoint.manager(workdir, config.train.keep_checkpoints)
        # `cleanup` closes the monitor however the run ends (finished, preempted or failed), so
        # the TensorBoard events written so far reach the disk.
        try:
            with contextlib.ExitStack() as cleanup:
                return _run(config, workdir, mgr, sigterm, cleanup)
        finally:
            mgr.wait_until_finished()
            mgr.close()


def _run(
    config, workdir: Path, mgr, sigterm: _SigtermFlag, cleanup: contextlib.ExitStack
) -> dict[str, Any]:
    num_steps = config.train.num_steps
    latest = mgr.latest_step()
    tokenizer = None
    if latest is not None:
        meta = _newest_readable_meta(mgr)
        diffs = checkpoint.incompatible_fields(meta["config"], config)
        if diffs:
            raise ValueError(
                f"workdir {workdir} holds a checkpoint (step {latest}) from an incompatible "
                "config:\n  "
                + "\n  ".join(diffs)
                + "\nUse another --workdir, or run with the saved values to resume it."
            )
        if latest >= num_steps and (monitor.read_status(workdir) or {}).get("state") == "finished":
            return _finished_summary(workdir, latest)
        tokenizer = tokenizer_from_json(meta["tokenizer"])

    corpus = data.load_corpus(config.data, tokenizer)
    tokenizer = corpus.tokenizer
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json(indent=1))
        save_tokenizer(tokenizer, workdir / "tokenizer.json")

    mesh = sharding.make_mesh(config.parallel.data, config.parallel.model)
    batch_size, seq_len = config.data.batch_size, config.data.seq_len
    _check_batch("batch_size", batch_size, mesh)
    _check_batch("eval_batch_size", config.data.eval_batch_size, mesh)
    train_streams = batching.make_streams(corpus.train, batch_size)
    batching.check_trainable(train_streams, seq_len, f"{corpus.name} train split")

    model_config = finetune.prepare_config(config).model  # presets may raise dropout
    policy = Policy.from_string(config.precision)
    model = get_model(model_config, tokenizer.vocab_size, policy)
    tx = precision.wrap_optimizer(optim.build_optimizer(config), policy)  # float16 only
    accumulate = max(int(config.optimizer.accumulate_steps), 1)
    update_schedule = optim.build_schedule(config.optimizer, -(-num_steps // accumulate))

    def schedule(step):  # the rate in force at a micro-batch step
        return update_schedule(step // accumulate)

    init = make_init_fn(model, tx, batch_size, seq_len, config.seed)
    abstract = jax.eval_shape(init)
    shardings = state_shardings(abstract, mesh, config.parallel.rules)

    if latest is None:
        state = jax.jit(init, out_shardings=shardings)()
        if config.init_from:
            params, mapping = finetune.load_pretrained(
                config.init_from, state.params, tokenizer, model_config=config.model
            )
            params = jax.device_put(params, shardings.params)
            opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
            state = state.replace(params=params, opt_state=opt_state)
            _log(mapping.summary())
    else:
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )
        # A damaged newest checkpoint is reported, set aside, and the one before it used.
        state, _, restored = checkpoint.restore_latest_intact(
            mgr, target, quarantine=True, log=_log
        )
        _log(f"Resumed from {checkpoint.checkpoint_dir(workdir)}/{restored}")

    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    _log(
        f"{config.name}: {config.model.name} with {n_params:,} parameters, {tokenizer.kind} "
        f"vocabulary {tokenizer.vocab_size}, {len(corpus.train):,} training tokens, "
        f"{jax.device_count()} device(s) in {jax.process_count()} process(es), mesh "
        f"{dict(mesh.shape)}"
    )
    train_step = jax.jit(
        make_train_step(
            model,
            tx,
            schedule,
            carry_state=config.train.carry_state,
            label_smoothing=config.train.label_smoothing,
            loss_scaling=policy.needs_loss_scaling,
        ),
        in_shardings=(shardings, None),
        out_shardings=(shardings, sharding.replicated(mesh)),
        donate_argnums=0,
        compiler_options=runtime.compiler_options(model),
    )
    mon = cleanup.enter_context(contextlib.closing(monitor.Monitor(workdir, num_steps)))
    eval_kw = dict(batch_size=config.data.eval_batch_size, seq_len=seq_len)
    t = config.train

    # Plateau and NT-ASGD transforms are driven by the validation loss (a no-op otherwise).
    report_validation = jax.jit(
        transforms.report_validation_loss, out_shardings=shardings.opt_state, donate_argnums=0
    )

    def eval_params():  # NT-ASGD evaluates its running average once it has started
        return transforms.averaged_params(state.opt_state, state.params)

    def run_eval(step: int, split: str, max_windows: int) -> dict[str, float]:
        result = evaluate(
            model, eval_params(), corpus.split(split), mesh, max_windows=max_windows, **eval_kw
        )
        mon.write(step, result, split)
        return result

    step = int(jax.device_get(state.step))
    pending: tuple[int, Any] | None = None
    step_losses: list[jax.Array] = []  # fetched at log time, never added up on device eagerly
    tokens_per_step = batch_size * seq_len

    def check_finite(last_step: int, losses) -> np.ndarray:
        """The losses of the steps up to ``last_step`` as numpy (one fetch); raises on NaN/inf."""
        values = np.asarray(jax.device_get(losses), np.float64).reshape(-1)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size and not config.optimizer.skip_nonfinite:
            s = last_step - len(values) + 1 + int(bad[0])
            mon.status("failed", s, error="non-finite loss")
            raise FloatingPointError(
                f"training loss is {values[bad[0]]} at step {s}; checkpoints up to step "
                f"{mgr.latest_step()} are intact in {checkpoint.checkpoint_dir(workdir)}. Lower "
                "config.optimizer.learning_rate or enable clipping (config.optimizer.clip_norm)."
            )
        return values

    def flush(pending):
        s, (m, interval_losses) = pending
        values = {k: float(v) for k, v in m.items()}
        values["loss"] = float(np.mean(check_finite(s, interval_losses)))
        values["tokens_per_s"] = mon.steps_per_second(s) * tokens_per_step
        mon.write(s, values, "train")

    with jax.set_mesh(mesh):
        if sigterm.raised:  # before the loop: checkpoints on disk are kept as they are
            mon.status("preempted", step)
            raise Preempted(
                f"SIGTERM before training resumed at step {step}; nothing new to save in {workdir}"
            )
        mon.status("running", step)
        while step < num_steps:
            batch = device_batch(
                batching.train_batch(train_streams, step, seq_len, config.seed), mesh
            )
            state, metrics = _serialise_on_cpu_hosts(train_step(state, batch))
            step_losses.append(metrics["loss"])
            if pending is not None:  # fetched after the next step was dispatched
                flush(pending)
                pending = None
            step += 1
            if mon._rate_start is None:
                jax.block_until_ready(metrics)
                mon.start_timing(step)
            if step % t.log_every == 0 or step == num_steps:
                pending = (step, (metrics, step_losses))
                step_losses = []
            evaluate_now = step % t.eval_every == 0 and step < num_steps
            stop = sigterm.raised  # read once: a signal landing mid-iteration waits for the next
            save_now = step % t.checkpoint_every == 0 or step == num_steps or stop
            if pending is not None and (evaluate_now or save_now):
                flush(pending)
                pending = None
            if evaluate_now:  # before saving, so a resumed run sees the same optimizer state
                val = run_eval(step, "validation", t.eval_steps)
                state = state.replace(opt_state=report_validation(state.opt_state, val["loss"]))
            if save_now:
                if step_losses:  # steps since the last log line: no NaN state is saved
                    check_finite(step, step_losses)
                checkpoint.save(mgr, state, config, tokenizer, force=True)
            if stop:
                mgr.wait_until_finished()
                mon.status("preempted", step)
                raise Preempted(f"SIGTERM at step {step}; checkpoint saved in {workdir}")

        mon.status("evaluating", step)
        val = run_eval(step, "validation", 0)
        test = run_eval(step, "test", 0)
    unit = tokenizer.kind
    sample = _sample(model, eval_params(), tokenizer, config)
    if sigterm.raised:  # the step-`num_steps` checkpoint is saved; a re-run evaluates again
        mon.status("preempted", step)
        raise Preempted(
            f"SIGTERM during the final evaluation at step {step}; checkpoint saved in {workdir}"
        )
    final = {
        "step": step,
        "validation_loss": val["loss"],
        "validation_bits": val["bits"],
        "validation_perplexity": val["perplexity"],
        "test_loss": test["loss"],
        "test_bits": test["bits"],
        "test_perplexity": test["perplexity"],
        "sample": sample,
    }
    mon.status("finished", step, final=final)
    _log(
        f"Final validation loss {val['loss']:.4f} nats/{unit} ({val['bits']:.4f} bits/{unit}, "
        f"perplexity {val['perplexity']:.2f}); test loss {test['loss']:.4f} nats/{unit} "
        f"({test['bits']:.4f} bits/{unit}, perplexity {test['perplexity']:.2f})"
    )
    _log(f"Sample:\n{sample}")
    return final


def _sample(model, params, tokenizer, config) -> str:
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
