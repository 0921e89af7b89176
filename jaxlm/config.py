"""Run configs: the fields every recipe shares, loading a recipe, and checking a config whole.

A run config is an ``ml_collections.ConfigDict`` with sections ``data``, ``model``,
``optimizer``, ``finetune``, ``parallel`` and ``train``. The ``model`` section holds the chosen
model's own fields at its own defaults (:func:`jaxlm.models.model_defaults`: the model's class
is the one place they are written). Recipes are Python files with ``get_config(arg=None)``;
the shipped ones are in :mod:`jaxlm.configs`.
"""

from __future__ import annotations

import importlib.util
import math
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
    c.model = ml_collections.ConfigDict({"name": model, **model_defaults(model)})
    c.optimizer = _optimizer()
    c.finetune = _finetune()

    c.parallel = ml_collections.ConfigDict()
    c.parallel.data = 0  # data-parallel mesh axis size; 0: every device not used by "model"
    c.parallel.model = 1  # model-parallel mesh axis size
    c.parallel.rules = ()  # ((pattern on parameter path, PartitionSpec tuple), ...)

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
    return c


def _data() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.corpus = "builtin"  # "builtin" (pydoc topics) or "text_files"
    d.path = ""  # text_files: one file, or a folder with *train*, *valid* and *test* files
    d.split = (0.9, 0.05, 0.05)  # one-file corpora: train / validation / test fractions
    d.tokenizer = "char"  # "char", "byte" or "word"
    d.vocab_size = 0  # word: keep the most frequent (0 = all)
    d.min_count = 1  # word: drop rarer words to <unk>
    d.data_dir = ""  # TFDS data_dir; default $JAXLM_DATA_DIR or ~/.cache/jaxlm/tfds
    d.batch_size = 32
    d.seq_len = 128
    d.eval_batch_size = 32
    return d


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
    c.optimizer.warmup_steps = 10
    return c


# --------------------------------------------------------------------------------------------
# Validation.

_POSITIVE_INTS = (
    "data.batch_size",
    "data.seq_len",
    "data.eval_batch_size",
    "train.num_steps",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
)
_NON_NEGATIVE_INTS = (
    "train.eval_steps",  # 0: the whole split
    "train.sample_tokens",  # 0: no sample
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the whole config before any work, naming the first bad field and what was
    expected: names (model, optimizer, schedule, tokenizer, corpus, strategy, precision), the
    model's fields, ranges, and that the corpus exists. (That ``init_from`` holds a checkpoint
    is checked by the run, next: reading checkpoints sits above configs.)

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
    """
    _check_ranges(config)
    _check_model(config.model)
    if config.model.name == "ngram":
        _check_data(config.data)
        return
    _check_optimizer(config)
    _check_data(config.data)


def _check_ranges(config: ml_collections.ConfigDict) -> None:
    for dotted in _POSITIVE_INTS:
        section, _, field = dotted.partition(".")
        value = config[section].get(field, 1)
        if not _is_int(value) or value < 1:
            raise ConfigError(f"config.{dotted}: expected a positive integer, got {value!r}")
    for dotted in _NON_NEGATIVE_INTS:
        section, _, field = dotted.partition(".")
        value = config[section].get(field, 0)
        if not _is_int(value) or value < 0:
            raise ConfigError(f"config.{dotted}: expected an integer >= 0, got {value!r}")
    value = config.optimizer.get("accumulate_steps", 1)
    if not _is_int(value) or value < 1:
        raise ConfigError(
            f"config.optimizer.accumulate_steps: expected a positive integer (1: no "
            f"accumulation), got {value!r}"
        )
    lr = config.optimizer.learning_rate
    if not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"config.optimizer.learning_rate: expected a positive number, got {lr!r}")


def _check_model(model: ml_collections.ConfigDict) -> None:
    from jaxlm.models import get_model

    sizes = model.get("hidden_sizes", (1,))
    if isinstance(sizes, int | str) or not sizes or not all(_is_int(s) and s > 0 for s in sizes):
        raise ConfigError(
            f"config.model.hidden_sizes: expected a tuple of positive integers like (256, 256), "
            f"got {sizes!r}"
        )
    if model.name == "transformer" and model.embed_dim % model.num_heads:
        raise ConfigError(
            f"config.model.embed_dim={model.embed_dim} does not divide into "
            f"config.model.num_heads={model.num_heads}"
        )
    try:
        get_model(model, 2)  # unknown fields and names
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _check_optimizer(config: ml_collections.ConfigDict) -> None:
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


def _check_data(data: ml_collections.ConfigDict) -> None:
    from jaxlm.data.tokenizers import TOKENIZERS

    if data.tokenizer not in TOKENIZERS:
        raise ConfigError(
            f"config.data.tokenizer: unknown tokenizer {data.tokenizer!r}; expected one of "
            f"{sorted(TOKENIZERS)}"
        )
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
