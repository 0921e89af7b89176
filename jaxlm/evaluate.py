"""Command line: ``python -m jaxlm.evaluate --workdir=DIR [--checkpoint=DIR_OR_STEP]
[--split=validation|test]``.

Evaluates a saved checkpoint on a whole split of its run's corpus and prints the loss in nats,
bits and perplexity per token (the unit is the tokenizer's: char, byte or word). The config and
tokenizer come from the checkpoint itself, so any checkpoint jaxlm writes (a run's, an averaged
one, an imported or converted one) can be evaluated.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder whose checkpoint is evaluated.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint",
    None,
    "A step of --workdir (e.g. 2000), or a checkpoint folder (<workdir>/checkpoints/<step>) or "
    "run folder; default: the latest checkpoint of --workdir.",
)
_SPLIT = flags.DEFINE_enum("split", "validation", ["validation", "test"], "Which split.")


def _pick_data_size(batch_size: int, model: int, devices: int) -> int:
    """The largest data-parallel size that fits the devices and divides the batch."""
    return max(d for d in range(1, devices // model + 1) if batch_size % d == 0)


def evaluate_checkpoint(
    path: str | Path, *, step: int | None = None, split: str = "validation"
) -> dict[str, Any]:
    """Loss, bits and perplexity of a checkpoint over a whole split of its run's corpus.

    Args:
      path: a run folder (its latest checkpoint, or ``step``), its ``checkpoints/`` folder or
        one ``<workdir>/checkpoints/<step>`` folder.
      step: which checkpoint of a run folder.
      split: ``"validation"`` or ``"test"``.

    Returns:
      ``loss`` (nats per token), ``bits``, ``perplexity``, ``tokens``, plus ``checkpoint``
      (the folder), ``step``, ``split`` and ``unit`` (the tokenizer kind).

    Example:
      >>> evaluate_checkpoint("runs/lstm_smoke", split="test")["perplexity"]  # doctest: +SKIP
      32.26
    """
    import jax
    import ml_collections

    from jaxlm import checkpoint, checkpoint_tools, data, sharding, trainer
    from jaxlm.data.tokenizers import tokenizer_from_json
    from jaxlm.models import get_model
    from jaxlm.precision import Policy

    if split not in ("validation", "test"):
        raise ValueError(f"split: {split!r}; expected validation or test")
    if (Path(path) / "model.npz").exists() and not checkpoint.checkpoint_dir(path).is_dir():
        raise checkpoint_tools.CheckpointError(
            f"{path} is an n-gram run (model.npz); its evaluation is printed by train"
        )
    ckpt = checkpoint_tools.resolve(path, step)
    # The optimizer state too (when saved): NT-ASGD runs are evaluated, as the trainer does, with
    # the running average of the parameters once averaging has started.
    parts = (
        ("params", "opt_state")
        if "opt_state" in checkpoint_tools.metadata_tree(ckpt)
        else ("params",)
    )
    state, meta = checkpoint_tools.load_state(ckpt, parts=parts)
    params = _averaged_params(state.get("opt_state"), state["params"])
    config = ml_collections.ConfigDict(meta["config"])
    tokenizer = tokenizer_from_json(meta["tokenizer"])
    corpus = data.load_corpus(config.data, tokenizer)
    model = get_model(config.model, tokenizer.vocab_size, Policy.from_string(config.precision))
    batch_size = config.data.eval_batch_size
    n_model = config.parallel.get("model", 1) or 1
    mesh = sharding.make_mesh(_pick_data_size(batch_size, n_model, jax.device_count()), n_model)
    rules = checkpoint_tools.rules_from_config(meta["config"])
    params = jax.device_put(params, sharding.rule_shardings(params, mesh, rules))
    with jax.set_mesh(mesh):
        result = trainer.evaluate(
            model,
            params,
            corpus.split(split),
            mesh,
            batch_size=batch_size,
            seq_len=config.data.seq_len,
        )
    return dict(
        result,
        checkpoint=str(ckpt),
        step=int(ckpt.name) if ckpt.name.isdigit() else None,
        split=split,
        unit=tokenizer.kind,
    )


def _averaged_params(opt_state: Any, params: Any) -> Any:
    """``params``, or NT-ASGD's average of them when the saved optimizer state has started one.

    A loaded optimizer state is plain dicts and lists (a NamedTuple becomes a dict of its
    fields), so NT-ASGD's state is found by its field names, rebuilt, and handed to
    :func:`jaxlm.transforms.averaged_params`, the function the trainer evaluates with.
    """
    import jax
    import numpy as np

    from jaxlm import transforms
    from jaxlm.transforms.validation import NTASGDState

    fields = set(NTASGDState._fields)

    def find(tree):
        if isinstance(tree, dict):
            if set(tree) == fields:
                return NTASGDState(**tree)
            children = tree.values()
        elif isinstance(tree, list | tuple):
            children = tree
        else:
            return None
        for child in children:
            found = find(child)
            if found is not None:
                return found
        return None

    nt_state = find(opt_state)
    if nt_state is None:
        return params
    return jax.tree.map(np.asarray, transforms.averaged_params(nt_state, params))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    from jaxlm import checkpoint_tools

    spec = _CHECKPOINT.value
    path, step = _WORKDIR.value, None
    if spec and spec.isdigit():
        step = int(spec)
    elif spec:
        path = spec
    if path is None:
        raise app.UsageError("--workdir (or --checkpoint=DIR) is required")
    try:
        r = evaluate_checkpoint(path, step=step, split=_SPLIT.value)
    except (checkpoint_tools.CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    unit = r["unit"]
    print(
        f"{r['checkpoint']} (step {r['step']}), {r['split']} split, {int(r['tokens']):,} tokens: "
        f"loss {r['loss']:.4f} nats/{unit}, {r['bits']:.4f} bits/{unit}, "
        f"perplexity {r['perplexity']:.2f}",
        flush=True,
    )
    if not math.isfinite(r["loss"]):
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
