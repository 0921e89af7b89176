"""jaxlm.sharding: the mesh, rules by path, one set of state shardings for both state forms."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from jaxlm import sharding, state, tree
from jaxlm.config import load_config
from jaxlm.errors import ConfigError


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
