"""jaxlm.checkpoints.tools.reshard: a checkpoint moved between meshes."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxlm import checkpoints as ck
from jaxlm import sharding
from jaxlm.checkpoints import tools as ct
from tests.helpers import ROOT, assert_trees_equal


def test_reshard_four_devices_to_one_and_back(run, tmp_path):
    assert jax.device_count() == 4
    saved = ct.saved_shardings(run)
    assert saved["carry/0/0"] == {"mesh": {"data": 4, "model": 1}, "spec": ["data"]}
    original, _ = ck.load_state(run)

    # In a process that has a single CPU device, through the command line.
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools/checkpoint.py"),
            "reshard",
            str(run),
            "--out",
            str(tmp_path / "one"),
            "--data",
            "1",
            "--devices",
            "1",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=120,
    )
    for name, s in ct.saved_shardings(tmp_path / "one").items():
        assert s["mesh"] == {"data": 1, "model": 1}, name
    one, meta = ck.load_state(tmp_path / "one")
    assert_trees_equal(one, original)
    assert meta["config"]["parallel"]["data"] == 1

    # And from the one-device checkpoint onto 4 devices, with model-parallel rules.
    mesh = sharding.make_mesh(1, 4)
    rules = ct.parse_rules(["embed/embedding=None,model", "layers_0/ih/kernel=None,model"])
    state, _ = ck.restore_sharded(tmp_path / "one", mesh, rules)
    emb = state["params"]["embed"]["embedding"]
    assert emb.sharding == NamedSharding(mesh, PartitionSpec(None, "model"))
    assert {s.data.shape for s in emb.addressable_shards} == {(emb.shape[0], emb.shape[1] // 4)}
    mu = state["opt_state"][1][0]["mu"]["layers_0"]["ih"]["kernel"]
    assert mu.sharding.spec == PartitionSpec(None, "model")
    assert state["params"]["head"]["kernel"].sharding.spec == PartitionSpec()
    assert_trees_equal(jax.tree.map(np.asarray, state), original)
