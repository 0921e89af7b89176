"""The model registry: names, defaults from the model classes, partial configs, errors."""

import pytest

from jaxlm.config import base_config
from jaxlm.models import get_model
from jaxlm.models.recurrent import RecurrentLM

CELLS = ["rnn", "lstm", "gru"]


def test_registry_names_and_errors():
    cfg = base_config().model
    cfg.update(weight_drop=0.25, ar=2.0, tar=1.0, input_dropout=0.4, hidden_dropout=0.3)
    for name in CELLS:
        cfg.name = name
        model = get_model(cfg, 11)
        assert (model.cell, model.weight_drop, model.ar, model.tar) == (name, 0.25, 2.0, 1.0)
        assert (model.input_dropout, model.hidden_dropout) == (0.4, 0.3)
    cfg.name = "nope"
    with pytest.raises(ValueError, match="config.model.name"):
        get_model(cfg, 11)
    with pytest.raises(ValueError, match="cell"):
        RecurrentLM(vocab_size=3, cell="nope").initial_carry(1)
