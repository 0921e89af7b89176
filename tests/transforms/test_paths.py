"""jaxlm.transforms.paths: listing paths, labelling leaves, whole-component patterns."""

from __future__ import annotations

import optax
import pytest

from jaxlm import transforms as T
from tests.helpers import numbered_layers, toy_params


def test_param_paths_and_unmatched_pattern_error():
    p = toy_params()
    assert T.param_paths(p) == [
        "embed/embedding",
        "head/bias",
        "head/kernel",
        "layers_0/bias",
        "layers_0/kernel",
        "layers_1/bias",
        "layers_1/kernel",
    ]
    assert T.match_groups(p, ["^head", "kernel"])["layers_0"] == {"bias": -1, "kernel": 1}
    with pytest.raises(ValueError, match=r"(?s)'decoder' matches no parameter.*layers_1/kernel"):
        T.freeze("decoder", optax.sgd(0.1)).init(p)
    with pytest.raises(ValueError, match="'head/bias' matches no parameter path not already"):
        T.gradual_unfreeze(["^head", "head/bias"], [0, 1]).init(p)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        T.per_group_lr(["(unclosed"], [1.0])
    with pytest.raises(TypeError, match=r"a sequence \(list, tuple\) of them, got \{'embed'"):
        T.centralize_matrices(exclude={"embed": True})  # a dict's keys are no patterns
    with pytest.raises(TypeError, match="got {'head'"):
        T.per_group_lr([{"head": True}], [1.0])


def test_patterns_match_whole_path_components():
    p = numbered_layers()
    assert T.match_groups(p, "layers_1") == {
        "layers_1": {"kernel": 0},
        "layers_10": {"kernel": -1},
        "layers_11": {"kernel": -1},
    }
    assert T.match_groups(p, "layers_1.*")["layers_10"] == {"kernel": 0}
    assert T.match_groups(p, "kernel")["layers_11"] == {"kernel": 0}
    with pytest.raises(ValueError, match="'ayers_1' matches no parameter path"):
        T.match_groups(p, "ayers_1")
