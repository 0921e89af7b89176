"""The dry run: the state's share per device, the compiled step's memory and FLOPs, per
precision policy, computed before any training and without writing anything."""

from __future__ import annotations

import json

import numpy as np

from jaxlm import data, sharding
from jaxlm.train import plan
from tests.helpers import smoke


def test_a_dry_run_reports_the_share_of_each_device_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = smoke("transformer", **{"parallel.strategy": "fsdp", "parallel.data": 4})
    rep = plan.dry_run(config)
    assert list(tmp_path.iterdir()) == []  # no workdir, no checkpoint
    assert rep["strategy"] == "fsdp" and rep["devices"] == 4
    assert rep["mesh"] == {"data": 4, "model": 1} and rep["precision"] == "float32"
    assert rep["rules"] == [[".*", ["data"]], [".*", [None, "data"]]]
    for part in ("params", "opt_state"):  # all of it over 4 devices, but a few scalars
        assert abs(rep[f"{part}_bytes_total"] / rep[f"{part}_bytes"] - 4) < 0.01
    n_params = rep["params_bytes_total"] // 4  # float32
    assert rep["params_bytes_total"] == 4 * n_params
    # The arguments hold this device's state and batch; the donated state's outputs alias it.
    assert rep["argument_bytes"] >= rep["params_bytes"] + rep["opt_state_bytes"]
    assert 0 < rep["alias_bytes"] <= rep["output_bytes"]
    assert rep["peak_bytes"] == (
        rep["argument_bytes"] + rep["output_bytes"] - rep["alias_bytes"] + rep["temp_bytes"]
    )
    assert rep["temp_bytes"] > 0 and rep["tokens_per_step"] == 8 * 32
    assert json.loads(plan.report_json(rep)) == rep


def test_the_dry_run_reports_memory_and_flops_per_precision_policy():
    policy = "params=float32,compute=bfloat16,output=float32"
    f32, bf16 = (
        plan.dry_run(smoke("transformer", **{"precision": p, "parallel.data": 1}))
        for p in ("float32", policy)
    )
    assert bf16["precision"] == policy
    # A step's FLOPs: about 6 per weight of the products and token (forward and backward:
    # each block's qkv, attention output and MLP, 12 E^2, and the tied output layer, V E),
    # the attention's own products and the elementwise rest on top.
    config = smoke("transformer")
    e, layers = config.model.embed_dim, config.model.num_layers
    vocab = data.load_corpus(config.data).tokenizer.vocab_size
    products = layers * 12 * e * e + vocab * e
    assert 1.0 < f32["flops"] / (6 * products * f32["tokens_per_step"]) < 1.5
    # The policy's parameters: bfloat16 storage halves them and the moments that follow them.
    assert bf16["params_bytes"] == f32["params_bytes"]
    stored = smoke("transformer", **{"precision": "params=bfloat16,compute=bfloat16"})
    halved = plan.make_plan(stored, vocab)
    params = sharding.sharded_bytes(halved.setup.abstract.params, halved.shardings.params)
    opt = sharding.sharded_bytes(halved.setup.abstract.opt_state, halved.shardings.opt_state)
    assert params[0] * 2 == f32["params_bytes"]
    assert abs(opt[0] * 2 / f32["opt_state_bytes"] - 1) < 0.01  # all but the step counts
    # bfloat16 activations: what the backward pass keeps shrinks by over a third (the rest is
    # float32 by design: attention probabilities, logits, losses).
    assert bf16["activation_bytes"] < 0.7 * f32["activation_bytes"]
    # And the compiled step's temporaries: on CPU too, where the products run in float32
    # kernels (jaxlm.precision.dot_general) but keep their bfloat16 operands for the backward
    # pass (13% less at this shape, 22% at the recipe's).
    assert bf16["temp_bytes"] < 0.95 * f32["temp_bytes"]
    np.testing.assert_array_less(0, [f32["temp_bytes"], bf16["temp_bytes"]])
