"""Word-level Penn Treebank recipes (the corpus in ../shared/data/ptb, see its README.md).

Variants:

- ``small``, ``medium``, ``large``: Zaremba, Sutskever and Vinyals (2014), "Recurrent Neural
  Network Regularization" (https://arxiv.org/abs/1409.2329): 2-layer LSTMs of 200 / 650 / 1500
  units, uniform init +-0.1 / 0.05 / 0.04, BPTT 20 / 35 / 35, batch 20, plain SGD at rate 1
  (on the loss summed over the window: rate T and clipping at clip / T on our per-token mean)
  kept for 4 / 6 / 14 epochs and then multiplied by 0.5 / 1/1.2 / 1/1.15 every epoch, 13 / 39 /
  55 epochs, gradient-norm clipping at 5 / 5 / 10, dropout 0 / 0.5 / 0.65 on non-recurrent
  connections with a fresh mask per time step, hidden state carried across batches, no tying.
  Reported perplexity (valid / test): 120.7 / 114.5, 86.2 / 82.7, 82.2 / 78.4.
- ``awd``: AWD-LSTM (Merity, Keskar and Socher 2017, https://arxiv.org/abs/1708.02182): 3
  layers 400-1150-1150-400 with tied embeddings, locked dropout 0.4 on the embedding output and
  the last layer's output, 0.25 between layers, embedding dropout 0.1, weight-drop 0.5, AR 2 /
  TAR 1, weight decay 1.2e-6, SGD at rate 30 with clipping 0.25, switching to averaged SGD by
  the non-monotone trigger (n = 5, one validation per epoch), BPTT 70, batch 20, 500 epochs.
  Reported: 60.0 / 57.3 after fine-tuning (not part of this recipe; 61.2 / 58.8 before it).
  Differences from the paper: a fixed BPTT of 70 (not randomised around it) and one uniform
  init range for every weight.
- ``smoke``: a tiny LSTM on PTB for a few hundred steps, to check the recipe runs.

Steps per epoch follow the trainer's batching: 929,589 training tokens (with one ``<eos>`` a
line) give 929,588 (input, target) pairs, 46,479 per stream at batch 20, and
``(46,479 - T) // T`` windows: 2,322 at T = 20, 1,326 at T = 35 and 662 at T = 70.
"""

import ml_collections

from jaxlm.config import base_config
from jaxlm.errors import ConfigError

TRAIN_PAIRS_PER_STREAM = 929_588 // 20  # batch 20 in every variant


def steps_per_epoch(seq_len: int) -> int:
    """Training windows per epoch for batch 20 and BPTT ``seq_len`` (see the module notes)."""
    return (TRAIN_PAIRS_PER_STREAM - seq_len) // seq_len


def _zaremba(c, *, hidden, init, bptt, decay_after, factor, epochs, clip, dropout):
    per_epoch = steps_per_epoch(bptt)
    c.data.seq_len = bptt
    c.model.embed_dim = hidden
    c.model.hidden_sizes = (hidden, hidden)
    c.model.init_scale = init
    c.model.dropout = dropout
    c.model.locked_dropout = False  # Zaremba: a fresh mask at every time step
    # Zaremba's loss is summed over the BPTT window and averaged over the batch; ours is the
    # mean over tokens, T times smaller. The same steps: rate T, clipping threshold clip / T.
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = float(bptt)
    c.optimizer.schedule = "epoch_step"
    c.optimizer.steps_per_epoch = per_epoch
    c.optimizer.decay_after_epochs = decay_after
    c.optimizer.decay_factor = factor
    c.optimizer.clip_norm = clip / bptt
    c.train.num_steps = epochs * per_epoch
    c.train.eval_every = per_epoch
    c.train.checkpoint_every = per_epoch
    c.train.log_every = 500


def _awd(c):
    """AWD-LSTM (see the module notes)."""
    per_epoch = steps_per_epoch(70)
    c.data.seq_len = 70
    c.model.embed_dim = 400
    c.model.hidden_sizes = (1150, 1150, 400)
    c.model.tie_embeddings = True
    c.model.init_scale = 0.1
    c.model.dropout = 0.4  # output of the last layer
    c.model.input_dropout = 0.4  # dropouti
    c.model.hidden_dropout = 0.25  # dropouth
    c.model.embed_dropout = 0.1  # dropoute
    c.model.weight_drop = 0.5  # wdrop
    c.model.ar = 2.0  # alpha
    c.model.tar = 1.0  # beta
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 30.0
    c.optimizer.schedule = "constant"
    c.optimizer.clip_norm = 0.25
    c.optimizer.weight_decay = 1.2e-6
    c.optimizer.decay_mask = "all"  # as PyTorch's weight_decay in AWD-LSTM: every parameter
    c.optimizer.nt_asgd_nonmono = 5
    c.train.num_steps = 500 * per_epoch
    c.train.eval_every = per_epoch
    c.train.checkpoint_every = per_epoch
    c.train.log_every = 200


def _smoke(c):
    """A tiny LSTM on PTB for a few hundred steps."""
    c.data.seq_len = 20
    c.model.embed_dim = 32
    c.model.hidden_sizes = (32, 32)
    c.model.dropout = 0.0
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 1.0
    c.optimizer.schedule = "constant"
    c.optimizer.clip_norm = 5.0
    c.train.num_steps = 200
    c.train.log_every = 50
    c.train.eval_every = 100
    c.train.eval_steps = 20
    c.train.checkpoint_every = 100


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the recipe; ``arg`` selects a variant: "small" (default), "medium", "large",
    "awd" or "smoke"."""
    c = base_config("lstm")
    arg = arg or "small"
    c.name = f"ptb_{arg}"
    c.data.corpus = "text_files"
    c.data.path = "../shared/data/ptb"
    c.data.tokenizer = "word"
    c.data.batch_size = 20
    c.data.eval_batch_size = 10
    c.model.embed_dropout = 0.0
    c.model.tie_embeddings = False
    c.optimizer.warmup_steps = 0
    c.train.carry_state = True
    c.train.eval_steps = 0  # the whole validation split at every evaluation
    c.train.sample_prompt = "the "
    c.train.sample_tokens = 50
    if arg == "small":
        _zaremba(
            c,
            hidden=200,
            init=0.1,
            bptt=20,
            decay_after=4,
            factor=0.5,
            epochs=13,
            clip=5.0,
            dropout=0.0,
        )
    elif arg == "medium":
        _zaremba(
            c,
            hidden=650,
            init=0.05,
            bptt=35,
            decay_after=6,
            factor=1 / 1.2,
            epochs=39,
            clip=5.0,
            dropout=0.5,
        )
    elif arg == "large":
        _zaremba(
            c,
            hidden=1500,
            init=0.04,
            bptt=35,
            decay_after=14,
            factor=1 / 1.15,
            epochs=55,
            clip=10.0,
            dropout=0.65,
        )
    elif arg == "awd":
        _awd(c)
    elif arg == "smoke":
        _smoke(c)
    else:
        raise ConfigError(
            f"configs/ptb.py: unknown variant {arg!r}; expected small, medium, large, awd or smoke"
        )
    c.lock()
    return c
