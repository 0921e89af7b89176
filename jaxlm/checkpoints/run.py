"""Reading a trained run back: the model, its parameters, tokenizer and config in one call, and
pretrained parameters mapped onto another vocabulary for fine-tuning.

The state a checkpoint holds is rebuilt with the trainer's own state builder
(:func:`jaxlm.state.build`), so its optimizer state has its real structure: NT-ASGD runs give
their running average of the parameters, as the trainer evaluates them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from jaxlm import transforms
from jaxlm.checkpoints.checksums import check_model_files
from jaxlm.checkpoints.layout import (
    CONFIG_FILE,
    NGRAM_MODEL,
    TOKENIZER_FILE,
    PathLike,
    absolute,
    is_ngram_run,
    resolve,
    run_folder,
)
from jaxlm.checkpoints.meta import run_config, upgrade
from jaxlm.checkpoints.read import load_state, metadata_tree
from jaxlm.data.tokenizers import GPT2_RECORD, load_tokenizer, tokenizer_from_json
from jaxlm.errors import CheckpointError, IncompatibleCheckpoint
from jaxlm.tree import flatten, path_str, unflatten_like

PyTree = Any


class Run(NamedTuple):
    """A trained run, read back.

    Attributes:
      model: the flax module (call ``model.apply({"params": params}, tokens, carry)``), or for
        an n-gram run the :class:`~jaxlm.models.ngram.NGramModel` itself (its arrays
        memory-mapped from ``model.npz``).
      params: the parameters to evaluate with, numpy on the host (NT-ASGD's average once it
        started); None for an n-gram run.
      tokenizer: the run's tokenizer (None when it cannot be read: a GPT-2 converted from a
        folder without its tokenizer files).
      config: the run's whole config.
    """

    model: Any
    params: PyTree
    tokenizer: Any
    config: ml_collections.ConfigDict


def load_run(path: PathLike, step: int | None = None) -> Run:
    """Reads a trained run: model, parameters, tokenizer and config, ready to use.

    Args:
      path: a run folder (its latest checkpoint, or ``step``), its ``checkpoints/`` folder, one
        ``<workdir>/checkpoints/<step>`` folder, or an n-gram run's folder.
      step: which checkpoint of a run folder.

    Returns:
      A :class:`Run`.

    Raises:
      CheckpointError: nothing readable is there, or its arrays or model files are not the
        ones saved (checksums); the message names the folder or file and why.

    Example:
      >>> model, params, tokenizer, config = load_run("runs/lstm")  # doctest: +SKIP
      >>> tokens = tokenizer.encode("The ")[None]  # doctest: +SKIP
      >>> carry = model.initial_carry(1)  # doctest: +SKIP
      >>> logits, _, _ = model.apply({"params": params}, tokens, carry)  # doctest: +SKIP
    """
    if is_ngram_run(path):
        return _load_ngram_run(absolute(path))
    from jaxlm.state import build  # the state builder sits above the checkpoints it reads

    ckpt = resolve(path, step)
    tree = metadata_tree(ckpt)
    nt_asgd = "opt_state" in tree
    state, meta = load_state(ckpt, parts=("params", "opt_state") if nt_asgd else ("params",))
    config = run_config(meta["config"])
    setup = build(config, _vocab_size(tree, ckpt))
    params = state["params"]
    if config.optimizer.get("nt_asgd_nonmono", 0) and nt_asgd:
        params = averaged_params(state["opt_state"], params, setup.abstract.opt_state, ckpt)
    return Run(setup.model, params, _tokenizer(meta["tokenizer"]), config)


def _vocab_size(tree: Any, ckpt: Path) -> int:
    try:
        return int(tree["params"]["embed"]["embedding"].shape[0])
    except (KeyError, TypeError):
        raise CheckpointError(f"{ckpt}: no params/embed/embedding to size the vocabulary") from None


def _tokenizer(data: dict[str, Any]) -> Any:
    try:
        return tokenizer_from_json(data)
    except (ValueError, KeyError):  # another library's tokenizer, kept as a record
        return None


def _load_ngram_run(folder: Path) -> Run:
    from jaxlm.models.ngram import NGramModel

    try:
        config = run_config(
            upgrade({"config": json.loads((folder / CONFIG_FILE).read_text())})["config"]
        )
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{folder / CONFIG_FILE}: cannot read the run's config ({e})"
        ) from None
    check_model_files(folder)  # a damaged model is refused, not scored
    # memory-mapped: scoring reads the pages it searches, not the whole model
    model = NGramModel.load(folder / NGRAM_MODEL, mmap=True)
    return Run(model, None, load_tokenizer(folder / TOKENIZER_FILE), config)


def averaged_params(
    saved_opt_state: PyTree, params: PyTree, abstract_opt_state: PyTree, where: PathLike = ""
) -> PyTree:
    """The parameters to evaluate: NT-ASGD's average once it started, else ``params``.

    A loaded optimizer state is plain dicts and lists; it is put back into the structure the
    config builds (``abstract_opt_state``) so that :func:`jaxlm.transforms.averaged_params`,
    the function the trainer evaluates with, finds the averaging state.

    Args:
      saved_opt_state: the ``opt_state`` part of :func:`load_state`.
      params: the loaded parameters.
      abstract_opt_state: ``jax.eval_shape`` of the optimizer state the run's config builds.
      where: the checkpoint, for the message.

    Returns:
      A numpy tree like ``params``.

    Raises:
      CheckpointError: the saved optimizer state has another structure than the config builds.
    """
    flat = flatten(saved_opt_state)
    try:
        opt_state = unflatten_like(abstract_opt_state, flat)
    except KeyError as e:
        raise CheckpointError(
            f"{where}: the saved optimizer state has no {e.args[0]!r}, which its config builds"
        ) from None
    return jax.tree.map(np.asarray, transforms.averaged_params(opt_state, params))


# --------------------------------------------------------------------------------------------
# Pretrained parameters for fine-tuning.


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


def _vocab_axis(path: str, ndim: int) -> int | None:
    """The vocabulary axis of a leaf: rows of the embedding, columns of the output layer."""
    top = path.split("/")[0]
    if top == "embed" and path.endswith("embedding"):
        return 0
    if top == "head":
        return ndim - 1
    return None


def load_pretrained(
    init_from: PathLike,
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
      init_from: a checkpoint path (see :func:`jaxlm.checkpoints.resolve`).
      params: this run's freshly initialised parameters (they give shapes, dtypes and the
        fresh rows).
      tokenizer: this run's tokenizer (``kind`` and ``vocab``).
      model_config: this run's ``model`` section, to name the differing fields on a mismatch.
      step: which checkpoint of a run folder; the latest when None.

    Returns:
      ``(params, mapping)``: a tree like ``params`` (numpy leaves; put them on devices with
      the state's shardings), and the :class:`VocabMapping` to report.

    Raises:
      CheckpointError: ``init_from`` holds no checkpoint.
      IncompatibleCheckpoint: its tokenizer kind differs, or its model has other parameters or
        shapes (the message lists them and the differing ``model`` config fields).

    Example:
      >>> params, mapping = load_pretrained("runs/pretrain", state.params, tok)  # doctest: +SKIP
      >>> print(mapping.summary())  # doctest: +SKIP
    """
    try:
        ckpt = resolve(init_from, step)
    except CheckpointError as e:
        raise CheckpointError(f"config.init_from: {e}") from None
    saved_state, meta = load_state(ckpt, parts=("params",))
    source = str(ckpt if absolute(init_from) == ckpt else run_folder(ckpt))
    saved_tok = _pretrained_tokenizer(meta["tokenizer"], tokenizer, source)
    if saved_tok.kind != tokenizer.kind:
        raise IncompatibleCheckpoint(
            f"config.init_from: {source} was trained with a {saved_tok.kind!r} tokenizer but this "
            f"run uses {tokenizer.kind!r} (config.data.tokenizer); fine-tuning needs the same kind"
        )
    mapping, new_ids, old_ids = _map_vocabulary(saved_tok.vocab, tokenizer.vocab, source)
    saved = {
        path_str(p): np.asarray(x)
        for p, x in jax.tree_util.tree_leaves_with_path(saved_state["params"])
    }
    out, problems = _carry_over(saved, params, new_ids, old_ids)
    if problems:
        raise IncompatibleCheckpoint(
            f"config.init_from: {source} holds a model of another shape:\n  "
            + "\n  ".join(problems[:20])
            + "\nSet this run's model config to the checkpoint's:\n  "
            + "\n  ".join(_model_diffs(meta["config"].get("model", {}), model_config))
        )
    return out, mapping


def _pretrained_tokenizer(data: dict[str, Any], tokenizer: Any, source: str) -> Any:
    """The tokenizer a pretrained checkpoint was trained with. A GPT-2 converted without its
    tokenizer files holds only GPT-2's ids: a ``gpt2`` run with as many tokens reads them."""
    if data.get("kind") != GPT2_RECORD:
        return tokenizer_from_json(data)
    if tokenizer.kind == "gpt2" and tokenizer.vocab_size == data.get("vocab_size"):
        return tokenizer  # the ids are GPT-2's on both sides
    raise IncompatibleCheckpoint(
        f"config.init_from: {source} is a GPT-2 converted without its tokenizer "
        f"({data.get('vocab_size')} ids, no vocabulary); fine-tune it with "
        "config.data.tokenizer=gpt2 and config.data.tokenizer_path= the folder it came from, "
        "or convert it again from a folder with vocab.json + merges.txt"
    )


def _map_vocabulary(
    old: list[str], new: list[str], source: str
) -> tuple[VocabMapping, np.ndarray, np.ndarray]:
    """The mapping, and the aligned new and old ids of the tokens both vocabularies hold."""
    old_index = {t: i for i, t in enumerate(old)}
    pairs = [(j, old_index[t]) for j, t in enumerate(new) if t in old_index]
    current = set(new)
    mapping = VocabMapping(
        kept=len(pairs),
        new=tuple(t for t in new if t not in old_index),
        dropped=tuple(t for t in old if t not in current),
        source=source,
    )
    new_ids = np.array([j for j, _ in pairs], np.int64)
    old_ids = np.array([i for _, i in pairs], np.int64)
    return mapping, new_ids, old_ids


def _carry_over(
    saved: dict[str, np.ndarray], params: PyTree, new_ids: np.ndarray, old_ids: np.ndarray
) -> tuple[PyTree, list[str]]:
    """``params`` with the saved values carried over leaf by leaf, and the mismatches."""
    problems: list[str] = []
    out_leaves = []
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    for p, fresh in flat:
        path = path_str(p)
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
        elif axis is None:
            out_leaves.append(old.astype(fresh.dtype))
        else:
            leaf = np.array(fresh, dtype=fresh.dtype, copy=True)
            index, src = [slice(None)] * leaf.ndim, [slice(None)] * leaf.ndim
            index[axis], src[axis] = new_ids, old_ids
            leaf[tuple(index)] = old[tuple(src)].astype(fresh.dtype)
            out_leaves.append(leaf)
    problems += [f"{path}: only in the checkpoint" for path in sorted(saved)]
    return jax.tree_util.tree_unflatten(treedef, out_leaves), problems


def _plain(value: Any) -> Any:
    """Tuples as lists, so JSON-read and in-memory config values compare equal."""
    return list(value) if isinstance(value, tuple | list) else value


def _model_diffs(old_model: dict, model_config: ml_collections.ConfigDict | None) -> list[str]:
    now = model_config.to_dict() if model_config is not None else {}
    return [
        f"model.{k}: checkpoint {v!r}" + (f", this run {now[k]!r}" if k in now else "")
        for k, v in sorted(old_model.items())
        if not now or _plain(now.get(k)) != _plain(v)
    ]
