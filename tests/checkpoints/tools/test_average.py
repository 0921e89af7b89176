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


def test_average_refuses_other_tokenizers_models_and_shapes(run, tmp_path, cli, capsys):
    state, meta = ck.load_state(run / "checkpoints/2")
    chars = meta["tokenizer"]["chars"]
    assert "\u2603" not in chars
    other_chars = dict(meta, tokenizer=dict(meta["tokenizer"], chars=[*chars[:-1], "\u2603"]))
    config = dict(meta["config"], model=dict(meta["config"]["model"], dropout=0.5))
    assert meta["config"]["model"]["dropout"] != 0.5
    head = dict(state["params"]["head"], bias=np.zeros(3, np.float32))
    wider = dict(state, params=dict(state["params"], head=head))
    # Each has the parameter names of the run; the first two its shapes too (another character
    # vocabulary of the same size: the same ids would mean different characters).
    others = {
        rf"tokenizers differ: chars\[{len(chars) - 1}\] is '.' in .*, '\u2603' in": (
            ck.write_checkpoint(tmp_path / "chars", 2, state, other_chars)
        ),
        r"model configs differ: model.dropout is 0.1 in .*, 0.5 in": (
            ck.write_checkpoint(tmp_path / "model", 2, state, dict(meta, config=config))
        ),
        r"different parameter trees:\n  head/bias: shape": (
            ck.write_checkpoint(tmp_path / "shapes", 2, wider, meta)
        ),
    }
    newest = run / "checkpoints/3"
    for what, other in others.items():
        with pytest.raises(ck.CheckpointError, match=rf"^{newest} and {other} .*{what}"):
            ct.average([newest, other], tmp_path / "never")
        assert cli(["average", str(newest), str(other), "--out", str(tmp_path / "never")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {newest} and {other} ")
        assert "shape" in what or err.count("\n") == 1  # the new refusals are one line
    assert not (tmp_path / "never").exists()
