"""Run configs: the fields every recipe shares, loading a recipe, and checking a config whole.

A run config is an ``ml_collections.ConfigDict`` with sections ``data``, ``model``,
``optimizer``, ``finetune``, ``parallel``, ``train`` and ``monitor``. The ``model`` section
holds the chosen model's own fields at its own defaults (:func:`jaxlm.models.model_defaults`:
the model's class is the one place they are written). Recipes are Python files with
``get_config(arg=None)``; the shipped ones are in :mod:`jaxlm.configs`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ml_collections

from jaxlm.errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parent / "configs"


def base_config(model: str = "lstm") -> ml_collections.ConfigDict:
    """Every field the trainer reads, at the defaults, for a model of the registry.

    Args:
      model: a name of :data:`jaxlm.models.MODELS`; the ``model`` section gets that model's
        fields and defaults.

    Returns:
      An unlocked ConfigDict.

    Example:
      >>> base_config("transformer").model.num_heads
      4
    """
    from jaxlm.models import MODELS, model_defaults

    if model not in MODELS:
        raise ConfigError(f"config.model.name: unknown model {model!r}; expected one of {MODELS}")
    c = ml_collections.ConfigDict()
    c.name = model
    c.seed = 0
    c.precision = "float32"
    c.init_from = ""
    c.data = _data()
    c.model = ml_collections.ConfigDict(
        {"name": model, **{k: _any_type(v) for k, v in model_defaults(model).items()}}
    )
    c.optimizer = _optimizer()
    c.finetune = _finetune()

    c.parallel = ml_collections.ConfigDict()
    # "data" (parameters replicated), "fsdp" (parameters and optimizer state sharded over
    # "data"), "tensor" (layers split over "model"), "fsdp+tensor": see jaxlm.sharding
    c.parallel.strategy = "data"
    c.parallel.data = 0  # data-parallel mesh axis size; 0: every device not used by "model"
    c.parallel.model = 1  # model-parallel mesh axis size
    c.parallel.rules = ()  # ((pattern on parameter path, PartitionSpec tuple), ...), before
    # the strategy's own rules

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 2000
    c.train.log_every = 50
    c.train.eval_every = 500  # evaluations during training, written as split "eval"
    c.train.eval_steps = 0  # windows per evaluation during training; 0: the whole split
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    c.train.carry_state = True  # recurrent models: carry the hidden state window to window
    c.train.sample_tokens = 300
    c.train.sample_prompt = "The "
    c.train.sample_temperature = 0.8
    c.train.label_smoothing = 0.0
    c.monitor = _monitor()
    return c


def _monitor() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    # Write report.html at the end (python -m jaxlm.runs report): about a second, most of it
    # importing matplotlib; smoke runs (tests) leave it off.
    m.report = True
    # Diagnostics and resource metrics (docs/monitoring.md): per-parameter gradient, parameter
    # and update norms computed by the compiled step, fetched every this many steps (0: off,
    # and the step computes none)
    m.diagnostics_every = 100
    m.histograms_every = 500  # parameter histograms to TensorBoard, host side (0: off)
    m.peak_flops = 0.0  # FLOP/s of one device for the MFU; 0: the table by device kind, or
    # this CPU's measured matmul peak
    # ---- Health checks and alerts (jaxlm.train.health, docs/monitoring.md) ----
    m.nonfinite = "fail"  # a NaN/inf training loss: "fail" (stop, say why) or "warn" (an event)
    m.spike_factor = 0.0  # > 0: a loss above this times its moving average is a spike; 0: off
    # "warn" (an event), "skip" (the step's update is not applied) or "rollback" (restore the
    # last checkpoint, skip the offending steps' windows and go on; recorded in the workdir)
    m.spike_policy = "warn"
    m.grad_factor = 0.0  # > 0: a gradient norm above this times its moving average; 0: off
    m.grad_policy = "warn"  # "warn", "skip" or "rollback", as spike_policy
    m.spike_warmup = 50  # steps averaged before either check flags anything
    m.spike_decay = 0.99  # the moving averages' decay per step
    m.spike_max_consecutive = 10  # flagged steps in a row after which the level is the new normal
    m.max_rollbacks = 5  # rollbacks a run may make before it fails
    m.stall_seconds = 1800.0  # no step finished for this long (outside evaluation and
    # saving): the run is "stalled" (status.json, an event); 0: no watchdog
    m.gate_every = 0  # LSTMs: the share of saturated gates on a held batch every this many
    # steps; 0: off
    m.gate_saturation = 0.01  # a sigmoid gate below this or above 1 - this is saturated (the
    # cell candidate's tanh: |tanh| above 1 - this)
    m.gate_warn_fraction = 0.5  # warn when a layer's share of saturated gates exceeds this
    m.on_event = "none"  # "command": run monitor.command on a failure, crash, stall or spike
    m.command = ""  # a shell command; the event is in its environment (JAXLM_EVENT, ...)
    m.inject = ""  # testing aid: faults at steps, "nan@K,spike@K,sleep@K:SECONDS"
    # ---- end of health checks ----
    return m


def _data() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.corpus = "builtin"  # "builtin" (pydoc topics) or "text_files"
    d.path = ""  # text_files: one file, or a folder with *train*, *valid* and *test* files
    d.split = (0.9, 0.05, 0.05)  # one-file corpora: train / validation / test fractions
    d.tokenizer = "char"  # "char", "byte", "word", or subword: "bpe", "unigram", "gpt2"
    d.vocab_size = 0  # word: keep the most frequent (0 = all); bpe, unigram: required (>= 258)
    d.tokenizer_path = ""  # gpt2: a Hugging Face folder (vocab.json + merges.txt; tokenizer.json)
    d.min_count = 1  # word: drop rarer words to <unk>
    d.data_dir = ""  # TFDS data_dir; default $JAXLM_DATA_DIR or ~/.cache/jaxlm/tfds
    d.batch_size = 32
    d.seq_len = 128
    d.eval_batch_size = 32
    d.augment = _augment()
    # Training windows: "streams" (B contiguous streams, the state carried between windows),
    # "random" (each window at a random offset, drawn from (seed, step)), or "auto": random when
    # train.carry_state is False (the Transformer), streams otherwise. See docs/data.md.
    d.windows = "auto"
    # Several corpora in one run: "[name=]corpus[:path]:weight,..." e.g.
    # "builtin:0.3,shakespeare=text_files:data/input.txt:0.7" (replaces corpus and path). The
    # first source (or mixture_target) is the target: its validation loss is the run's.
    d.mixture = ""
    d.mixture_target = ""  # a source's name; "": the first
    d.resample = ml_collections.ConfigDict()
    d.resample.kind = "none"  # "none", "bootstrap" (units drawn with replacement), "upsample"
    d.resample.unit = "line"  # bootstrap: "line" or "document" (blank-line separated)
    d.resample.factor = 1  # upsample: repeat the training split this many times, new offsets
    d.resample.temperature = 1.0  # mixtures: source probabilities p_i ∝ weight_i^(1/τ)
    return d


def _augment() -> ml_collections.ConfigDict:
    # On-device augmentation of training windows (jaxlm.data.augment, docs/data.md): each rate
    # 0 is off; all 0 (the default) leaves the compiled step and the batches as they were.
    a = ml_collections.ConfigDict()
    a.replace = 0.0  # each token (or word) replaced by one drawn from the source, with this prob.
    a.delete = 0.0  # each token (or word) deleted with this probability
    a.insert = 0.0  # one drawn from the source inserted before each token (or word), this prob.
    a.swap = 0.0  # each token (or word) exchanged with a neighbour with this probability
    a.source = "unigram"  # replacing and inserted tokens: "unigram" (the training split's
    # token frequencies) or "uniform" (every id of the vocabulary alike); words: the same over
    # the word table (the training split's word counts, or every word of the table alike)
    a.unit = "token"  # "word": every edit acts on whole words (a word: its blank, then the rest)
    a.word_table = 4096  # unit="word": the table of words drawn holds the split's K most frequent
    a.word_tokens = 16  # ... of at most this many tokens (a shape: fixed across corpora)
    a.extra = -1  # raw tokens read past the window for deletions to eat; -1: sized from delete
    return a


def _optimizer() -> ml_collections.ConfigDict:
    o = ml_collections.ConfigDict()
    o.name = "adam"  # "adam", "adamw" or "sgd"
    o.learning_rate = 2e-3
    # "constant", "cosine" (warmup + cosine), "step", "slanted_triangular", "sgdr" (warm
    # restarts), "epoch_step" (Zaremba) or "plateau" (constant, cut when validation stalls)
    o.schedule = "cosine"
    o.warmup_steps = 100
    o.end_lr_fraction = 0.05  # cosine: final rate as a fraction of the peak
    o.decay_start_step = 0  # step: first decay at this step
    o.decay_every = 1000  # step: then every this many steps
    o.decay_factor = 0.5  # step: multiply the rate by this at each decay
    o.clip_norm = 1.0  # 0 disables
    o.weight_decay = 0.0
    o.decay_mask = "weights"  # weight decay on: "weights" (matrices, not embeddings, biases or
    # norms) or "all" (every parameter; checkpoints written before this field resume so)
    o.momentum = 0.0  # sgd
    o.b1 = 0.9
    o.b2 = 0.999
    o.cut_frac = 0.1  # slanted_triangular: fraction of steps rising
    o.stlr_ratio = 32.0  # slanted_triangular: peak / lowest rate
    o.sgdr_period = 1000  # sgdr: first cycle length in steps (ends at end_lr_fraction)
    o.sgdr_mult = 2.0  # sgdr: each cycle this many times longer
    o.steps_per_epoch = 0  # epoch_step: optimizer steps per epoch (required)
    o.decay_after_epochs = 4  # epoch_step: epochs at the full rate, then decay_factor
    o.plateau_factor = 0.5  # plateau: scale on the rate after a validation plateau
    o.plateau_patience = 2  # plateau: evaluations without improvement before that
    o.plateau_cooldown = 0  # plateau: evaluations to wait after a reduction
    o.nt_asgd_nonmono = 0  # > 0: AWD-LSTM's NT-ASGD averaging with this interval
    o.centralize = False  # gradient centralization of weight matrices (not embeddings)
    o.accumulate_steps = 1  # > 1: one update per this many micro-batches
    o.skip_nonfinite = False  # skip updates with NaN/inf gradients
    o.max_nonfinite = 10  # skip_nonfinite: consecutive skips before giving up
    return o


def _finetune() -> ml_collections.ConfigDict:
    # Fine-tuning a pretrained model (set init_from); see docs/finetuning.md.
    f = ml_collections.ConfigDict()
    # "full", "freeze_all_but_last", "tune_last_layers", "feature", "gradual_unfreeze" or
    # "discriminative".
    f.strategy = "full"
    f.num_last_layers = 1  # freeze_all_but_last, tune_last_layers: layers that train
    f.lr_factor = 0.1  # feature: the output layer's rate is this times the base rate
    f.unfreeze_every = 100  # gradual_unfreeze: steps between unfreezing groups
    f.discriminative_factor = 2.6  # discriminative: each lower group's rate is divided
    f.clip_norm = 0.25  # tune_last_layers: global-norm clipping
    f.l2 = 1e-5  # tune_last_layers: L2 coefficient added to the gradient
    f.dropout = 0.3  # tune_last_layers: model.dropout is raised to at least this
    return f


# --------------------------------------------------------------------------------------------
# Loading recipes.


def recipes() -> list[str]:
    """The names of the shipped recipes (``jaxlm/configs/*.py``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.py") if not p.stem.startswith("_"))


def recipe_file(spec: str) -> tuple[Path, str | None]:
    """The file and variant a ``--config`` value names: a path, or a shipped recipe's name.

    Args:
      spec: ``path/to/recipe.py[:variant]`` or ``name[:variant]`` (``lstm:smoke``).

    Returns:
      ``(file, variant)``; variant None when not given.

    Raises:
      ConfigError: no such file and no such recipe.

    Example:
      >>> recipe_file("lstm:smoke")[0].name, recipe_file("lstm:smoke")[1]
      ('lstm.py', 'smoke')
    """
    path, _, arg = spec.partition(":")
    file = Path(path).expanduser()
    if file.is_file():
        return file, arg or None
    shipped = RECIPES_DIR / f"{file.stem}.py"
    if shipped.is_file() and file.suffix in ("", ".py") and str(file.parent) in (".", "configs"):
        return shipped, arg or None
    raise ConfigError(
        f"config file not found: {path} (shipped recipes: {', '.join(recipes())}; give a path "
        "or a name, e.g. --config=lstm:smoke)"
    )


def resolve_config_arg(arg: str) -> str:
    """A command-line argument with ``--config=NAME[:variant]`` turned into the recipe's path.

    Other arguments, and ``--config`` values that are existing files, are returned unchanged.
    """
    if not arg.startswith("--config="):
        return arg
    file, variant = recipe_file(arg[len("--config=") :])
    return f"--config={file}" + (f":{variant}" if variant else "")


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads a recipe the way ``--config`` does: ``"lstm:smoke"`` or ``"configs/lstm.py"``.

    Args:
      spec: a shipped recipe's name or a path to a config file, optionally followed by
        ``:variant``.

    Returns:
      The locked ConfigDict that the file's ``get_config(variant)`` returns.

    Raises:
      ConfigError: no such recipe, or the recipe has no such variant.

    Example:
      >>> load_config("lstm:smoke").train.num_steps
      60
    """
    file, arg = recipe_file(spec)
    module_spec = importlib.util.spec_from_file_location(f"{file.stem}_config", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg)


def shrink_to_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Turns a recipe into its ``smoke`` variant: a tiny model and run that finish in seconds.

    Args:
      c: an unlocked config; its ``name`` gets a ``_smoke`` suffix.

    Returns:
      The same config, changed in place.
    """
    c.name = f"{c.name}_smoke"
    c.data.batch_size = 8
    c.data.seq_len = 32
    c.data.eval_batch_size = 8
    c.model.embed_dim = 32
    if "hidden_sizes" in c.model:
        c.model.hidden_sizes = (64, 64)
    c.train.num_steps = 60
    c.train.log_every = 20
    c.train.eval_every = 30
    c.train.eval_steps = 20
    c.train.checkpoint_every = 30
    c.train.sample_tokens = 40
    c.monitor.report = False  # matplotlib's import alone would double a smoke run's final second
    c.optimizer.warmup_steps = 10
    return c


# --------------------------------------------------------------------------------------------
# Validation.


@dataclasses.dataclass(frozen=True)
class _Range:
    """The values a field may hold (``ok``), and how the error message says so."""

    expected: str
    ok: Callable[[Any], bool]

    def means(self, text: str) -> _Range:
        """The same range with a word on its special values: ``a positive integer (1: off)``."""
        return _Range(f"{self.expected} ({text})", self.ok)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    """A finite int or float (not a bool): NaN and infinities are in no range."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_seq(value: Any) -> bool:
    return isinstance(value, list | tuple)  # lists: configs read back from JSON


def _real(expected: str, test: Callable[[float], bool]) -> _Range:
    return _Range(expected, lambda v: _is_real(v) and test(v))


def _tuple_of(item: _Range, expected: str, *, min_len: int = 0) -> _Range:
    return _Range(expected, lambda v: _is_seq(v) and len(v) >= min_len and all(map(item.ok, v)))


def _any_type(default: Any) -> Any:
    """A None default as a field that takes any type (``memory_limit``: bytes, "4GB" or a
    fraction), so a locked config and ``--config.model.x=...`` can still set it."""
    if default is None:
        return ml_collections.FieldReference(None, field_type=object)
    return default


def _is_memory_limit(value: Any) -> bool:
    from jaxlm.models.ngram.chunked import parse_memory_limit

    try:
        parse_memory_limit(value)
    except ValueError:
        return False
    return True


def _one_of(*names: str) -> _Range:
    return _Range(f"one of {names}", lambda v: isinstance(v, str) and v in names)


def _is_rules(value: Any) -> bool:
    """``((pattern, (axis or None or (axes...), ...)), ...)``, each pattern a valid regex."""

    def axis(a: Any) -> bool:
        return (
            a is None or isinstance(a, str) or (_is_seq(a) and all(isinstance(x, str) for x in a))
        )

    def rule(r: Any) -> bool:
        if not (_is_seq(r) and len(r) == 2 and isinstance(r[0], str) and _is_seq(r[1])):
            return False
        try:
            re.compile(r[0])
        except re.error:
            return False
        return all(map(axis, r[1]))

    return _is_seq(value) and all(map(rule, value))


def _is_split(value: Any) -> bool:
    """Train, validation and test fractions: an empty split cannot be evaluated."""
    return (
        _is_seq(value)
        and len(value) == 3
        and all(_is_real(x) and x > 0 for x in value)
        and abs(sum(value) - 1.0) <= 1e-6
    )


def _is_cutoffs(value: Any) -> bool:
    """N-gram cut-offs: () or counts >= 0, non-decreasing, the unigrams' (first) 0."""
    if not (_is_seq(value) and all(_is_int(c) and c >= 0 for c in value)):
        return False
    return not value or (
        value[0] == 0 and all(a <= b for a, b in zip(value, value[1:], strict=False))
    )


def _is_fallback(value: Any) -> bool:
    """Modified Kneser-Ney's fallback discounts: () or (D1, D2, D3+), each Dj in [0, j]."""
    if not _is_seq(value) or len(value) not in (0, 3):
        return False
    return all(_is_real(d) and 0 <= d <= j for j, d in enumerate(value, 1))


_INTEGER = _Range("an integer", _is_int)
_COUNT = _Range("an integer >= 0", lambda v: _is_int(v) and v >= 0)
_POSITIVE_INT = _Range("a positive integer", lambda v: _is_int(v) and v >= 1)
_POSITIVE = _real("a positive number", lambda v: v > 0)
_NON_NEGATIVE = _real("a number >= 0", lambda v: v >= 0)
_AT_LEAST_ONE = _real("a number >= 1", lambda v: v >= 1)
_BELOW_ONE = _real("a number in [0, 1)", lambda v: 0 <= v < 1)  # dropout rates, betas, momentum
_FRACTION = _real("a number in [0, 1]", lambda v: 0 <= v <= 1)
_OPEN_FRACTION = _real("a number in (0, 1)", lambda v: 0 < v < 1)
_SHRINK = _real("a number in (0, 1]", lambda v: 0 < v <= 1)  # a factor on the learning rate

# Every field's range, by its dotted name: checked first, whatever the model. What this table
# leaves out is checked elsewhere or has no range: names are looked up where they are defined
# (model.name and model.method, optimizer.name, .schedule and .decay_mask, finetune.strategy,
# precision, data.tokenizer and .corpus: _check_model, _check_optimizer, _check_data; data.mixture
# and .mixture_target: _check_mixture), so is
# data.path against data.corpus and data.tokenizer_path (and vocab_size's least value) against
# data.tokenizer; init_from is checked by the run; booleans and free text (name, data.data_dir,
# train.sample_prompt) have no wrong values. tests/test_config.py walks every
# field of every model's base_config and fails on one that is in none of these.
_RANGES: dict[str, _Range] = {
    "seed": _COUNT,
    "data.split": _Range(
        "three positive fractions summing to 1 (train, validation, test)", _is_split
    ),
    "data.vocab_size": _COUNT,  # 0: every word
    "data.min_count": _POSITIVE_INT,
    "data.batch_size": _POSITIVE_INT,
    "data.seq_len": _POSITIVE_INT,
    "data.eval_batch_size": _POSITIVE_INT,
    "data.augment.replace": _BELOW_ONE,
    "data.augment.delete": _BELOW_ONE,
    "data.augment.insert": _BELOW_ONE,
    "data.augment.swap": _BELOW_ONE,
    "data.augment.source": _one_of("unigram", "uniform"),
    "data.augment.unit": _one_of("token", "word"),
    "data.augment.word_table": _POSITIVE_INT,
    "data.augment.word_tokens": _POSITIVE_INT,
    "data.augment.extra": _Range(
        "an integer >= -1 (-1: sized from the deletion rate)", lambda v: _is_int(v) and v >= -1
    ),
    "data.windows": _one_of("auto", "streams", "random"),  # jaxlm.data.batching.WINDOW_MODES
    "data.resample.kind": _one_of("none", "bootstrap", "upsample"),
    "data.resample.unit": _one_of("line", "document"),
    "data.resample.factor": _POSITIVE_INT.means("1: no repetition"),
    "data.resample.temperature": _POSITIVE,
    "optimizer.learning_rate": _POSITIVE,
    "optimizer.warmup_steps": _COUNT,
    "optimizer.end_lr_fraction": _FRACTION,
    "optimizer.decay_start_step": _INTEGER,  # <= 0 counts the decay points from step 0
    "optimizer.decay_every": _POSITIVE_INT,
    "optimizer.decay_factor": _SHRINK,
    "optimizer.clip_norm": _NON_NEGATIVE,  # 0: no clipping
    "optimizer.weight_decay": _NON_NEGATIVE,
    "optimizer.momentum": _BELOW_ONE,
    "optimizer.b1": _BELOW_ONE,
    "optimizer.b2": _BELOW_ONE,
    "optimizer.cut_frac": _OPEN_FRACTION,
    "optimizer.stlr_ratio": _AT_LEAST_ONE,
    "optimizer.sgdr_period": _POSITIVE_INT,
    "optimizer.sgdr_mult": _AT_LEAST_ONE,
    "optimizer.steps_per_epoch": _COUNT,  # 0: unset (epoch_step requires it)
    "optimizer.decay_after_epochs": _COUNT,
    "optimizer.plateau_factor": _OPEN_FRACTION,
    "optimizer.plateau_patience": _COUNT,
    "optimizer.plateau_cooldown": _COUNT,
    "optimizer.nt_asgd_nonmono": _COUNT,  # 0: no averaging
    "optimizer.accumulate_steps": _POSITIVE_INT.means("1: no accumulation"),
    "optimizer.max_nonfinite": _POSITIVE_INT,
    "finetune.num_last_layers": _COUNT,
    "finetune.lr_factor": _POSITIVE,
    "finetune.unfreeze_every": _COUNT,
    "finetune.discriminative_factor": _POSITIVE,
    "finetune.clip_norm": _NON_NEGATIVE,
    "finetune.l2": _NON_NEGATIVE,
    "finetune.dropout": _BELOW_ONE,
    # jaxlm.sharding.STRATEGIES, spelled here so that checking a config imports no JAX
    # (tests/test_config.py checks that the two agree)
    "parallel.strategy": _one_of("data", "fsdp", "tensor", "fsdp+tensor"),
    "parallel.data": _COUNT,  # 0: every device not used by "model"
    "parallel.model": _POSITIVE_INT,
    "parallel.rules": _Range(
        "(regex, PartitionSpec tuple) pairs like (('embed', (None, 'model')),)", _is_rules
    ),
    "train.num_steps": _POSITIVE_INT,
    "train.log_every": _POSITIVE_INT,
    "train.eval_every": _POSITIVE_INT,
    "train.eval_steps": _COUNT,  # 0: the whole split
    "train.checkpoint_every": _POSITIVE_INT,
    "train.keep_checkpoints": _POSITIVE_INT,
    "train.sample_tokens": _COUNT,  # 0: no sample
    "train.sample_temperature": _NON_NEGATIVE,  # 0: greedy
    "train.label_smoothing": _BELOW_ONE,
    "monitor.diagnostics_every": _COUNT.means("0: off"),
    "monitor.histograms_every": _COUNT.means("0: off"),
    "monitor.peak_flops": _NON_NEGATIVE.means("0: known by device kind or measured"),
    # health checks (monitor.inject: _check_monitor)
    "monitor.nonfinite": _one_of("fail", "warn"),
    "monitor.spike_factor": _NON_NEGATIVE.means("0: off; e.g. 3"),
    "monitor.spike_policy": _one_of("warn", "skip", "rollback"),
    "monitor.grad_factor": _NON_NEGATIVE.means("0: off; e.g. 10"),
    "monitor.grad_policy": _one_of("warn", "skip", "rollback"),
    "monitor.spike_warmup": _COUNT,
    "monitor.spike_decay": _BELOW_ONE,
    "monitor.spike_max_consecutive": _POSITIVE_INT,
    "monitor.max_rollbacks": _COUNT,
    "monitor.stall_seconds": _NON_NEGATIVE.means("0: no watchdog"),
    "monitor.gate_every": _COUNT.means("0: off"),
    "monitor.gate_saturation": _real("a number in (0, 0.5)", lambda v: 0 < v < 0.5),
    "monitor.gate_warn_fraction": _FRACTION,
    "monitor.on_event": _one_of("none", "command"),
}

# The model section's fields by name, for every model that has the field: a dropout rate is one
# in an LSTM and in a Transformer alike. (model_defaults(name) lists a model's fields.)
_MODEL_RANGES: dict[str, _Range] = {
    # recurrent models and the Transformer
    "embed_dim": _POSITIVE_INT,
    "dropout": _BELOW_ONE,
    # recurrent models
    "hidden_sizes": _tuple_of(
        _POSITIVE_INT, "a tuple of positive integers like (256, 256)", min_len=1
    ),
    "input_dropout": _real("a number below 1 (< 0: config.model.dropout's)", lambda v: v < 1),
    "hidden_dropout": _real("a number below 1 (< 0: config.model.dropout's)", lambda v: v < 1),
    "embed_dropout": _BELOW_ONE,
    "weight_drop": _Range(
        "a number in [0, 1), or one per layer",
        lambda v: _BELOW_ONE.ok(v) or (_is_seq(v) and all(map(_BELOW_ONE.ok, v))),
    ),
    "gate_dropout_forget": _BELOW_ONE,
    "gate_dropout_output": _BELOW_ONE,
    "gate_dropout_update": _BELOW_ONE,
    "ar": _NON_NEGATIVE,
    "tar": _NON_NEGATIVE,
    "init_scale": _POSITIVE,
    # the Transformer
    "num_layers": _POSITIVE_INT,
    "num_heads": _POSITIVE_INT,
    "mlp_dim": _COUNT.means("0: 4 x embed_dim"),
    "max_len": _POSITIVE_INT,
    "attention_dropout": _BELOW_ONE,
    "norm": _one_of("layernorm", "rmsnorm"),
    "positions": _one_of("learned", "rotary"),
    "init_scheme": _one_of("gpt2", "normal"),  # jaxlm.models.transformer.INIT_SCHEMES
    # the n-gram model
    "order": _POSITIVE_INT,
    "discount": _tuple_of(_NON_NEGATIVE, "() or discounts >= 0"),
    "discount_fallback": _Range("() or (D1, D2, D3+) with 0 <= Dj <= j", _is_fallback),
    "k": _POSITIVE,
    "cutoffs": _Range(
        "() or counts >= 0, non-decreasing with the order and starting at 0", _is_cutoffs
    ),
    "arpa_precision": _one_of("float32", "float64"),  # jaxlm.models.ngram.arpa.PRECISIONS
    "memory_limit": _Range(
        "None (count in memory), bytes, '4GB' or a fraction of RAM in (0, 1]", _is_memory_limit
    ),
    "tmp_dir": _Range('a folder ("": the run folder)', lambda v: isinstance(v, str)),
}


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the whole config before any work, naming the first bad field and what was
    expected: every field's range, names (model, optimizer, schedule, tokenizer, corpus,
    strategy, precision), the model's fields and how they fit together, and that the corpus
    exists. (That ``init_from`` holds a checkpoint is checked by the run, next: reading
    checkpoints sits above configs.)

    Args:
      config: a run config.

    Raises:
      ConfigError: on the first field that has the wrong name, type or range.

    Example:
      >>> c = load_config("lstm:smoke"); c.optimizer.schedule = "cosin"
      >>> validate(c)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      jaxlm.errors.ConfigError: config.optimizer.schedule: unknown schedule 'cosin'; ...
      >>> c = load_config("lstm:smoke"); c.model.dropout = 1.5
      >>> validate(c)
      Traceback (most recent call last):
      ...
      jaxlm.errors.ConfigError: config.model.dropout: expected a number in [0, 1), got 1.5
    """
    _check_ranges(config)
    _check_model(config)
    _check_parallel(config)
    _check_optimizer(config)
    _check_data(config.data)
    _check_mixture(config)
    _check_monitor(config)


def _ranged(config: ml_collections.ConfigDict) -> Iterator[tuple[str, Any, _Range]]:
    """``(dotted name, value, range)`` of each field the config has and the tables cover."""
    for dotted, allowed in _RANGES.items():
        section, _, field = dotted.rpartition(".")
        holder = config
        for part in section.split(".") if section else ():
            holder = holder.get(part) if isinstance(holder, ml_collections.ConfigDict) else None
        if holder is not None and field in holder:  # older configs may lack a field
            yield dotted, holder[field], allowed
    for field, value in config.model.items():
        if field in _MODEL_RANGES:
            yield f"model.{field}", value, _MODEL_RANGES[field]


def _check_ranges(config: ml_collections.ConfigDict) -> None:
    for dotted, value, allowed in _ranged(config):
        if not allowed.ok(value):
            raise ConfigError(f"config.{dotted}: expected {allowed.expected}, got {value!r}")


def _check_model(config: ml_collections.ConfigDict) -> None:
    """The model's name and fields (the registry's checks), then fields that depend on others."""
    from jaxlm.models import RECURRENT, get_model, model_defaults

    try:
        get_model(config.model, 2)  # unknown fields and names
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None
    name = config.model.name
    m = ml_collections.ConfigDict({**model_defaults(name), **config.model})
    if name == "transformer":
        if m.embed_dim % m.num_heads:
            raise ConfigError(
                f"config.model.embed_dim={m.embed_dim} does not divide into "
                f"config.model.num_heads={m.num_heads}"
            )
        if m.positions == "rotary" and (m.embed_dim // m.num_heads) % 2:
            raise ConfigError(
                f"config.model.embed_dim={m.embed_dim} over config.model.num_heads={m.num_heads} "
                f"gives heads {m.embed_dim // m.num_heads} wide; rotary positions turn pairs of "
                "features, so the head width must be even"
            )
        if m.positions == "learned" and config.data.seq_len > m.max_len:
            raise ConfigError(
                f"config.data.seq_len={config.data.seq_len} exceeds config.model.max_len="
                f"{m.max_len}, the size of the learned position table: raise max_len or "
                "shorten the window"
            )
    elif name == "ngram":
        # Discounts within what each method allows: modified Kneser-Ney's (D1, D2, D3+) at most
        # (1, 2, 3), repeated per order; the others' at most 1.
        for i, d in enumerate(m.discount):
            limit = i % 3 + 1 if m.method == "modified_kneser_ney" else 1
            if d > limit:
                raise ConfigError(
                    f"config.model.discount: {d} is outside [0, {limit}] for {m.method} "
                    f"(value {i + 1} of {tuple(m.discount)})"
                )
    elif name in RECURRENT:
        if _is_seq(m.weight_drop) and len(m.weight_drop) != len(m.hidden_sizes):
            raise ConfigError(
                f"config.model.weight_drop: {len(m.weight_drop)} values for the "
                f"{len(m.hidden_sizes)} layers of config.model.hidden_sizes="
                f"{tuple(m.hidden_sizes)}; give one value, or one per layer"
            )
        _check_gate_dropout(name, m)


def _check_gate_dropout(cell: str, m: ml_collections.ConfigDict) -> None:
    """Gate dropout on a gate the cell has: an LSTM's three, a GRU's candidate, no Elman one."""
    from jaxlm.models.recurrent import CELLS, GATES

    can = CELLS[cell].gate_dropouts
    for gate in GATES:
        rate = m.get(f"gate_dropout_{gate}", 0.0)
        if rate and gate not in can:
            raise ConfigError(
                f"config.model.gate_dropout_{gate}={rate}: a {cell} cell has no {gate} gate "
                f"to drop (gate dropout applies to: {', '.join(can) or 'none'} for {cell}; "
                "forget, output and update for lstm); set it to 0"
            )


def _check_parallel(config: ml_collections.ConfigDict) -> None:
    """A strategy that splits layers needs a "model" axis that divides what it splits."""
    from jaxlm.models import RECURRENT, model_defaults

    strategy, n = config.parallel.get("strategy", "data"), config.parallel.model
    name = config.model.name
    if name == "ngram" and strategy != "data":
        raise ConfigError(
            f"config.parallel.strategy: {strategy!r} shards parameters, but an n-gram model is "
            "counted on the host; use 'data'"
        )
    if "tensor" not in strategy:
        return
    if n == 1:
        raise ConfigError(
            f'config.parallel.strategy: {strategy!r} splits layers over the "model" axis; set '
            "config.parallel.model to its size (> 1; it is 1)"
        )
    m = ml_collections.ConfigDict({**model_defaults(name), **config.model})
    if name == "transformer":
        widths = {"num_heads": m.num_heads, "mlp_dim": m.mlp_dim or 4 * m.embed_dim}
    elif name in RECURRENT:
        widths = {f"hidden_sizes[{i}]": h for i, h in enumerate(m.hidden_sizes)}
    else:
        widths = {}
    for field, width in widths.items():  # (a width that divides the heads divides 4 x width)
        if width % n:
            raise ConfigError(
                f"config.parallel.model={n} does not divide config.model.{field}={width}: the "
                f'{strategy!r} strategy gives each of the {n} devices of the "model" axis an '
                "equal share of it"
            )


def _optimizer_fields(config: ml_collections.ConfigDict) -> tuple:
    """What :func:`_check_optimizer` reads."""
    return (
        config.optimizer.to_dict(),
        config.train.num_steps,
        config.finetune.strategy,
        config.precision,
    )


def _check_optimizer(config: ml_collections.ConfigDict) -> None:
    if config.model.name == "ngram" and _optimizer_fields(config) == _optimizer_fields(
        base_config("ngram")
    ):
        return  # the defaults pass (tested): an n-gram run trains nothing, so JAX stays out
    from jaxlm import optim
    from jaxlm.precision import Policy

    opt = config.optimizer
    if opt.name not in optim.OPTIMIZERS:
        raise ConfigError(
            f"config.optimizer.name: unknown optimizer {opt.name!r}; expected one of "
            f"{optim.OPTIMIZERS}"
        )
    if opt.get("decay_mask", "all") not in optim.DECAY_MASKS:
        raise ConfigError(
            f"config.optimizer.decay_mask: {opt.decay_mask!r}; expected one of {optim.DECAY_MASKS}"
        )
    optim.build_schedule(opt, config.train.num_steps)  # names and schedule fields
    if config.finetune.strategy not in optim.STRATEGIES:
        raise ConfigError(
            f"config.finetune.strategy: unknown strategy {config.finetune.strategy!r}; expected "
            f"one of {optim.STRATEGIES}"
        )
    try:
        Policy.from_string(config.precision)
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None


def _check_tokenizer(data: ml_collections.ConfigDict) -> None:
    """The subword tokenizers' fields: a vocabulary size to train, GPT-2's folder to read."""
    from jaxlm.data.subword import GPT2_FILES, MIN_VOCAB, TOKENIZER_JSON

    kind, path = data.tokenizer, data.get("tokenizer_path", "")
    if kind in MIN_VOCAB and data.vocab_size < MIN_VOCAB[kind]:
        raise ConfigError(
            f"config.data.vocab_size: {data.vocab_size}; a {kind} tokenizer is trained to this "
            f"many tokens: set at least {MIN_VOCAB[kind]} (256 bytes and its special tokens), "
            "e.g. 8000"
        )
    if kind != "gpt2":
        if path:
            raise ConfigError(
                f"config.data.tokenizer_path is {path!r} but config.data.tokenizer is {kind!r}, "
                "which reads no tokenizer files: set config.data.tokenizer=gpt2, or clear the path"
            )
        return
    wanted = f"{TOKENIZER_JSON}, or {' + '.join(GPT2_FILES)}"
    if not path:
        raise ConfigError(
            f"config.data.tokenizer_path: empty; the gpt2 tokenizer reads a Hugging Face GPT-2 "
            f"folder ({wanted})"
        )
    folder = Path(path).expanduser()
    if not (
        folder.is_file()
        or (folder / TOKENIZER_JSON).is_file()
        or all((folder / f).is_file() for f in GPT2_FILES)
    ):
        where = "does not exist" if not folder.exists() else "holds no GPT-2 tokenizer"
        raise ConfigError(
            f"config.data.tokenizer_path: {path} {where} (relative paths are taken from "
            f"{Path.cwd()}); expected a folder with {wanted}"
        )


def _check_mixture(config: ml_collections.ConfigDict) -> None:
    """A mixture's entries (weights, corpora, files there and not empty) and its target."""
    from jaxlm.data.mixture import check_mixture

    check_mixture(config.data, config.train.carry_state)
    if config.data.get("mixture") and config.model.name == "ngram":
        raise ConfigError(
            "config.data.mixture: an n-gram model is counted on one corpus; set "
            "config.data.corpus and config.data.path instead"
        )


def _check_monitor(config: ml_collections.ConfigDict) -> None:
    """The health checks: an alert command to run, gates only an LSTM has, faults to inject."""
    m = config.get("monitor")
    if m is None:  # a config from before the section
        return
    if m.on_event == "command" and not str(m.command).strip():
        raise ConfigError(
            'config.monitor.command: empty, but config.monitor.on_event is "command"; give a '
            'shell command, e.g. \'notify-send "$JAXLM_EVENT" "$JAXLM_MESSAGE"\''
        )
    if m.gate_every and config.model.name != "lstm":
        raise ConfigError(
            f"config.monitor.gate_every={m.gate_every}: saturated gates are measured for LSTMs; "
            f"this model is {config.model.name!r}: set it to 0"
        )
    try:
        parse_inject(m.inject)
    except ValueError as e:
        raise ConfigError(f"config.monitor.inject: {e}") from None


INJECTABLE = ("nan", "spike", "sleep")


def parse_inject(spec: str) -> tuple[tuple[str, int, float], ...]:
    """``config.monitor.inject``, a testing aid, as ``(fault, step, seconds)`` triples.

    ``nan@K`` makes step K's loss (and gradients) NaN, ``spike@K`` multiplies them by 100,
    ``sleep@K:S`` sleeps S seconds on the host after step K (a stall). The faults are pure
    functions of the step, so a resumed run meets them where the uninterrupted one did; a run
    without any compiles the step it always did.

    Args:
      spec: comma-separated faults; "" for none.

    Returns:
      The faults (``seconds`` 0 but for sleeps).

    Raises:
      ValueError: a fault that is not one of these.

    Example:
      >>> parse_inject("spike@12,sleep@3:0.5")
      (('spike', 12, 0.0), ('sleep', 3, 0.5))
    """
    out = []
    for part in filter(None, (p.strip() for p in str(spec).split(","))):
        m = re.fullmatch(r"(\w+)@(\d+)(?::(\d+(?:\.\d*)?))?", part)
        if not m or m[1] not in INJECTABLE or int(m[2]) < 1 or (m[3] is None) != (m[1] != "sleep"):
            raise ValueError(
                f"{part!r} is not a fault; expected nan@STEP, spike@STEP or sleep@STEP:SECONDS "
                "(steps from 1), comma-separated"
            )
        out.append((m[1], int(m[2]), float(m[3] or 0.0)))
    return tuple(out)


def _check_data(data: ml_collections.ConfigDict) -> None:
    from jaxlm.data.tokenizers import TOKENIZERS

    if data.tokenizer not in TOKENIZERS:
        raise ConfigError(
            f"config.data.tokenizer: unknown tokenizer {data.tokenizer!r}; expected one of "
            f"{sorted(TOKENIZERS)}"
        )
    _check_tokenizer(data)
    if data.corpus == "builtin":
        if data.path:
            raise ConfigError(
                f"config.data.path is {data.path!r} but config.data.corpus is 'builtin', which "
                "reads no files: set config.data.corpus=text_files to read it, or clear the path"
            )
        return
    if data.corpus != "text_files":
        raise ConfigError(
            f"config.data.corpus: unknown corpus {data.corpus!r}; expected builtin or text_files"
        )
    if not data.path:
        raise ConfigError("config.data.path: empty; text_files needs a file or a folder")
    if not Path(data.path).expanduser().exists():
        raise ConfigError(
            f"config.data.path: {data.path} does not exist (relative paths are taken from "
            f"{Path.cwd()}); give the corpus file or its folder"
        )
