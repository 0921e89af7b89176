"""The pure steps of training and evaluation, and their compilation over a mesh.

``train_step(state, batch) -> (state, metrics)`` is one pure function: dropout keys are
``fold_in(state.rng, state.step)``, the recurrent carry lives in the state, and the batch is a
pure function of (seed, step) (:mod:`jaxlm.data.batching`). :func:`jit_train_step` compiles it
once with explicit shardings and the state donated.

A run's step takes its continuous hyperparameters as a third argument,
``train_step(state, batch, hparams)`` (:mod:`jaxlm.train.hparams`): the learning rate, weight
decay, clip norm, label smoothing and dropout rates are traced values, not constants, so runs
that differ only in them share one compiled program (and the persistent compilation cache
serves it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxlm import losses, precision, runtime, sharding
from jaxlm.data import augment as augment_lib
from jaxlm.models.common import is_on
from jaxlm.state import Setup, TrainState
from jaxlm.transforms import spikes

Batch = dict[str, jax.Array]

DIAGNOSTICS = "diagnostics"  # the metrics' key of the per-parameter norms (a [3, leaves] array)
NORMS = ("grad_norm", "param_norm", "update_norm")  # its rows


def leaf_norms(tree: Any) -> jax.Array:
    """The L2 norm of every leaf of ``tree``, in float32, in flattening order.

    Args:
      tree: parameters, gradients or updates.

    Returns:
      A ``[leaves]`` array; :func:`jaxlm.tree.tree_paths` names its entries.

    Example:
      >>> leaf_norms({"a": jnp.array([3.0, 4.0]), "b": jnp.ones((2, 2))}).tolist()
      [5.0, 2.0]
    """
    leaves = jax.tree.leaves(tree)
    return jnp.stack([jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)))) for x in leaves])


def diagnostic_names(params: Any) -> list[str]:
    """The names of :data:`DIAGNOSTICS`' entries: ``<norm>/<parameter path>``, row by row.

    Args:
      params: the parameters (or their abstract shapes).

    Returns:
      ``len(NORMS) * leaves`` names, e.g. ``grad_norm/layers_0/ih/kernel``.

    Example:
      >>> diagnostic_names({"head": {"bias": 0, "kernel": 0}})[:3]
      ['grad_norm/head/bias', 'grad_norm/head/kernel', 'param_norm/head/bias']
    """
    from jaxlm.tree import tree_paths

    return [f"{norm}/{path}" for norm in NORMS for path in tree_paths(params)]


Hyper = Callable[[Mapping[str, Any]], tuple[Any, optax.GradientTransformation, Any, Any]]


def _rows(reset: jax.Array, carry: jax.Array) -> jax.Array:
    """``reset`` shaped to broadcast over a carry leaf: a scalar as it is, one flag per row
    (the streams of a mixture, whose sources start epochs apart) as ``[B, 1, ...]``."""
    if reset.ndim == 0:
        return reset
    return reset.reshape(reset.shape + (1,) * (carry.ndim - 1))


def make_train_step(
    model: Any,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    carry_state: bool = True,
    label_smoothing: float = 0.0,
    loss_scaling: bool = False,
    hyper: Hyper | None = None,
    augment: augment_lib.Augment | None = None,
    diagnostics: bool = False,
    inject: Sequence[tuple[str, int, float]] = (),
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """``train_step(state, batch) -> (state, metrics)``, pure, for ``jax.jit``.

    Args:
      model: a jaxlm model.
      tx: the optimizer.
      schedule: the learning rate at a training step (reported in the metrics).
      carry_state: carry the recurrent state from window to window (else start each at zero).
      label_smoothing: see :func:`jaxlm.losses.cross_entropy`.
      loss_scaling: float16: differentiate the loss times the optimizer state's dynamic loss
        scale (``tx`` must be wrapped by :func:`jaxlm.precision.wrap_optimizer`).
      hyper: ``hyper(hparams) -> (model, tx, schedule, label_smoothing)``, called inside the
        step on its traced hyperparameters (:func:`hyper_from_setup`); the step is then
        ``train_step(state, batch, hparams)`` and ``model``, ``tx``, ``schedule`` and
        ``label_smoothing`` above are unused. The optimizer it builds must have ``tx``'s
        state tree.
      augment: edit each training window first (:mod:`jaxlm.data.augment`), from
        ``augment.step_key(state.rng, state.step)``: the batch then carries ``T + extra``
        inputs and targets, and ``hparams`` holds the augmentation's tables (and its traced
        rates). None: the batch is trained on as it is.
      diagnostics: also return every parameter's gradient, parameter (after the update) and
        update norms, ``metrics["diagnostics"]``, a ``[3, leaves]`` float32 array (rows
        :data:`NORMS`, names :func:`diagnostic_names`). Reductions over what the step holds
        anyway: computed every step, fetched by the host when it wants them.
      inject: a testing aid (:func:`jaxlm.config.parse_inject`): ``("nan", k, _)`` makes the
        loss of step k (the update from ``state.step == k - 1``) NaN, ``("spike", k, _)``
        multiplies it by 100 (its gradients too); host faults (``sleep``) are ignored here.
        Empty: the program has no trace of it.

    Returns:
      The step function. ``batch`` holds ``inputs``/``targets`` ``[B, T]`` and ``reset``;
      ``metrics`` holds ``loss`` (the plain log-likelihood per token), ``grad_norm``, ``lr``,
      the model's aux terms, for float16 the loss-scale state, with the spike guard
      (:func:`jaxlm.transforms.guard_spikes`, which is handed the loss) its flags, and with
      ``diagnostics`` the norms.

    Example:
      >>> from jaxlm.models import RecurrentLM
      >>> from jaxlm.state import make_init_fn
      >>> model = RecurrentLM(vocab_size=10, embed_dim=4, hidden_sizes=(8,))
      >>> tx = optax.sgd(0.1)
      >>> state = make_init_fn(model, tx, batch_size=2, seq_len=3, seed=0)()
      >>> batch = {"inputs": jnp.zeros((2, 3), jnp.int32), "targets": jnp.ones((2, 3), jnp.int32),
      ...          "reset": jnp.asarray(True)}
      >>> state, metrics = jax.jit(make_train_step(model, tx, lambda s: 0.1))(state, batch)
      >>> int(state.step), sorted(metrics)
      (1, ['grad_norm', 'loss', 'lr'])
    """

    def train_step(
        state: TrainState, batch: Batch, hparams: Mapping[str, Any] | None = None
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        if augment is not None:
            key = augment_lib.step_key(state.rng, state.step)
            batch = augment_lib.apply(augment, key, batch, hparams or {})
        if hyper is None:
            return step(state, batch, model, tx, schedule, label_smoothing)
        return step(state, batch, *hyper(hparams or {}))

    def step(state, batch, model, tx, schedule, label_smoothing):
        reset = jnp.logical_or(batch["reset"], not carry_state)
        carry = jax.tree.map(
            lambda c: jnp.where(_rows(reset, c), jnp.zeros_like(c), c), state.carry
        )
        dropout_key = jax.random.fold_in(state.rng, state.step)

        fault = _fault(inject, state.step)

        def loss_fn(params):
            loss, (new_carry, nll, aux) = _loss(
                model, params, carry, batch, dropout_key, label_smoothing
            )
            if fault is not None:
                loss, nll = loss * fault, nll * fault
            if loss_scaling:
                loss = loss * precision.loss_scale(state.opt_state)
            return loss, (new_carry, nll, aux)

        (_, (new_carry, nll, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        extra = {"loss": nll} if spikes.wants_loss(state.opt_state) else {}
        updates, opt_state = tx.update(grads, state.opt_state, state.params, **extra)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            carry=jax.lax.stop_gradient(new_carry),
        )
        grad_norm = optax.tree.norm(grads)
        if loss_scaling:
            grad_norm = grad_norm / precision.loss_scale(state.opt_state)
        metrics = {
            "loss": nll,
            "grad_norm": grad_norm,
            "lr": jnp.asarray(schedule(state.step), jnp.float32),
            **aux,  # e.g. reg_loss (AR/TAR) of recurrent models
            **precision.loss_scale_metrics(opt_state),  # float16: scale and skipped steps
            **spikes.spike_metrics(opt_state),  # the spike guard's flags
        }
        if diagnostics:
            grad_norms = leaf_norms(grads)
            if loss_scaling:
                grad_norms = grad_norms / precision.loss_scale(state.opt_state)
            metrics[DIAGNOSTICS] = jnp.stack([grad_norms, leaf_norms(params), leaf_norms(updates)])
        return new_state, metrics

    return train_step


def _fault(inject: Sequence[tuple[str, int, float]], step: jax.Array) -> jax.Array | None:
    """The factor on the loss of the update from ``step`` (a testing aid), None for none."""
    factor = None
    for kind, k, _ in inject:
        value = {"nan": jnp.nan, "spike": 100.0}.get(kind)
        if value is not None:
            base = jnp.ones((), jnp.float32) if factor is None else factor
            factor = jnp.where(step + 1 == k, jnp.float32(value), base)
    return factor


def hyper_from_setup(setup: Setup, train: Any) -> Hyper:
    """The ``hyper`` of :func:`make_train_step` for a run: the model with the traced rates
    (:func:`jaxlm.train.hparams.bind_model`), the optimizer and schedule built from them
    (``setup.optimizer_for``), and the traced label smoothing when the config has any.

    Args:
      setup: from :func:`jaxlm.state.build`.
      train: the config's ``train`` section.

    Returns:
      ``hyper(hparams) -> (model, tx, schedule, label_smoothing)``.
    """
    from jaxlm.train.hparams import bind_model

    def hyper(hparams: Mapping[str, Any]):
        tx, schedule = setup.optimizer_for(hparams)
        smoothing = hparams.get("train.label_smoothing", train.label_smoothing)
        return bind_model(setup.model, hparams), tx, schedule, smoothing

    return hyper


def _loss(
    model: Any, params: Any, carry: Any, batch: Batch, dropout_key: jax.Array, smoothing: float
) -> tuple[jax.Array, tuple[Any, jax.Array, dict[str, jax.Array]]]:
    """A training window's loss and what the step reports: ``(loss, (carry, nll, aux))``."""
    logits, new_carry, aux = model.apply(
        {"params": params},
        batch["inputs"],
        carry,
        deterministic=False,
        rngs={"dropout": dropout_key},
    )
    mask = batch.get("mask")  # augmented windows: targets past the edited text are masked
    total, count = losses.cross_entropy(
        logits, batch["targets"], label_smoothing=smoothing, mask=mask
    )
    loss = total / count + aux.get("reg_loss", 0.0)
    if is_on(smoothing):  # report the plain log-likelihood, not the smoothed loss
        total, count = losses.cross_entropy(logits, batch["targets"], mask=mask)
    return loss, (new_carry, total / count, aux)


def saved_activation_bytes(setup: Setup, batch: Batch, label_smoothing: float = 0.0) -> int:
    """The bytes the train step's backward pass keeps from its forward pass, whole batch.

    Traced, not compiled (``jax.eval_shape`` of ``jax.vjp``'s residuals): what the program
    asks to keep, in the dtypes the precision policy gives it, whatever a backend does with
    it (XLA's CPU backend computes bfloat16 products in float32, so its compiled temporaries
    do not fall with ``compute=bfloat16`` where these do). It counts the compute-dtype copies
    of the weights the backward pass reads too; it is the sum over all devices.

    Args:
      setup: from :func:`jaxlm.state.build`.
      batch: a training batch or its abstract arrays (:func:`abstract_batch`).
      label_smoothing: as in training.

    Returns:
      Bytes.

    Example:
      >>> from jaxlm import sharding, state
      >>> from jaxlm.config import load_config
      >>> config = load_config("transformer:smoke")
      >>> f32 = saved_activation_bytes(state.build(config, 64), abstract_batch(8, 32, None))
      >>> config.precision = "params=float32,compute=bfloat16,output=float32"
      >>> bf16 = saved_activation_bytes(state.build(config, 64), abstract_batch(8, 32, None))
      >>> bf16 < f32
      True
    """
    key = jax.random.PRNGKey(0)

    def residuals(params, carry, batch):
        return jax.vjp(
            lambda p: _loss(setup.model, p, carry, batch, key, label_smoothing)[0], params
        )[1]

    out = jax.eval_shape(residuals, setup.abstract.params, setup.abstract.carry, batch)
    return sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(out))


def make_eval_step(model: Any) -> Callable:
    """``eval_step(params, carry, sums, batch) -> (carry, sums)`` for ``jax.jit``.

    ``sums`` is ``(loss_sum, count)`` over the windows so far: the running sums stay inside the
    compiled step, so no eager arithmetic mixes arrays of different processes.

    Args:
      model: a jaxlm model.

    Returns:
      The step function; ``batch`` holds ``inputs``, ``targets`` and ``mask`` ``[B, T]``.
    """

    def eval_step(params, carry, sums, batch):
        logits, carry, _ = model.apply({"params": params}, batch["inputs"], carry)
        total, count = losses.cross_entropy(logits, batch["targets"], mask=batch["mask"])
        return carry, (sums[0] + total, sums[1] + count)

    return eval_step


def jit_train_step(
    setup: Setup,
    schedule: optax.Schedule,
    shardings: TrainState,
    mesh: Any,
    train: Any,
    *,
    hparams: bool = False,
    augment: augment_lib.Augment | None = None,
    diagnostics: bool = False,
    inject: Sequence[tuple[str, int, float]] = (),
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """The run's train step, compiled once with explicit shardings and the state donated.

    Args:
      setup: from :func:`jaxlm.state.build`.
      schedule: the learning rate at a training step (:func:`jaxlm.optim.learning_rate`).
      shardings: the state's shardings (:func:`jaxlm.sharding.state_shardings`).
      mesh: the device mesh.
      train: the config's ``train`` section (``carry_state``, ``label_smoothing``).
      hparams: True: the step takes the continuous hyperparameters as its third argument
        (:func:`jaxlm.train.hparams.from_config`), replicated.
      augment: see :func:`make_train_step` (its tables come in ``hparams``).
      diagnostics: see :func:`make_train_step`.
      inject: faults for tests (:func:`make_train_step`).

    Returns:
      ``step(state, batch) -> (state, metrics)`` (or ``step(state, batch, hparams)``),
      compiled at its first call; on several CPU devices or processes it waits for each step
      (:func:`serialised`).
    """
    jitted = _jit(setup, schedule, shardings, mesh, train, hparams, augment, diagnostics, inject)
    return serialised(jitted, mesh)


def compile_train_step(
    setup: Setup,
    schedule: optax.Schedule,
    shardings: TrainState,
    mesh: Any,
    train: Any,
    batch: dict[str, jax.ShapeDtypeStruct],
    hparams: Mapping[str, jax.ShapeDtypeStruct] | None = None,
    augment: augment_lib.Augment | None = None,
    diagnostics: bool = False,
    inject: Sequence[tuple[str, int, float]] = (),
) -> jax.stages.Compiled:
    """The train step of :func:`jit_train_step` compiled ahead of time, from shapes alone.

    Nothing is allocated: the state is ``setup.abstract`` on ``shardings``. The result runs the
    step (wrap it with :func:`serialised`) and says what it needs:
    ``memory_analysis()`` (per device: arguments, outputs, donated aliases, temporaries) and
    ``cost_analysis()["flops"]`` (per device).

    Args:
      setup, schedule, shardings, mesh, train: as for :func:`jit_train_step`.
      batch: the batch's abstract arrays (:func:`abstract_batch`).
      hparams: the hyperparameters' abstract scalars (:func:`jaxlm.train.hparams.abstract`):
        the step is then ``step(state, batch, hparams)``; None: ``step(state, batch)``.
      augment: see :func:`make_train_step` (``batch`` then from ``abstract_batch(...,
        extra=augment.extra)``, its tables among ``hparams``).
      diagnostics: see :func:`make_train_step`.

    Returns:
      The compiled step.

    Example:
      >>> from jaxlm import optim, sharding, state
      >>> from jaxlm.config import load_config
      >>> config = load_config("lstm:smoke")
      >>> setup = state.build(config, vocab_size=20)
      >>> mesh = sharding.make_mesh(1, 1)
      >>> shardings = sharding.state_shardings(setup.abstract, mesh)
      >>> compiled = compile_train_step(setup, optim.learning_rate(config), shardings, mesh,
      ...                               config.train, abstract_batch(8, 32, mesh))
      >>> compiled.memory_analysis().temp_size_in_bytes > 0
      True
    """
    target = sharding.abstract_on(setup.abstract, shardings)
    jitted = _jit(
        setup, schedule, shardings, mesh, train, hparams is not None, augment, diagnostics, inject
    )
    args = (target, batch) if hparams is None else (target, batch, dict(hparams))
    return jitted.lower(*args).compile()


def abstract_batch(
    batch_size: int, seq_len: int, mesh: Any, extra: int = 0, *, row_reset: bool = False
) -> dict[str, jax.ShapeDtypeStruct]:
    """A training batch's shapes, dtypes and shardings, as ``device_batch`` places them.

    Args:
      batch_size: B (global).
      seq_len: T.
      mesh: the device mesh; None: no shardings.
      extra: the raw tokens an augmenting step reads past the window
        (:func:`jaxlm.data.augment.margin`).
      row_reset: one reset flag per row (a mixture's streams,
        :func:`jaxlm.data.mixture.resets_per_row`) instead of one for the batch.

    Returns:
      ``inputs`` and ``targets`` int32 ``[B, T + extra]`` split over "data", ``reset`` a
      replicated bool (or ``[B]`` split over "data").

    Example:
      >>> batch = abstract_batch(8, 32, sharding.make_mesh())
      >>> batch["inputs"].shape, batch["inputs"].sharding.spec
      ((8, 32), P('data',))
    """
    split = None if mesh is None else sharding.batch_sharding(mesh)
    rows = jax.ShapeDtypeStruct((batch_size, seq_len + extra), jnp.int32, sharding=split)
    whole = None if mesh is None else sharding.replicated(mesh)
    if row_reset:
        reset = jax.ShapeDtypeStruct((batch_size,), jnp.bool_, sharding=split)
    else:
        reset = jax.ShapeDtypeStruct((), jnp.bool_, sharding=whole)
    return {"inputs": rows, "targets": rows, "reset": reset}


def serialised(step: Callable, mesh: Any) -> Callable:
    """``step``, waiting for each result where the CPU backend's collectives need it.

    Args:
      step: ``step(state, batch[, hparams]) -> (state, metrics)``, jitted or compiled.
      mesh: the mesh it runs on.

    Returns:
      ``step`` itself, or with several processes or several CPU devices in ``mesh``
      (:func:`jaxlm.runtime.serialise_steps`) a function that blocks until each step is done.

    Example:
      >>> step = serialised(lambda state, batch: (state, {}), sharding.make_mesh(1, 1))
    """
    if not runtime.serialise_steps(mesh):
        return step
    return lambda *args: jax.block_until_ready(step(*args))


def with_hparams(step: Callable, hparams: Mapping[str, Any], mesh: Any) -> Callable:
    """``step(state, batch, hparams)`` as ``step(state, batch)``, the values placed once.

    Args:
      step: a step taking hyperparameters (:func:`compile_train_step` with ``hparams``).
      hparams: their values (:func:`jaxlm.train.hparams.from_config`).
      mesh: the mesh; the values are replicated over it.

    Returns:
      ``step(state, batch) -> (state, metrics)``.
    """
    placed = jax.device_put(dict(hparams), sharding.replicated(mesh))
    return lambda state, batch: step(state, batch, placed)


def _jit(
    setup: Setup,
    schedule: optax.Schedule,
    shardings: TrainState,
    mesh: Any,
    train: Any,
    hparams: bool = False,
    augment: augment_lib.Augment | None = None,
    diagnostics: bool = False,
    inject: Sequence[tuple[str, int, float]] = (),
):
    """The ``jax.jit`` of the train step: explicit shardings, the state donated."""
    hyper = hyper_from_setup(setup, train) if hparams else None
    return jax.jit(
        make_train_step(
            setup.model,
            setup.tx,
            schedule,
            carry_state=train.carry_state,
            label_smoothing=train.label_smoothing,
            loss_scaling=setup.policy.needs_loss_scaling,
            hyper=hyper,
            augment=augment,
            diagnostics=diagnostics,
            inject=tuple(inject),
        ),
        in_shardings=(shardings, None) + ((sharding.replicated(mesh),) if hparams else ()),
        out_shardings=(shardings, sharding.replicated(mesh)),
        donate_argnums=0,
        compiler_options=runtime.compiler_options(setup.model),
    )
