"""jaxlm.checkpoints.meta: what a checkpoint's config says, older formats, what may change."""

from __future__ import annotations

from jaxlm import checkpoints as ck
from jaxlm.config import base_config, load_config
from tests.helpers import smoke


def test_a_field_newer_than_the_checkpoint_blocks_resuming_only_when_changed():
    # A checkpoint written before model.remat existed: its saved config lacks the field.
    transformer = load_config("transformer:smoke")
    saved = ck.config_json(transformer)
    del saved["model"]["remat"]
    assert ck.incompatible_fields(saved, transformer) == []
    remat = load_config("transformer:smoke")
    remat.model.remat = True
    assert ck.incompatible_fields(saved, remat) == ["model.remat: '<absent>' -> True"]
    # A field the current config lacks is still a difference.
    saved = ck.config_json(smoke())
    saved["model"]["retired_switch"] = 1
    assert ck.incompatible_fields(saved, smoke()) == ["model.retired_switch: 1 -> '<absent>'"]


def old_format_config(model: str = "lstm") -> dict:
    """A config as jaxlm wrote it before each model owned its fields (format 1): the model
    section lists every model's fields, and optimizer.decay_mask did not exist."""
    config = ck.config_json(base_config(model))
    for other in ("lstm", "transformer"):
        config["model"] = {**ck.config_json(base_config(other))["model"], **config["model"]}
    del config["optimizer"]["decay_mask"]
    return config


def test_format_1_configs_are_trimmed_to_their_models_fields():
    old = old_format_config("lstm")
    assert "num_heads" in old["model"]
    meta = ck.meta.upgrade({"config": old, "tokenizer": {"kind": "char", "chars": []}})
    assert meta["format"] == ck.FORMAT_VERSION
    assert set(meta["config"]["model"]) == set(base_config("lstm").model)
    again = ck.meta.upgrade(meta)  # the current format is left as it is
    assert again == meta


def test_a_run_saved_before_the_decay_mask_resumes_as_it_was_trained():
    meta = ck.meta.upgrade({"config": old_format_config("transformer")})
    saved = meta["config"]
    config = ck.run_config(saved)
    assert config.optimizer.decay_mask == "all"  # what an old checkpoint's optimizer did
    current = base_config("transformer")  # a new run leaves the field at its default
    assert current.optimizer.decay_mask == "weights"
    resumed = ck.resume_config(saved, current)
    assert resumed.optimizer.decay_mask == "all" and current.optimizer.decay_mask == "weights"
    assert ck.incompatible_fields(saved, current) == []


def test_make_meta_records_the_format():
    meta = ck.make_meta(smoke(), {"kind": "byte"}, averaged_from=["a"])
    assert meta["format"] == ck.FORMAT_VERSION and meta["averaged_from"] == ["a"]
    assert meta["config"]["model"]["hidden_sizes"] == [64, 64]


def test_a_transformer_saved_before_random_windows_resumes_with_streams():
    saved = ck.config_json(load_config("transformer:smoke"))
    for field in ("windows", "mixture", "mixture_target", "resample"):
        del saved["data"][field]
    current = load_config("transformer:smoke")  # auto: random windows for a new run
    resumed = ck.resume_config(saved, current)
    assert resumed.data.windows == "streams" and current.data.windows == "auto"
    assert ck.run_config(saved).data.windows == "streams"
    assert ck.incompatible_fields(saved, current) == []
    # A checkpoint that has the field resumes with its own value.
    assert ck.resume_config(ck.config_json(current), current).data.windows == "auto"
