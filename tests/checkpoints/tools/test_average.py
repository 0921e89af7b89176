"""jaxlm.checkpoints.tools.average: the mean of several checkpoints' parameters."""

from __future__ import annotations

import numpy as np
import pytest

from jaxlm import checkpoints as ck
from jaxlm import sharding
from jaxlm.checkpoints import tools as ct
from jaxlm.tree import flatten
from tests.helpers import train_state_target


def test_average_is_the_mean_of_the_params(run, tmp_path, cli):
    sources = ck.last_checkpoints(run, 2)
    assert sources == [run / "checkpoints/2", run / "checkpoints/3"]
    out = ct.average(sources, tmp_path / "avg")
    assert out == tmp_path / "avg/checkpoints/3"
    avg, meta = ck.load_state(out)
    p2 = flatten(ck.load_state(sources[0])[0]["params"])
    p3 = flatten(ck.load_state(sources[1])[0]["params"])
    for name, value in flatten(avg["params"]).items():
        expected = np.mean(np.stack([p2[name], p3[name]]).astype(np.float64), axis=0)
        assert value.dtype == p3[name].dtype
        np.testing.assert_array_equal(value, expected.astype(value.dtype))
    assert not np.array_equal(p2["head/kernel"], p3["head/kernel"])
    assert meta["averaged_from"] == [str(s) for s in sources]
    # The result restores like any training checkpoint (TrainState target) and via load_state.
    mesh = sharding.make_mesh()
    mgr = ck.manager(tmp_path / "avg", read_only=True)
    try:
        state, _ = ck.restore(mgr, train_state_target(run, mesh))
    finally:
        mgr.close()
    np.testing.assert_array_equal(state.params["head"]["kernel"], avg["params"]["head"]["kernel"])
    assert int(state.step) == 3
    assert cli(["average", "--last", "3", str(run), "--out", str(tmp_path / "avg3")]) == 0
    three = ck.load_state(tmp_path / "avg3", parts=("params",))[0]
    p1 = flatten(ck.load_state(run / "checkpoints/1")[0]["params"])
    got = flatten(three["params"])["head/bias"]
    want = np.mean(np.stack([p1["head/bias"], p2["head/bias"], p3["head/bias"]]), axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # A checkpoint named twice (even by another spelling) counts once.
    again = ct.average(
        [sources[0], run / "checkpoints/3", sources[1], run / "checkpoints/./3"],
        tmp_path / "avg_dup",
    )
    for name, value in flatten(ck.load_state(again)[0]["params"]).items():
        np.testing.assert_array_equal(value, flatten(avg["params"])[name])
    for same in ([sources[1], sources[1]], [sources[1]], []):
        with pytest.raises(ck.CheckpointError, match="two or more distinct checkpoints"):
            ct.average(same, tmp_path / "never")
    assert not (tmp_path / "never").exists()
