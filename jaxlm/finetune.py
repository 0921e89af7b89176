"""Fine-tuning a pretrained language model: strategy presets and loading pretrained weights.

``config.finetune.strategy`` names a preset; :func:`strategy_transform` expands it into
``jaxlm.transforms`` around the base optimizer (``jaxlm.optim.build_optimizer`` calls it). The
presets find the model's layers in the parameter tree itself: stacked layers are the path
components ``layers_<i>`` / ``blocks_<i>``, the output layer is ``head`` (or the embedding when
embeddings are tied, with any projection before it), the input side is ``embed`` (and any
positional embedding). See ``docs/finetuning.md`` for when to use which.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_collections
import optax

from jaxlm import transforms

PyTree = Any
STRATEGIES = (
    "full",
    "freeze_all_but_last",
    "tune_last_layers",
    "feature",
    "gradual_unfreeze",
    "discriminative",
)
_LAYER = re.compile(r"^(?:layers|blocks)_(\d+)$")


class Layout(NamedTuple):
    """Where a model's parameters sit, as path patterns ordered from the output side down.

    Attributes:
      output: exact-path patterns of the output layer (``head``, or the tied embedding and any
        projection and final norm before it).
      layers: one pattern per stacked layer, top (last) first.
      inputs: exact-path patterns of the untied input embedding(s); empty when tied.
    """

    output: tuple[str, ...]
    layers: tuple[str, ...]
    inputs: tuple[str, ...]

    def groups(self) -> list[list[str]]:
        """Top-down groups: output, each layer from the last to the first, then the inputs."""
        out: list[list[str]] = [list(self.output)]
        out += [[p] for p in self.layers]
        if self.inputs:
            out.append(list(self.inputs))
        return out


def model_layout(params: PyTree) -> Layout:
    """Finds the output layer, the stacked layers and the input embedding of a model's tree.

    Args:
      params: the model's parameters (or their ``jax.eval_shape``).

    Returns:
      A :class:`Layout`.

    Raises:
      ValueError: when the tree has no ``layers_<i>``/``blocks_<i>`` or no output layer.

    Example:
      >>> import jax.numpy as jnp
      >>> tree = {"embed": {"embedding": jnp.zeros(1)}, "layers_0": {"k": jnp.zeros(1)},
      ...         "layers_1": {"k": jnp.zeros(1)}, "head": {"kernel": jnp.zeros(1)}}
      >>> model_layout(tree).groups()
      [['^head/kernel$'], ['layers_1'], ['layers_0'], ['^embed/embedding$']]
    """
    paths = transforms.param_paths(params)
    layers: dict[int, str] = {}
    has_head = any(p.split("/")[0] == "head" for p in paths)
    output, inputs = [], []
    for path in paths:
        parts = path.split("/")
        found = [(i, m) for i, part in enumerate(parts) if (m := _LAYER.match(part))]
        if found:
            i, m = found[0]
            layers[int(m.group(1))] = re.escape(parts[i])  # transforms match whole components
            continue
        exact = f"^{re.escape(path)}$"
        is_input = "embed" in parts[0] or parts[0].startswith("pos")
        if is_input and not (parts[0] == "embed" and not has_head):
            inputs.append(exact)
        else:
            output.append(exact)
    if not layers:
        raise ValueError(
            "fine-tuning presets need stacked layers named layers_<i> or blocks_<i>; the tree "
            f"has: {paths}"
        )
    if not output:
        raise ValueError(f"fine-tuning presets found no output layer (head) in: {paths}")
    ordered = tuple(layers[i] for i in sorted(layers, reverse=True))
    return Layout(tuple(output), ordered, tuple(inputs))


def deferred(
    build: Callable[[PyTree], optax.GradientTransformation],
) -> optax.GradientTransformation:
    """A transform built from the parameter tree's structure the first time it sees the tree.

    Lets an optimizer that depends on the model's layout be created before the parameters
    exist (the trainer builds its optimizer from the config alone). ``build`` must depend only
    on the tree's structure and paths, never on values; results are cached per structure.

    Args:
      build: from a parameter (or gradient) tree to the transform to use.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = deferred(lambda tree: optax.sgd(0.1))
      >>> state = tx.init({"w": jnp.ones(2)})
    """
    cache: dict[Any, optax.GradientTransformationExtraArgs] = {}

    def get(tree: PyTree) -> optax.GradientTransformationExtraArgs:
        key = jax.tree.structure(tree)
        if key not in cache:
            cache[key] = optax.with_extra_args_support(build(tree))
        return cache[key]

    def init_fn(params: PyTree) -> Any:
        return get(params).init(params)

    def update_fn(updates: PyTree, state: Any, params: PyTree = None, **extra: Any):
        return get(updates).update(updates, state, params, **extra)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _lower_layers(layout: Layout, keep: int) -> list[str]:
    """Patterns of everything below the top ``keep`` layers (input embedding included)."""
    if keep < 0:
        raise ValueError(f"config.finetune.num_last_layers must be >= 0, got {keep}")
    return [*layout.layers[keep:], *layout.inputs]


def strategy_transform(
    finetune: ml_collections.ConfigDict,
    make_base: Callable[..., optax.GradientTransformation],
    *,
    updates_per_step: float = 1.0,
) -> optax.GradientTransformation:
    """Expands ``finetune.strategy`` into transforms around the base optimizer.

    * ``full``: the base optimizer, unchanged.
    * ``freeze_all_but_last``: :func:`jaxlm.transforms.freeze` of every layer below the last
      ``num_last_layers`` and of the input embedding; the output layer trains.
    * ``tune_last_layers``: the same freezing, with L2 (``finetune.l2``) added to the gradient
      and global-norm clipping at ``finetune.clip_norm`` over the trainable leaves (dropout:
      see :func:`prepare_config`).
    * ``feature``: only the output layer trains, at ``finetune.lr_factor`` times the rate.
    * ``gradual_unfreeze``: :func:`jaxlm.transforms.gradual_unfreeze`, output layer from step
      0, then one more group (layer, top down; the input embedding last) every
      ``finetune.unfreeze_every`` steps.
    * ``discriminative``: :func:`jaxlm.transforms.discriminative_lr`, each group's rate
      ``finetune.discriminative_factor`` times smaller than the one above.

    Args:
      finetune: the ``finetune`` section of a config.
      make_base: ``make_base(clip_norm=None, l2=0.0)`` returns the base optimizer; the keyword
        arguments, when given, override the base clipping and add an L2 term.
      updates_per_step: optimizer updates per training step (``1 / accumulate_steps``), to turn
        ``unfreeze_every`` into update counts.

    Returns:
      An ``optax.GradientTransformation``; presets other than ``full`` find the layers when they
      first see the parameter tree (see :func:`deferred`).

    Example:
      >>> import optax
      >>> from jaxlm.config import base_config
      >>> ft = base_config().finetune
      >>> ft.strategy = "feature"
      >>> tx = strategy_transform(ft, lambda **kw: optax.adam(1e-3))

    References:
      Howard and Ruder, "Universal Language Model Fine-tuning for Text Classification", ACL 2018,
      https://arxiv.org/abs/1801.06146; Yosinski et al., "How transferable are features in deep
      neural networks?", NeurIPS 2014, https://arxiv.org/abs/1411.1792.
    """
    name = finetune.strategy
    if name not in STRATEGIES:
        raise ValueError(
            f"config.finetune.strategy: unknown strategy {name!r}; expected one of {STRATEGIES}"
        )
    if name == "full":
        return make_base()

    def build(tree: PyTree) -> optax.GradientTransformation:
        layout = model_layout(tree)
        if name in ("freeze_all_but_last", "tune_last_layers"):
            frozen = _lower_layers(layout, finetune.num_last_layers)
            base = (
                make_base(clip_norm=finetune.clip_norm, l2=finetune.l2)
                if name == "tune_last_layers"
                else make_base()
            )
            return transforms.freeze(frozen, base) if frozen else base
        if name == "feature":
            frozen = [*layout.layers, *layout.inputs]
            return transforms.freeze(
                frozen, optax.chain(make_base(), optax.scale(finetune.lr_factor))
            )
        groups = layout.groups()
        if name == "gradual_unfreeze":
            every = max(int(round(finetune.unfreeze_every * updates_per_step)), 0)
            boundaries = [i * every for i in range(len(groups))]
            return transforms.gradual_unfreeze(groups, boundaries, make_base())
        # discriminative
        return optax.chain(
            make_base(), transforms.discriminative_lr(groups, finetune.discriminative_factor)
        )

    return deferred(build)


def prepare_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config with the preset's model-side settings applied (a copy; ``config`` is untouched).

    Only ``tune_last_layers`` changes anything: ``model.dropout`` is raised to at least
    ``finetune.dropout``.

    Args:
      config: a run config.

    Returns:
      The config to build the model from.

    Example:
      >>> from jaxlm.config import base_config
      >>> c = base_config(); c.finetune.strategy = "tune_last_layers"; c.model.dropout = 0.0
      >>> prepare_config(c).model.dropout
      0.3
    """
    out = config.copy_and_resolve_references()
    if config.finetune.strategy == "tune_last_layers":
        out.model.dropout = max(config.model.dropout, config.finetune.dropout)
    return out


class VocabMapping(NamedTuple):
    """How a pretrained vocabulary was carried over to this run's.

    Attributes:
      kept: tokens in both vocabularies (their trained rows were copied).
      new: tokens only in this run's vocabulary (they keep their fresh rows), in id order.
      dropped: tokens only in the checkpoint's vocabulary, in id order.
      source: the checkpoint folder read.
    """

    kept: int
    new: tuple[str, ...]
    dropped: tuple[str, ...]
    source: str

    def summary(self, limit: int = 10) -> str:
        """One line for the log."""

        def show(tokens: tuple[str, ...]) -> str:
            head = ", ".join(repr(t) for t in tokens[:limit])
            return head + (", ..." if len(tokens) > limit else "")

        return (
            f"init_from {self.source}: {self.kept} tokens keep their trained rows; "
            f"{len(self.new)} new tokens get fresh rows [{show(self.new)}]; "
            f"{len(self.dropped)} checkpoint tokens unused [{show(self.dropped)}]"
        )


def _resolve_checkpoint(init_from: str) -> tuple[Path, int | None]:
    """A workdir (latest step) or one ``<workdir>/checkpoints/<step>`` folder."""
    from jaxlm import checkpoint

    path = Path(init_from)
    if checkpoint.checkpoint_dir(path).is_dir():
        return path, None
    if path.parent.name == "checkpoints" and path.name.isdigit() and path.is_dir():
        return path.parent.parent, int(path.name)
    raise FileNotFoundError(
        f"config.init_from: {init_from} is neither a jaxlm workdir (a folder with checkpoints/) "
        "nor a checkpoint folder (<workdir>/checkpoints/<step>)"
    )


def _plain(value: Any) -> Any:
    """Tuples as lists, so JSON-read and in-memory config values compare equal."""
    return list(value) if isinstance(value, tuple | list) else value


def _vocab_axis(path: str, ndim: int) -> int | None:
    """The vocabulary axis of a leaf: rows of the embedding, columns of the output layer."""
    top = path.split("/")[0]
    if top == "embed" and path.endswith("embedding"):
        return 0
    if top == "head":
        return ndim - 1
    return None


def load_pretrained(
    init_from: str,
    params: PyTree,
    tokenizer: Any,
    *,
    model_config: ml_collections.ConfigDict | None = None,
    step: int | None = None,
) -> tuple[PyTree, VocabMapping]:
    """Pretrained parameters from a jaxlm checkpoint, mapped onto this run's vocabulary.

    Only the parameters are read (the optimizer starts fresh). Vocabulary-indexed leaves (the
    ``embed`` table's rows, the ``head`` layer's last axis) are mapped token by token: tokens in
    both vocabularies keep their trained rows, tokens new to this run keep the rows ``params``
    has (fresh initialisation); every other leaf must have exactly the checkpoint's shape.

    Args:
      init_from: a jaxlm workdir (its latest checkpoint) or ``<workdir>/checkpoints/<step>``.
      params: this run's freshly initialised parameters (they give shapes, dtypes and the
        fresh rows).
      tokenizer: this run's tokenizer (``kind`` and ``vocab``).
      model_config: this run's ``model`` section, to name the differing fields on a mismatch.
      step: which checkpoint of a workdir; the latest when None.

    Returns:
      ``(params, mapping)``: a tree like ``params`` (numpy leaves; put them on devices with
      the state's shardings), and the :class:`VocabMapping` to report.

    Raises:
      FileNotFoundError: ``init_from`` holds no checkpoint.
      ValueError: the checkpoint's tokenizer kind differs, or its model has other parameters or
        shapes (the message lists them and the differing ``model`` config fields).

    Example:
      >>> params, mapping = load_pretrained("runs/pretrain", state.params, tok)  # doctest: +SKIP
      >>> print(mapping.summary())  # doctest: +SKIP
    """
    import numpy as np

    from jaxlm import checkpoint_tools
    from jaxlm.data.tokenizers import tokenizer_from_json

    workdir, found_step = _resolve_checkpoint(init_from)
    saved_state, meta = checkpoint_tools.load_state(workdir, found_step if step is None else step)
    source = str(workdir if found_step is None else Path(init_from))
    saved_tok = tokenizer_from_json(meta["tokenizer"])
    if saved_tok.kind != tokenizer.kind:
        raise ValueError(
            f"config.init_from: {source} was trained with a {saved_tok.kind!r} tokenizer but this "
            f"run uses {tokenizer.kind!r} (config.data.tokenizer); fine-tuning needs the same kind"
        )
    old_index = {t: i for i, t in enumerate(saved_tok.vocab)}
    pairs = [(j, old_index[t]) for j, t in enumerate(tokenizer.vocab) if t in old_index]
    new_ids = np.array([j for j, _ in pairs], np.int64)
    old_ids = np.array([i for _, i in pairs], np.int64)
    current = set(tokenizer.vocab)
    mapping = VocabMapping(
        kept=len(pairs),
        new=tuple(t for t in tokenizer.vocab if t not in old_index),
        dropped=tuple(t for t in saved_tok.vocab if t not in current),
        source=source,
    )

    saved = {
        transforms.path_str(p): np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path(saved_state["params"])[0]
    }
    problems: list[str] = []
    out_leaves = []
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    for p, fresh in flat:
        path = transforms.path_str(p)
        old = saved.pop(path, None)
        if old is None:
            problems.append(f"{path}: not in the checkpoint")
            out_leaves.append(fresh)
            continue
        axis = _vocab_axis(path, old.ndim)
        want = list(fresh.shape)
        if axis is not None and old.ndim == len(want):
            want[axis] = old.shape[axis]
        if list(old.shape) != want:
            problems.append(f"{path}: checkpoint {tuple(old.shape)}, this model {fresh.shape}")
            out_leaves.append(fresh)
            continue
        if axis is None:
            out_leaves.append(old.astype(fresh.dtype))
            continue
        leaf = np.array(fresh, dtype=fresh.dtype, copy=True)
        index = [slice(None)] * leaf.ndim
        index[axis] = new_ids
        src = [slice(None)] * leaf.ndim
        src[axis] = old_ids
        leaf[tuple(index)] = old[tuple(src)].astype(fresh.dtype)
        out_leaves.append(leaf)
    problems += [f"{path}: only in the checkpoint" for path in sorted(saved)]
    if problems:
        old_model = meta.get("config", {}).get("model", {})
        now = model_config.to_dict() if model_config is not None else {}
        diffs = [
            f"model.{k}: checkpoint {v!r}" + (f", this run {now[k]!r}" if k in now else "")
            for k, v in sorted(old_model.items())
            if not now or _plain(now.get(k)) != _plain(v)
        ]
        raise ValueError(
            f"config.init_from: {source} holds a model of another shape:\n  "
            + "\n  ".join(problems[:20])
            + "\nSet this run's model config to the checkpoint's:\n  "
            + "\n  ".join(diffs)
        )
    return jax.tree_util.tree_unflatten(treedef, out_leaves), mapping
