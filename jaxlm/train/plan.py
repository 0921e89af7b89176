"""What a run holds and does per step, known before it trains: the mesh, the state's shardings
under the rules in force, the train step compiled ahead of time, and the memory and FLOPs it
reports.

:func:`make_plan` is the part of a run's setup that needs no data but the vocabulary size;
:func:`compile_step` compiles its step from shapes alone (``jit(...).lower(abstract
args).compile()``, as MaxText's ahead-of-time check), and :func:`report` reads what the compiled
step needs per device. A run prints that report at its start; :func:`dry_run` (``python -m
jaxlm.train ... --dry_run``) prints it and returns it without allocating a state or writing
anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections
from jax.sharding import Mesh, PartitionSpec

from jaxlm import data, optim, sharding, state
from jaxlm.config import parse_inject, validate
from jaxlm.data import augment
from jaxlm.errors import ConfigError
from jaxlm.train import hparams
from jaxlm.train.steps import (
    abstract_batch,
    compile_train_step,
    saved_activation_bytes,
    serialised,
    with_hparams,
)
from jaxlm.train.workdir import log


class Plan(NamedTuple):
    """The mesh, the built model and optimizer, the rules in force and the state's shardings.

    Attributes:
      mesh: the ("data", "model") mesh.
      setup: :func:`jaxlm.state.build`'s model, optimizer, init and abstract state.
      rules: ``(regex, PartitionSpec)`` pairs: ``config.parallel.rules``, then the strategy's.
      shardings: a sharding per leaf of the state (:func:`jaxlm.sharding.state_shardings`).
    """

    mesh: Mesh
    setup: state.Setup
    rules: list[tuple[str, PartitionSpec]]
    shardings: state.TrainState


def make_mesh(config: ml_collections.ConfigDict) -> Mesh:
    """The run's mesh (``config.parallel.data`` x ``.model``); the batch sizes must divide over
    its data axis.

    Args:
      config: a run config.

    Returns:
      The mesh.

    Raises:
      ConfigError: a batch size that does not divide over the data devices.

    Example:
      >>> from jaxlm.config import load_config
      >>> dict(make_mesh(load_config("lstm:smoke")).shape)  # every device on "data"
      {'data': 4, 'model': 1}
    """
    mesh = sharding.make_mesh(config.parallel.data, config.parallel.model)
    for name in ("batch_size", "eval_batch_size"):
        if config.data[name] % mesh.shape["data"]:
            raise ConfigError(
                f"config.data.{name}={config.data[name]} must be a multiple of the "
                f"{mesh.shape['data']} data devices"
            )
    return mesh


def make_plan(config: ml_collections.ConfigDict, vocab_size: int) -> Plan:
    """Builds a run's mesh, model, optimizer and state shardings, abstractly.

    Args:
      config: a validated run config of a neural model.
      vocab_size: the tokenizer's vocabulary size.

    Returns:
      A :class:`Plan`.

    Example:
      >>> from jaxlm.config import load_config
      >>> config = load_config("transformer:smoke")
      >>> config.parallel.update({"strategy": "tensor", "data": 2, "model": 2})
      >>> plan = make_plan(config, vocab_size=64)
      >>> plan.shardings.params["blocks_0"]["qkv"]["kernel"].spec
      P(None, 'model')
    """
    mesh = make_mesh(config)
    setup = state.build(config, vocab_size)
    rules = sharding.parallel_rules(config.parallel)
    return Plan(mesh, setup, rules, sharding.state_shardings(setup.abstract, mesh, rules))


def compile_step(plan: Plan, config: ml_collections.ConfigDict) -> jax.stages.Compiled:
    """The run's train step compiled ahead of time for its batch shape (nothing allocated).

    Call it inside ``jax.set_mesh(plan.mesh)``, where the run steps. The step takes the run's
    continuous hyperparameters as its third argument (:mod:`jaxlm.train.hparams`), so runs
    that differ only in them compile the same program; :func:`run_step` binds them. With
    ``config.monitor.diagnostics_every`` > 0 it returns the per-parameter norms too. With
    ``config.data.augment`` on, the step edits its windows (:mod:`jaxlm.data.augment`): the
    batch is ``T + extra`` wide and the augmentation's tables join the hyperparameters.

    Args:
      plan: from :func:`make_plan`.
      config: the run config.

    Returns:
      The compiled ``step(state, batch, hparams)``
      (:func:`jaxlm.train.steps.compile_train_step`).

    Example:
      >>> with jax.set_mesh(plan.mesh):  # doctest: +SKIP
      ...     compiled = compile_step(plan, config)
      >>> compiled.memory_analysis().temp_size_in_bytes  # doctest: +SKIP
      2219140
    """
    batch = _abstract_batch(config, plan.mesh)
    tables = augment.table_shapes(config.data, plan.setup.model.vocab_size)
    values = {**hparams.from_config(config), **tables}
    shapes = hparams.abstract(values, sharding.replicated(plan.mesh))
    return compile_train_step(
        plan.setup,
        optim.learning_rate(config),
        plan.shardings,
        plan.mesh,
        config.train,
        batch,
        shapes,
        augment.from_config(config.data),
        diagnostics=diagnostics_every(config) > 0,
        inject=parse_inject(config.monitor.inject) if "monitor" in config else (),
    )


def diagnostics_every(config: ml_collections.ConfigDict) -> int:
    """``config.monitor.diagnostics_every`` (0 for a config from before the field): the step
    computes the per-parameter norms when it is positive (:mod:`jaxlm.train.steps`).

    Example:
      >>> from jaxlm.config import load_config
      >>> diagnostics_every(load_config("lstm:smoke"))
      100
    """
    return int(config.get("monitor", {}).get("diagnostics_every", 0))


def _abstract_batch(config: ml_collections.ConfigDict, mesh: Any, *, raw: bool = True) -> dict:
    """The step's batch shapes: raw windows with augmentation's margin (``raw``, what the
    step is fed) or the T-long windows the model sees after the edits; per-row resets for a
    mixture's streams."""
    from jaxlm.data.mixture import resets_per_row

    row_reset = resets_per_row(config.data, config.train.carry_state)
    d, extra = config.data, augment.margin(config.data) if raw else 0
    return abstract_batch(d.batch_size, d.seq_len, mesh, extra, row_reset=row_reset)


def run_step(
    plan: Plan,
    config: ml_collections.ConfigDict,
    compiled: jax.stages.Compiled,
    tables: dict[str, Any] | None = None,
) -> Callable[[state.TrainState, dict[str, jax.Array]], tuple[state.TrainState, dict]]:
    """The step a run calls, ``step(state, batch)``: :func:`compile_step`'s program with the
    config's hyperparameters bound (placed once) and, where the backend needs it, waiting for
    each step (:func:`jaxlm.train.steps.serialised`).

    Args:
      plan: from :func:`make_plan`.
      config: the run config (its continuous hyperparameters are the values bound).
      compiled: from :func:`compile_step`.
      tables: with augmentation on, :func:`jaxlm.data.augment.tables` of the run's corpus
        (bound with the hyperparameters, placed once).

    Returns:
      ``step(state, batch) -> (state, metrics)``.
    """
    bound = with_hparams(compiled, {**hparams.from_config(config), **(tables or {})}, plan.mesh)
    return serialised(bound, plan.mesh)


def report(
    config: ml_collections.ConfigDict, plan: Plan, compiled: jax.stages.Compiled
) -> dict[str, Any]:
    """What a run needs per device, from its shardings and its compiled step.

    Byte and FLOP counts are per device (every device holds and runs the same amount under
    these even shardings). ``peak_bytes`` is ``argument_bytes + output_bytes - alias_bytes +
    temp_bytes``: the donated state's outputs reuse its buffers (``alias_bytes``), so they are
    counted once; the parts are there for another sum.

    Args:
      config: the run config.
      plan: from :func:`make_plan`.
      compiled: from :func:`compile_step`.

    Returns:
      JSON data: ``name``, ``model``, ``strategy``, ``precision``, ``devices``, ``mesh``
      (axis sizes), ``rules`` (as ``config.parallel.rules`` spells them), ``tokens_per_step``,
      ``params_bytes`` and ``opt_state_bytes`` (per device) with their ``*_total`` (all of
      it, once), ``argument_bytes``, ``output_bytes``, ``alias_bytes``, ``temp_bytes``,
      ``peak_bytes`` and ``flops`` (of one step).

    Example:
      >>> rep = report(config, plan, compile_step(plan, config))  # doctest: +SKIP
      >>> rep["params_bytes_total"] / rep["params_bytes"]  # doctest: +SKIP
      4.0
    """
    abstract, shardings = plan.setup.abstract, plan.shardings
    params, params_total = sharding.sharded_bytes(abstract.params, shardings.params)
    opt, opt_total = sharding.sharded_bytes(abstract.opt_state, shardings.opt_state)
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost  # older JAX: one per program
    argument, output = memory.argument_size_in_bytes, memory.output_size_in_bytes
    alias, temp = memory.alias_size_in_bytes, memory.temp_size_in_bytes
    return {
        "name": config.name,
        "model": config.model.name,
        "strategy": config.parallel.strategy,
        "precision": config.precision,
        "devices": plan.mesh.size,
        "mesh": {name: int(size) for name, size in plan.mesh.shape.items()},
        "rules": [[pattern, list(spec)] for pattern, spec in plan.rules],
        "tokens_per_step": config.data.batch_size * config.data.seq_len,
        "params_bytes": params,
        "params_bytes_total": params_total,
        "opt_state_bytes": opt,
        "opt_state_bytes_total": opt_total,
        "argument_bytes": argument,
        "output_bytes": output,
        "alias_bytes": alias,
        "temp_bytes": temp,
        "peak_bytes": argument + output - alias + temp,
        "flops": float(cost.get("flops", 0.0)) if cost else 0.0,
    }


def report_lines(rep: dict[str, Any]) -> list[str]:
    """The report as the run prints it: the rules in force, then memory and FLOPs per device.

    Args:
      rep: from :func:`report`.

    Returns:
      Lines of text.

    Example:
      >>> for line in report_lines(rep): print(line)  # doctest: +SKIP
      Sharding: strategy fsdp on mesh {'data': 4, 'model': 1}; rules in force (...):
        ('.*', ('data',))
        ('.*', (None, 'data'))
      Memory per device: parameters 30.1 KiB of 120.5 KiB (1/4.00), optimizer state ...
      Train step per device (float32): temporaries 592.2 KiB, peak 683.9 KiB (...), 0.013 GFLOP
    """
    rules = [(pattern, PartitionSpec(*spec)) for pattern, spec in rep["rules"]]
    lines = [
        f"Sharding: strategy {rep['strategy']} on mesh {rep['mesh']}; rules in force (the first "
        "that matches a path and divides its shape applies, else replicated):"
    ]
    lines += ["  " + line for line in sharding.format_rules(rules).splitlines()]

    def share(part: str) -> str:
        mine, total = rep[f"{part}_bytes"], rep[f"{part}_bytes_total"]
        return f"{_size(mine)} of {_size(total)} (1/{total / max(mine, 1):.2f})"

    lines.append(
        f"Memory per device: parameters {share('params')}, optimizer state {share('opt_state')}"
    )
    lines.append(
        f"Train step per device ({rep['precision']}): temporaries {_size(rep['temp_bytes'])}, "
        f"peak {_size(rep['peak_bytes'])} (arguments {_size(rep['argument_bytes'])} + outputs "
        f"{_size(rep['output_bytes'])} - donated {_size(rep['alias_bytes'])} + temporaries), "
        f"{rep['flops'] / 1e9:.3f} GFLOP"
    )
    if "activation_bytes" in rep:
        lines.append(
            f"Activations the backward pass keeps (traced, all devices): "
            f"{_size(rep['activation_bytes'])}"
        )
    return lines


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def dry_run(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Compiles a run's train step ahead of time and reports its memory and FLOPs, without
    training: no state is allocated and nothing is written (the corpus is read, and prepared
    once if it never was, for its vocabulary).

    Args:
      config: a run config of a neural model.

    Returns:
      :func:`report`'s JSON data and ``activation_bytes``
      (:func:`jaxlm.train.steps.saved_activation_bytes`: what the backward pass keeps, traced,
      all devices together); the same report is printed.

    Raises:
      ConfigError: a bad config, an n-gram model (which has no compiled step), a mesh that
        does not fit.

    Example:
      >>> from jaxlm.config import load_config
      >>> dry_run(load_config("transformer:smoke"))["peak_bytes"]  # doctest: +SKIP
      3141592
    """
    validate(config)
    if config.model.name == "ngram":
        raise ConfigError("--dry_run: an n-gram model is counted on the host; it compiles no step")
    corpus = data.load_corpus(config.data)
    plan = make_plan(config, corpus.tokenizer.vocab_size)
    with jax.set_mesh(plan.mesh):
        compiled = compile_step(plan, config)
        batch = _abstract_batch(config, plan.mesh, raw=False)  # what the model sees
        activations = saved_activation_bytes(plan.setup, batch, config.train.label_smoothing)
    rep = dict(report(config, plan, compiled), activation_bytes=activations)
    for line in report_lines(rep):
        log(line)
    return rep


DRY_RUN_PREFIX = "DRY_RUN "  # the dry run's JSON line on stdout starts so (a job balancer's cue)


def report_json(rep: dict[str, Any]) -> str:
    """The report as one line of JSON (what a job balancer reads).

    Args:
      rep: from :func:`report`.

    Returns:
      The JSON on one line; the command line prints it after :data:`DRY_RUN_PREFIX`, which
      ``jaxlm.jobs.measure`` looks for.

    Example:
      >>> report_json({"strategy": "fsdp", "peak_bytes": 683900})
      '{"strategy":"fsdp","peak_bytes":683900}'
    """
    return json.dumps(rep, separators=(",", ":"))
