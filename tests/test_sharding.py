"""jaxlm.sharding: the mesh, rules by path, one set of state shardings for both state forms."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from jaxlm import sharding, state, tree
from jaxlm.config import load_config
from jaxlm.errors import ConfigError
from tests.helpers import ROOT, smoke

P = PartitionSpec


def test_mesh_uses_every_device_by_default_and_checks_the_fit():
    mesh = sharding.make_mesh()
    assert dict(mesh.shape) == {"data": 4, "model": 1}
    assert dict(sharding.make_mesh(2, 2).shape) == {"data": 2, "model": 2}
    with pytest.raises(ValueError, match="must fit the 4 devices"):
        sharding.make_mesh(4, 2)


def test_rules_match_components_and_drop_to_replication_when_they_do_not_divide():
    mesh = sharding.make_mesh(1, 4)
    tree = {
        "layers_1": {"kernel": jnp.zeros((8, 8))},
        "layers_10": {"kernel": jnp.zeros((8, 8))},
        "head": {"kernel": jnp.zeros((8, 6))},  # 6 does not divide over 4
    }
    rules = sharding.rules_from_config([["layers_1", [None, "model"]], ["head", [None, "model"]]])
    s = sharding.rule_shardings(tree, mesh, rules)
    assert s["layers_1"]["kernel"].spec == PartitionSpec(None, "model")
    assert s["layers_10"]["kernel"].spec == PartitionSpec()  # not layers_1's
    assert s["head"]["kernel"].spec == PartitionSpec()


def test_state_shardings_are_the_same_for_a_train_state_and_its_saved_form():
    setup = state.build(load_config("lstm:smoke"), 20)
    mesh = sharding.make_mesh()
    rules = [("embed", PartitionSpec(None, "model"))]
    live = sharding.state_shardings(setup.abstract, mesh, rules)
    saved_form = {f: getattr(setup.abstract, f) for f in state.FIELDS}
    saved = sharding.state_shardings(saved_form, mesh, rules)
    assert tree.flatten(live) == tree.flatten(saved)
    assert live.carry[0][0].spec == PartitionSpec("data")  # batch rows over "data"
    assert live.step.spec == PartitionSpec() and live.rng.spec == PartitionSpec()
    assert live.params["embed"]["embedding"].spec == PartitionSpec(None, "model")
    (adam,) = tree.find_states(live.opt_state, optax.ScaleByAdamState)  # rules shard it too
    assert adam.mu["embed"]["embedding"].spec == PartitionSpec(None, "model")


def test_device_batch_splits_rows_over_data():
    mesh = sharding.make_mesh()
    batch = sharding.device_batch(
        {"inputs": np.arange(24).reshape(8, 3), "reset": np.asarray(True)}, mesh
    )
    assert batch["inputs"].sharding.spec == PartitionSpec("data")
    assert {s.data.shape for s in batch["inputs"].addressable_shards} == {(2, 3)}
    np.testing.assert_array_equal(batch["inputs"], np.arange(24).reshape(8, 3))
    assert bool(batch["reset"])


def test_start_distributed_needs_all_three_values_and_detects_launchers():
    with pytest.raises(ConfigError, match="--num_processes, --process_id missing"):
        sharding.start_distributed("127.0.0.1:1234", env={})
    with pytest.raises(ConfigError, match="expected HOST:PORT and 0 <= process_id"):
        sharding.start_distributed("127.0.0.1:1234", 2, 2, env={})
    assert sharding.start_distributed(num_processes=1, process_id=0, env={}) is None
    assert sharding.detected_cluster({"OMPI_COMM_WORLD_SIZE": "2"}) == "Open MPI"
    assert sharding.detected_cluster({"SLURM_NTASKS": "8"}) is None  # salloc, not srun
    assert sharding.detected_cluster({"SLURM_STEP_ID": "0", "SLURM_NTASKS": "1"}) is None


def test_strategies_are_rules_and_the_users_come_first():
    assert sharding.strategy_rules("data") == []
    assert sharding.strategy_rules("fsdp") == [(".*", P("data")), (".*", P(None, "data"))]
    tensor = {}
    for pattern, spec in sharding.strategy_rules("tensor"):
        tensor.setdefault(pattern, spec)  # the first rule of each pattern; later: fallbacks
    assert tensor["qkv/kernel"] == P(None, "model")
    assert tensor["attn_out/kernel"] == P("model", None)
    assert tensor["embed/embedding"] == P("model", None)
    both = sharding.strategy_rules("fsdp+tensor")
    assert both[0] == ("qkv/kernel", P("data", "model"))
    assert both[-2:] == sharding.strategy_rules("fsdp")  # what tensor leaves whole
    mine = ("embed", (None, "data"))
    rules = sharding.parallel_rules({"strategy": "tensor", "rules": [mine]})
    assert rules[0] == ("embed", P(None, "data")) and rules[1:] == sharding.strategy_rules("tensor")
    assert sharding.parallel_rules({}) == []  # a config saved before strategies: data
    with pytest.raises(ValueError, match="config.parallel.strategy: unknown strategy 'zero'"):
        sharding.strategy_rules("zero")


def _specs(recipe: str, vocab: int, strategy: str, data: int, model: int, **overrides):
    config = smoke(recipe, **overrides)
    abstract = state.build(config, vocab).abstract
    mesh = sharding.make_mesh(data, model)
    rules = sharding.parallel_rules({"strategy": strategy})
    shardings = sharding.state_shardings(abstract, mesh, rules)
    specs = {k: v.spec for k, v in tree.flatten(shardings.params).items()}
    return specs, sharding.sharded_bytes(abstract.params, shardings.params)


def test_tensor_splits_megatron_style_and_falls_back_where_the_vocabulary_does_not_divide():
    specs, _ = _specs("transformer", 104, "tensor", 1, 4, **{"model.num_heads": 4})
    assert specs["blocks_0/qkv/kernel"] == P(None, "model")  # columns: whole heads
    assert specs["blocks_0/qkv/bias"] == P("model")
    assert specs["blocks_0/mlp_fc/kernel"] == P(None, "model")
    assert specs["blocks_0/attn_out/kernel"] == P("model", None)  # rows
    assert specs["blocks_0/mlp_proj/kernel"] == P("model", None)
    assert specs["blocks_0/mlp_proj/bias"] == P() and specs["final_norm/scale"] == P()
    assert specs["embed/embedding"] == P("model", None)  # 104 rows over 4
    specs, _ = _specs("transformer", 65, "tensor", 1, 4, **{"model.num_heads": 4})
    assert specs["embed/embedding"] == P(None, "model")  # 65 do not divide: the width does
    specs, _ = _specs("gru", 104, "tensor", 1, 4)
    for name in ("layers_0/ih/kernel", "layers_1/hh/kernel"):
        assert specs[name] == P(None, "model")  # the 3H gate columns
    assert specs["layers_0/hh/bias"] == P("model") and specs["head/kernel"] == P(None, "model")


def test_fsdp_shards_every_parameter_and_its_bytes_divide_by_the_axis():
    specs, (mine, total) = _specs("lstm", 65, "fsdp", 4, 1)
    assert specs["embed/embedding"] == P(None, "data")  # 65 rows do not divide over 4
    assert specs["layers_0/ih/kernel"] == P("data") and specs["head/bias"] == P()
    whole = 65 * 4  # head/bias: 65 float32 values, over 4 devices they do not divide
    assert mine == (total - whole) // 4 + whole
    specs, (mine, total) = _specs("transformer", 104, "fsdp+tensor", 2, 2)
    assert specs["blocks_0/qkv/kernel"] == P("data", "model")
    assert specs["blocks_0/norm_attn/scale"] == P("data")  # fsdp where tensor leaves it whole
    assert 3.6 < total / mine <= 4


@pytest.mark.heavy
def test_each_strategy_on_eight_devices_trains_like_one_device():
    # One subprocess with 8 fake CPU devices runs every combination (tests/strategies_worker.py).
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests/strategies_worker.py")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = [json.loads(line[7:]) for line in out.stdout.splitlines() if line[:7] == "RESULT "]
    assert [(r["model"], r["strategy"]) for r in results] == [
        (model, strategy)
        for model in ("transformer", "lstm")
        for strategy in ("data", "data", "fsdp", "tensor", "fsdp+tensor")
    ]
    for model in ("transformer", "lstm"):
        one, *runs = [r for r in results if r["model"] == model]
        assert one["mesh"] == {"data": 1, "model": 1} and len(one["losses"]) == 20
        assert one["losses"][-1] < one["losses"][0] - 0.3  # it learns
        for r in runs:
            assert r["mesh"]["data"] * r["mesh"]["model"] == 8
            np.testing.assert_allclose(r["losses"], one["losses"], rtol=1e-5, err_msg=str(r))
            # Per device: all of it (data), or the total over the axes that shard it, to 10%.
            axes = {"data": 1, "fsdp": 8, "tensor": r["mesh"]["model"], "fsdp+tensor": 8}
            for part in ("params", "opt_state"):
                share = r[f"{part}_bytes_total"] / r[f"{part}_bytes"]
                want = axes[r["strategy"]]
                assert abs(share - want) <= 0.1 * want, (model, r["strategy"], part, share)
        specs = {r["strategy"]: r["specs"] for r in runs}
        if model == "transformer":
            assert specs["tensor"]["blocks_0/qkv/kernel"] == [None, "model"]
            assert specs["tensor"]["blocks_0/attn_out/kernel"] == ["model", None]
            assert specs["fsdp+tensor"]["blocks_0/qkv/kernel"] == ["data", "model"]
        else:
            assert specs["tensor"]["layers_0/hh/kernel"] == [None, "model"]
            assert specs["tensor"]["head/kernel"] == [None, "model"]
        assert specs["tensor"]["embed/embedding"] == ["model", None]  # 104 over the vocabulary
        assert specs["fsdp"]["embed/embedding"] == ["data"]
