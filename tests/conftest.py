"""Fixtures several test folders share: a small run with a checkpoint after each step."""

from __future__ import annotations

from pathlib import Path

import pytest

from jaxlm.checkpoints.__main__ import main
from jaxlm.train.loop import train_and_evaluate
from tests.helpers import smoke


@pytest.fixture(scope="session")
def run(tmp_path_factory) -> Path:
    """A 3-step smoke run on 4 fake devices with a checkpoint after every step."""
    config = smoke(
        **{
            "train.num_steps": 3,
            "train.checkpoint_every": 1,
            "train.keep_checkpoints": 3,
            "train.log_every": 1,
            "train.eval_every": 100,
            "train.sample_tokens": 0,
            "data.eval_batch_size": 64,  # fewer windows in the final whole-split evaluation
        }
    )
    workdir = tmp_path_factory.mktemp("ckpt_tools") / "run"
    train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture(scope="session")
def cli():
    """The checkpoint tools' command line as a function: ``cli([...]) -> exit status``."""
    return main
