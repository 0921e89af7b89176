"""The fields every recipe shares; ``configs/*.py`` start from :func:`base_config`."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Returns an unlocked ConfigDict with every field the trainer reads, at the defaults."""
    c = ml_collections.ConfigDict()
    c.name = "lstm"
    c.seed = 0
    c.precision = "float32"
    c.init_from = ""

    c.data = ml_collections.ConfigDict()
    c.data.corpus = "builtin"  # "builtin" (pydoc topics) or "text_files"
    c.data.path = ""  # text_files: one file, or a folder / prefix with *.train/valid/test.txt
    c.data.split = (0.9, 0.05, 0.05)  # one-file corpora: train / validation / test fractions
    c.data.tokenizer = "char"  # "char", "byte" or "word"
    c.data.vocab_size = 0  # word: keep the most frequent (0 = all)
    c.data.min_count = 1  # word: drop rarer words to <unk>
    c.data.data_dir = ""  # TFDS data_dir; default ~/.cache/jaxlm/tfds
    c.data.batch_size = 32
    c.data.seq_len = 128
    c.data.eval_batch_size = 32

    c.model = ml_collections.ConfigDict()
    c.model.name = "lstm"
    c.model.embed_dim = 256
    c.model.hidden_sizes = (512, 512)
    c.model.dropout = 0.1
    c.model.embed_dropout = 0.0
    c.model.tie_embeddings = False
    c.model.init_scale = 0.1
    # Recurrent models (AWD-LSTM regularizers); dropouts < 0 mean "same as model.dropout".
    c.model.input_dropout = -1.0  # locked dropout on the embedding output
    c.model.hidden_dropout = -1.0  # locked dropout between recurrent layers
    c.model.locked_dropout = True  # one dropout mask per sequence; False: per time step
    c.model.weight_drop = 0.0  # DropConnect on hidden-to-hidden weights, one mask per window
    c.model.ar = 0.0  # activation regularization weight (alpha)
    c.model.tar = 0.0  # temporal activation regularization weight (beta)
    # Transformer.
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.mlp_dim = 0  # 0: 4 * embed_dim
    c.model.norm = "layernorm"  # "layernorm" or "rmsnorm" (pre-norm either way)
    c.model.positions = "learned"  # "learned" or "rotary"
    c.model.max_len = 512  # longest context (learned positions, cache size limit)
    c.model.attention_dropout = 0.0  # dropout on attention probabilities (training)
    c.model.remat = False  # rematerialise each block in the backward pass

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adam"  # "adam", "adamw" or "sgd"
    c.optimizer.learning_rate = 2e-3
    # "constant", "cosine" (warmup + cosine), "step", "slanted_triangular", "sgdr" (warm
    # restarts), "epoch_step" (Zaremba) or "plateau" (constant, cut when validation stalls)
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 100
    c.optimizer.end_lr_fraction = 0.05  # cosine: final rate as a fraction of the peak
    c.optimizer.decay_start_step = 0  # step: first decay at this step
    c.optimizer.decay_every = 1000  # step: then every this many steps
    c.optimizer.decay_factor = 0.5  # step: multiply the rate by this at each decay
    c.optimizer.clip_norm = 1.0  # 0 disables
    c.optimizer.weight_decay = 0.0
    c.optimizer.momentum = 0.0  # sgd
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.cut_frac = 0.1  # slanted_triangular: fraction of steps rising
    c.optimizer.stlr_ratio = 32.0  # slanted_triangular: peak / lowest rate
    c.optimizer.sgdr_period = 1000  # sgdr: first cycle length in steps (ends at end_lr_fraction)
    c.optimizer.sgdr_mult = 2.0  # sgdr: each cycle this many times longer
    c.optimizer.steps_per_epoch = 0  # epoch_step: optimizer steps per epoch (required)
    c.optimizer.decay_after_epochs = 4  # epoch_step: epochs at the full rate, then decay_factor
    c.optimizer.plateau_factor = 0.5  # plateau: scale on the rate after a validation plateau
    c.optimizer.plateau_patience = 2  # plateau: evaluations without improvement before that
    c.optimizer.plateau_cooldown = 0  # plateau: evaluations to wait after a reduction
    c.optimizer.nt_asgd_nonmono = 0  # > 0: AWD-LSTM's NT-ASGD averaging with this interval
    c.optimizer.centralize = False  # gradient centralization of weight matrices (not embeddings)
    c.optimizer.accumulate_steps = 1  # > 1: one update per this many micro-batches
    c.optimizer.skip_nonfinite = False  # skip updates with NaN/inf gradients
    c.optimizer.max_nonfinite = 10  # skip_nonfinite: consecutive skips before giving up

    # Fine-tuning a pretrained model (set init_from); see docs/finetuning.md.
    c.finetune = ml_collections.ConfigDict()
    # "full", "freeze_all_but_last", "tune_last_layers", "feature", "gradual_unfreeze" or
    # "discriminative".
    c.finetune.strategy = "full"
    c.finetune.num_last_layers = 1  # freeze_all_but_last, tune_last_layers: layers that train
    c.finetune.lr_factor = 0.1  # feature: the output layer's rate is this times the base rate
    c.finetune.unfreeze_every = 100  # gradual_unfreeze: steps between unfreezing groups
    c.finetune.discriminative_factor = 2.6  # discriminative: each lower group's rate is divided
    c.finetune.clip_norm = 0.25  # tune_last_layers: global-norm clipping
    c.finetune.l2 = 1e-5  # tune_last_layers: L2 coefficient added to the gradient
    c.finetune.dropout = 0.3  # tune_last_layers: model.dropout is raised to at least this

    c.parallel = ml_collections.ConfigDict()
    c.parallel.data = 0  # data-parallel mesh axis size; 0: every device not used by "model"
    c.parallel.model = 1  # model-parallel mesh axis size
    c.parallel.rules = ()  # ((regex on parameter path, PartitionSpec tuple), ...); else replicated

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 2000
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.eval_steps = 0  # 0: the whole validation split at each eval
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 2
    c.train.carry_state = True  # recurrent models: carry the hidden state window to window
    c.train.sample_tokens = 300
    c.train.sample_prompt = "The "
    c.train.sample_temperature = 0.8
    c.train.label_smoothing = 0.0
    return c


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads a recipe file the way ``--config`` does: ``"configs/lstm.py"`` or ``"...py:smoke"``.

    Args:
      spec: a path to a config file, optionally followed by ``:variant``.

    Returns:
      The locked ConfigDict that the file's ``get_config(variant)`` returns.

    Example:
      >>> load_config("configs/lstm.py:smoke").train.num_steps
      60
    """
    import importlib.util
    from pathlib import Path

    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem + "_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


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


def _get(config: ml_collections.ConfigDict, dotted: str, default=None):
    value = config
    for part in dotted.split("."):
        if part not in value:
            return default
        value = value[part]
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the fields the trainer relies on, naming the field and what was expected.

    Args:
      config: a run config.

    Raises:
      ValueError: on the first field that has the wrong type or range.
    """
    for dotted in _POSITIVE_INTS:
        value = config
        for part in dotted.split("."):
            value = value[part]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config.{dotted}: expected a positive integer, got {value!r}")
    for dotted in _NON_NEGATIVE_INTS:
        value = _get(config, dotted, 0)
        if not _is_int(value) or value < 0:
            raise ValueError(f"config.{dotted}: expected an integer >= 0, got {value!r}")
    value = _get(config, "optimizer.accumulate_steps", 1)
    if not _is_int(value) or value < 1:
        raise ValueError(
            f"config.optimizer.accumulate_steps: expected a positive integer (1: no "
            f"accumulation), got {value!r}"
        )
    sizes = config.model.get("hidden_sizes", (1,))
    if isinstance(sizes, int | str) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes
    ):
        raise ValueError(
            f"config.model.hidden_sizes: expected a tuple of positive integers like (256, 256), "
            f"got {sizes!r}"
        )
    lr = config.optimizer.learning_rate
    if not isinstance(lr, int | float) or lr <= 0:
        raise ValueError(f"config.optimizer.learning_rate: expected a positive number, got {lr!r}")


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
    c.model.hidden_sizes = (64, 64)
    c.train.num_steps = 60
    c.train.log_every = 20
    c.train.eval_every = 30
    c.train.eval_steps = 20
    c.train.checkpoint_every = 30
    c.train.sample_tokens = 40
    c.optimizer.warmup_steps = 10
    return c
