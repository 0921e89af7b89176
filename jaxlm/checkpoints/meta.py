"""The ``meta`` item of a checkpoint: the run's config and tokenizer as JSON, and what may change
when a run resumes from it.

Older checkpoints are read through :func:`upgrade`, so every reader sees the current format:
format 1 (before each model owned its config fields) stored every model's fields in the
config's ``model`` section; they are trimmed to the fields of the checkpoint's model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from jaxlm.checkpoints.checksums import check_meta
from jaxlm.checkpoints.layout import FORMAT_VERSION, META_ITEM, PathLike, resolve
from jaxlm.errors import CheckpointError, IncompatibleCheckpoint

# Config fields that may change when a run resumes (they do not change shapes or meaning).
RESUMABLE_CHANGES = (
    "train.",
    "monitor.",  # what a run records about itself
    "optimizer.learning_rate",
    "optimizer.warmup_steps",
    "optimizer.end_lr_fraction",
    "optimizer.decay_start_step",
    "optimizer.decay_every",
    "optimizer.decay_factor",
    "data.eval_batch_size",
    "data.data_dir",
    "data.tokenizer_path",  # a resumed run uses the tokenizer its checkpoint holds
    "parallel.",  # restore reshards onto this run's mesh
    "monitor.",  # health checks and alerts (the spike guard's on/off: below)
    "name",
)


def _loss_scaled(precision: Any) -> Any:
    from jaxlm.precision import Policy

    try:
        return Policy.from_string(precision).needs_loss_scaling
    except Exception:  # an unparsable value: only the very same value is compatible
        return ("unparsed", precision)


# Fields that may change as long as the optimizer state keeps its structure: the value's class
# (what the key function returns) must stay the same. Clipping on/off adds or removes a chain
# element, "plateau" adds reduce-on-plateau's state, float16 adds the loss-scale state.
RESUMABLE_WITHIN_CLASS = {
    "optimizer.clip_norm": lambda v: bool(v),
    "optimizer.schedule": lambda v: v == "plateau",
    "precision": _loss_scaled,
    # the spike guard (jaxlm.transforms.spikes) wraps the optimizer when either check is on
    "monitor.spike_factor": lambda v: bool(v),
    "monitor.grad_factor": lambda v: bool(v),
}

# What a field means in a checkpoint written before the field existed, where that differs from
# its default for new runs. Such a run resumes as it was trained unless the field is set.
LEGACY_VALUES = {
    "optimizer.decay_mask": "all",  # weight decay on every parameter, as before the mask
    "data.windows": "streams",  # every model read contiguous streams before random windows
}


def config_json(config: ml_collections.ConfigDict) -> dict:
    """A config as plain JSON data."""
    return json.loads(config.to_json())


def make_meta(config: ml_collections.ConfigDict, tokenizer: Any, **extra: Any) -> dict[str, Any]:
    """The ``meta`` item saved with every checkpoint: format, config and tokenizer JSON.

    Args:
      config: the run config.
      tokenizer: the run's tokenizer (``to_json()``), or its JSON.
      **extra: more JSON fields (e.g. ``averaged_from``).

    Returns:
      JSON data.

    Example:
      >>> from jaxlm.config import load_config
      >>> meta = make_meta(load_config("lstm:smoke"), {"kind": "byte"})
      >>> meta["format"], meta["config"]["model"]["hidden_sizes"]
      (2, [64, 64])
    """
    tok = tokenizer if isinstance(tokenizer, dict) else tokenizer.to_json()
    return {"format": FORMAT_VERSION, "config": config_json(config), "tokenizer": tok, **extra}


def upgrade(meta: dict[str, Any]) -> dict[str, Any]:
    """The meta of a checkpoint of any format in the current format (a copy).

    Args:
      meta: JSON as stored.

    Returns:
      The same data in format :data:`~jaxlm.checkpoints.layout.FORMAT_VERSION`.

    Example:
      >>> old = {"config": {"model": {"name": "lstm", "hidden_sizes": [8], "num_heads": 4}}}
      >>> upgrade(old)["config"]["model"]  # an LSTM has no heads
      {'name': 'lstm', 'hidden_sizes': [8]}
    """
    meta = json.loads(json.dumps(meta))
    config = meta.get("config")
    if meta.get("format", 1) < 2 and isinstance(config, dict):
        config["model"] = _own_fields(config.get("model") or {})
    meta["format"] = FORMAT_VERSION
    return meta


def _own_fields(model: dict[str, Any]) -> dict[str, Any]:
    """A format-1 model section trimmed to its model's own fields (unknown models: as is)."""
    from jaxlm.models import MODELS, model_defaults

    name = model.get("name")
    if name not in MODELS:
        return model
    keep = {"name", *model_defaults(name)}
    return {k: v for k, v in model.items() if k in keep}


def read_meta(path: PathLike, step: int | None = None) -> dict[str, Any]:
    """The ``meta`` item of a checkpoint, upgraded: ``{"format", "config", "tokenizer", ...}``.

    Args:
      path: a checkpoint path (see :func:`jaxlm.checkpoints.resolve`).
      step: which checkpoint of a run folder.

    Returns:
      The JSON data.

    Raises:
      CheckpointError: the item is missing or unreadable, or not the JSON that was saved (its
        digest; the message names it).

    Example:
      >>> read_meta("runs/lstm_smoke")["tokenizer"]["kind"]  # doctest: +SKIP
      'char'
    """
    item = resolve(path, step) / META_ITEM
    handler = ocp.JsonCheckpointHandler()
    try:
        meta = handler.restore(epath.Path(item))
    except Exception as e:  # orbax and json raise many types
        raise CheckpointError(
            f"cannot read {item} (the config and tokenizer JSON): {type(e).__name__}: {e}"
        ) from e
    finally:
        handler.close()
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{item} holds no config")
    check_meta(meta, item.parent)
    return upgrade(meta)


def run_config(saved: dict[str, Any]) -> ml_collections.ConfigDict:
    """The whole config of a saved run: today's defaults for its model, overlaid with the saved
    values, fields the checkpoint predates at their :data:`LEGACY_VALUES`.

    Args:
      saved: an upgraded config JSON (``read_meta(...)["config"]``).

    Returns:
      A locked ConfigDict. Saved fields this version no longer has are left out.

    Example:
      >>> config = run_config({"model": {"name": "gru", "hidden_sizes": [32]}, "seed": 3})
      >>> config.model.hidden_sizes, config.seed, config.optimizer.decay_mask
      ((32,), 3, 'all')
    """
    from jaxlm.config import base_config

    config = base_config(saved.get("model", {}).get("name", "lstm"))
    _overlay(config, saved)
    present = _flatten(saved)
    for dotted, value in LEGACY_VALUES.items():
        if dotted not in present:
            section, _, field = dotted.rpartition(".")
            config[section][field] = value
    config.lock()
    return config


def _overlay(config: ml_collections.ConfigDict, saved: dict[str, Any]) -> None:
    """Sets every field of ``config`` that ``saved`` holds (JSON lists as the field's tuples)."""
    for key, value in saved.items():
        if key not in config:
            continue
        if isinstance(config[key], ml_collections.ConfigDict) and isinstance(value, dict):
            _overlay(config[key], value)
        else:
            config[key] = _as_tuples(value) if isinstance(config[key], tuple) else value


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _differences(saved: dict, current: ml_collections.ConfigDict) -> tuple[list[str], dict]:
    """``(diffs, adopted)``: the refusing differences, and the legacy values to resume with."""
    from jaxlm.config import base_config

    old = _flatten(saved)
    new = _flatten(config_json(current))
    defaults = _flatten(config_json(base_config(current.model.name)))
    diffs, adopted = [], {}
    for key in sorted(set(old) | set(new)):
        within = RESUMABLE_WITHIN_CLASS.get(key)
        if old.get(key) == new.get(key) or (key.startswith(RESUMABLE_CHANGES) and not within):
            continue
        # A field newer than the checkpoint, left at its default: no reason to refuse. Where
        # the default changed behaviour, the run resumes with the old one.
        if key not in old and key in defaults and new[key] == defaults[key]:
            if key in LEGACY_VALUES:
                adopted[key] = LEGACY_VALUES[key]
            continue
        if within and key in old and key in new and within(old[key]) == within(new[key]):
            continue
        diffs.append(f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}")
    return diffs, adopted


def incompatible_fields(saved: dict, current: ml_collections.ConfigDict) -> list[str]:
    """Config fields that differ between a saved run and this one and would break resuming.

    A field the saved config lacks was added to jaxlm after the checkpoint was written; left at
    its default it is no reason to refuse the checkpoint.

    Args:
      saved: the config JSON stored with the checkpoint, upgraded (``read_meta(...)["config"]``).
      current: this run's config.

    Returns:
      ``"field: saved -> current"`` lines, empty when the checkpoint can be resumed.

    Example:
      >>> from jaxlm.config import load_config
      >>> saved = config_json(load_config("lstm:smoke"))
      >>> incompatible_fields(saved, load_config("lstm:smoke"))
      []
    """
    return _differences(saved, current)[0]


def resume_config(
    saved: dict, current: ml_collections.ConfigDict, where: Path | str = "the workdir"
) -> ml_collections.ConfigDict:
    """The config a run resumes with: ``current``, with the legacy value of every field the
    checkpoint predates and ``current`` leaves at its default.

    Args:
      saved: the config JSON stored with the checkpoint, upgraded (``read_meta(...)["config"]``).
      current: this run's config.
      where: the checkpoint, for the message.

    Returns:
      A config to resume with (``current`` itself when nothing is adopted).

    Raises:
      IncompatibleCheckpoint: fields differ that resuming cannot change; the message lists them.

    Example:
      >>> from jaxlm.config import load_config
      >>> saved = config_json(load_config("lstm:smoke"))
      >>> resume_config(saved, load_config("lstm:smoke")).model.hidden_sizes  # the same model
      (64, 64)
      >>> wider = load_config("lstm:smoke"); wider.model.hidden_sizes = (128, 128)
      >>> resume_config(saved, wider, where="runs/x")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      jaxlm.errors.IncompatibleCheckpoint: runs/x holds a checkpoint from an incompatible config:
        model.hidden_sizes: [64, 64] -> [128, 128]
      ...
    """
    diffs, adopted = _differences(saved, current)
    if diffs:
        raise IncompatibleCheckpoint(
            f"{where} holds a checkpoint from an incompatible config:\n  "
            + "\n  ".join(diffs)
            + "\nUse another --workdir, or run with the saved values to resume it."
        )
    if not adopted:
        return current
    config = current.copy_and_resolve_references()
    config.unlock()
    for dotted, value in adopted.items():
        section, _, field = dotted.rpartition(".")
        config[section][field] = value
    config.lock()
    return config
