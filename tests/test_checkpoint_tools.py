"""Checkpoint tools on a smoke run's workdir: inspect, average, export/import, reshard, diff,
and the reliability of what is saved (atomic saves, damaged checkpoints named and skipped)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jaxlm import checkpoint, optim, sharding, trainer
from jaxlm import checkpoint_tools as ct
from jaxlm.data.tokenizers import tokenizer_from_json
from jaxlm.models import get_model
from tests.helpers import ROOT, smoke


@pytest.fixture(scope="module")
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
    trainer.train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("checkpoint_cli", ROOT / "tools/checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _train_state_target(workdir: Path, mesh):
    """The trainer's abstract TrainState (with shardings) for the run saved in ``workdir``."""
    meta = ct.read_meta(workdir)
    config = ml_collections.ConfigDict(meta["config"])
    tok = tokenizer_from_json(meta["tokenizer"])
    model = get_model(config.model, tok.vocab_size)
    init = trainer.make_init_fn(
        model, optim.build_optimizer(config), config.data.batch_size, config.data.seq_len, 0
    )
    abstract = jax.eval_shape(init)
    shardings = trainer.state_shardings(abstract, mesh, ())
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def _assert_trees_equal(a, b):
    fa, fb = ct.flatten(a), ct.flatten(b)
    assert list(fa) == list(fb)
    for name in fa:
        x, y = np.asarray(fa[name]), np.asarray(fb[name])
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), name


def test_steps_and_resolve(run):
    assert ct.list_steps(run) == [1, 2, 3]
    assert ct.resolve(run) == run / "checkpoints/3"
    assert ct.resolve(run, 2) == run / "checkpoints/2"
    assert ct.resolve(run / "checkpoints/2") == run / "checkpoints/2"
    with pytest.raises(ct.CheckpointError, match="no checkpoint of step 9"):
        ct.resolve(run, 9)
    with pytest.raises(ct.CheckpointError, match=str(run.parent)):
        ct.resolve(run.parent)


def test_inspect_reports_the_real_tree_from_metadata_only(run, tmp_path, cli, capsys):
    state, meta = ct.load_state(run)
    report = ct.inspect(run)
    assert report["step"] == 3 and report["steps"] == [1, 2, 3]
    assert report["tokenizer"] == {
        "kind": "char",
        "vocab_size": tokenizer_from_json(meta["tokenizer"]).vocab_size,
    }
    assert report["config"]["model"]["hidden_sizes"] == [64, 64]
    real = {n: np.asarray(a) for n, a in ct.flatten(state).items()}
    got = {r["path"]: r for r in report["leaves"]}
    assert set(got) == set(real)
    for name, a in real.items():
        assert got[name]["shape"] == list(a.shape)
        assert got[name]["dtype"] == a.dtype.name
        assert got[name]["size"] == a.size and got[name]["bytes"] == a.nbytes
    n_params = sum(a.size for n, a in real.items() if n.startswith("params/"))
    assert report["totals"]["params"]["count"] == n_params
    assert report["totals"]["all"]["bytes"] == sum(a.nbytes for a in real.values())

    # Remove every array data file: inspect still reports the same, reading really fails.
    copy = tmp_path / "checkpoints/3"
    shutil.copytree(run / "checkpoints/3", copy)
    data_files = list((copy / "state").glob("ocdbt.process_*/d/*"))
    assert data_files
    for f in data_files:
        f.unlink()
    stripped = ct.inspect(copy)
    assert stripped["leaves"] == report["leaves"] and stripped["totals"] == report["totals"]
    with pytest.raises(ct.CheckpointError, match=str(copy)):
        ct.load_state(copy)

    assert cli(["inspect", str(run), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["leaves"] == report["leaves"] and printed["seconds"] < 5
    assert cli(["inspect", str(run)]) == 0
    assert "params/head/kernel" in capsys.readouterr().out


def test_average_is_the_mean_of_the_params(run, tmp_path, cli):
    sources = ct.last_checkpoints(run, 2)
    assert sources == [run / "checkpoints/2", run / "checkpoints/3"]
    out = ct.average(sources, tmp_path / "avg")
    assert out == tmp_path / "avg/checkpoints/3"
    avg, meta = ct.load_state(out)
    p2 = ct.flatten(ct.load_state(sources[0])[0]["params"])
    p3 = ct.flatten(ct.load_state(sources[1])[0]["params"])
    for name, value in ct.flatten(avg["params"]).items():
        expected = np.mean(np.stack([p2[name], p3[name]]).astype(np.float64), axis=0)
        assert value.dtype == p3[name].dtype
        np.testing.assert_array_equal(value, expected.astype(value.dtype))
    assert not np.array_equal(p2["head/kernel"], p3["head/kernel"])
    assert meta["averaged_from"] == [str(s) for s in sources]
    # The result restores like any training checkpoint (TrainState target) and via load_state.
    mesh = sharding.make_mesh()
    mgr = checkpoint.manager(tmp_path / "avg", read_only=True)
    try:
        state, _ = checkpoint.restore(mgr, _train_state_target(run, mesh))
    finally:
        mgr.close()
    np.testing.assert_array_equal(state.params["head"]["kernel"], avg["params"]["head"]["kernel"])
    assert int(state.step) == 3
    assert cli(["average", "--last", "3", str(run), "--out", str(tmp_path / "avg3")]) == 0
    three = ct.load_state(tmp_path / "avg3", parts=("params",))[0]
    p1 = ct.flatten(ct.load_state(run / "checkpoints/1")[0]["params"])
    got = ct.flatten(three["params"])["head/bias"]
    want = np.mean(np.stack([p1["head/bias"], p2["head/bias"], p3["head/bias"]]), axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # A checkpoint named twice (even by another spelling) counts once.
    again = ct.average(
        [sources[0], run / "checkpoints/3", sources[1], run / "checkpoints/./3"],
        tmp_path / "avg_dup",
    )
    for name, value in ct.flatten(ct.load_state(again)[0]["params"]).items():
        np.testing.assert_array_equal(value, ct.flatten(avg["params"])[name])
    for same in ([sources[1], sources[1]], [sources[1]], []):
        with pytest.raises(ct.CheckpointError, match="two or more distinct checkpoints"):
            ct.average(same, tmp_path / "never")
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_export_import_round_trip_is_bit_identical(run, tmp_path, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    file = tmp_path / f"state{suffix}"
    info = ct.export(run, file)
    original, _ = ct.load_state(run)
    arrays, meta = ct.read_arrays(file)
    assert info["arrays"] == len(arrays) == len(ct.flatten(original))
    assert "params/embed/embedding" in arrays and "opt_state/1/0/mu/head/kernel" in arrays
    assert meta["step"] == "3"
    # Import into the shape of another checkpoint (step 1): every array comes from the file.
    out = ct.import_arrays(file, tmp_path / "imported", like=run / "checkpoints/1")
    assert out == tmp_path / "imported/checkpoints/3"
    restored, _ = ct.load_state(out)
    _assert_trees_equal(restored, original)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_export_params_only_with_cast(run, tmp_path, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    file = tmp_path / f"params{suffix}"
    ct.export(run, file, dtype="bfloat16", opt_state=False)
    arrays, _ = ct.read_arrays(file)
    original, _ = ct.load_state(run)
    params = ct.flatten(original["params"])
    assert sorted(arrays) == sorted("params/" + n for n in params)
    for name, value in params.items():
        assert arrays["params/" + name].dtype == jax.numpy.bfloat16
        assert arrays["params/" + name].tobytes() == value.astype(jax.numpy.bfloat16).tobytes()
    template = run / "checkpoints/1"
    out = ct.import_arrays(file, tmp_path / "back", like=template, dtype="float32")
    back, _ = ct.load_state(out)
    for name, value in ct.flatten(back["params"]).items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, params[name].astype(jax.numpy.bfloat16))
    _assert_trees_equal(back["opt_state"], ct.load_state(template)[0]["opt_state"])


def test_import_rejects_wrong_names_and_shapes(run, tmp_path):
    np.savez(tmp_path / "bad.npz", **{"params/head/kernel": np.zeros((3, 3), np.float32)})
    with pytest.raises(ct.CheckpointError, match=r"params/head/kernel has shape \(3, 3\)"):
        ct.import_arrays(tmp_path / "bad.npz", tmp_path / "x", like=run)
    np.savez(tmp_path / "odd.npz", **{"params/nope": np.zeros(3, np.float32)})
    with pytest.raises(ct.CheckpointError, match="params/nope"):
        ct.import_arrays(tmp_path / "odd.npz", tmp_path / "x", like=run)


def test_npz_is_read_without_pickle(tmp_path):
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        ct.read_arrays(tmp_path / "objects.npz")
    for path in [
        "jaxlm/checkpoint_tools.py",
        "jaxlm/evaluate.py",
        "tools/checkpoint.py",
        *map(str, (ROOT / "jaxlm/interop").glob("*.py")),
    ]:
        source = (ROOT / path).read_text()
        for banned in ("import pickle", "allow_pickle=True", "torch.load(", "weights_only"):
            assert banned not in source, f"{path}: {banned}"


def test_reshard_four_devices_to_one_and_back(run, tmp_path):
    assert jax.device_count() == 4
    saved = ct.saved_shardings(run)
    assert saved["carry/0/0"] == {"mesh": {"data": 4, "model": 1}, "spec": ["data"]}
    original, _ = ct.load_state(run)

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
    one, meta = ct.load_state(tmp_path / "one")
    _assert_trees_equal(one, original)
    assert meta["config"]["parallel"]["data"] == 1

    # And from the one-device checkpoint onto 4 devices, with model-parallel rules.
    mesh = sharding.make_mesh(1, 4)
    rules = ct.parse_rules(["embed/embedding=None,model", "layers_0/ih/kernel=None,model"])
    state, _ = ct.restore_sharded(tmp_path / "one", mesh, rules)
    emb = state["params"]["embed"]["embedding"]
    assert emb.sharding == NamedSharding(mesh, PartitionSpec(None, "model"))
    assert {s.data.shape for s in emb.addressable_shards} == {(emb.shape[0], emb.shape[1] // 4)}
    mu = state["opt_state"][1][0]["mu"]["layers_0"]["ih"]["kernel"]
    assert mu.sharding.spec == PartitionSpec(None, "model")
    assert state["params"]["head"]["kernel"].sharding.spec == PartitionSpec()
    _assert_trees_equal(jax.tree.map(np.asarray, state), original)


def test_diff(run, tmp_path, cli):
    same = ct.diff(run, run)
    assert same["identical"] and same["max_abs"] == 0.0 and same["max_rel"] == 0.0
    state, meta = ct.load_state(run)
    bias = state["params"]["head"]["bias"]
    before = bias[5]
    bias[5] = before + np.float32(0.25)
    ct.write_checkpoint(tmp_path / "perturbed", 3, state, meta)
    report = ct.diff(run, tmp_path / "perturbed")
    assert not report["identical"]
    changed = [r for r in report["leaves"] if not r["equal"]]
    assert [r["path"] for r in changed] == ["params/head/bias"]
    expected = abs(float(bias[5]) - float(before))
    assert report["max_abs"] == pytest.approx(expected, rel=0, abs=0)
    scale = max(abs(float(before)), abs(float(bias[5])))
    assert report["max_rel"] == pytest.approx(expected / scale)
    steps = ct.diff(run, run, step_a=2, step_b=3)
    assert not steps["identical"] and steps["max_abs"] > 0
    assert cli(["diff", str(run), str(run)]) == 0
    assert cli(["diff", str(run), str(tmp_path / "perturbed")]) == 1


def test_cli_help(cli, capsys):
    for verb in ("inspect", "average", "export", "import", "reshard", "diff", "gpt2"):
        with pytest.raises(SystemExit) as e:
            cli([verb, "--help"])
        assert e.value.code == 0
        assert "usage" in capsys.readouterr().out
    assert cli(["inspect", "/nonexistent/run"]) == 2
    assert "/nonexistent/run" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Reliability.

_SAVER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import orbax.checkpoint as ocp
    from jaxlm import checkpoint

    mgr = checkpoint.manager(sys.argv[1], keep=5)
    def save(step, n):
        state = {"step": np.int32(step), "params": {"w": np.full((n,), step, np.float32)}}
        meta = {"config": {"name": "atomic"}, "tokenizer": {}}
        mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)), force=True)
    save(1, 1000)
    mgr.wait_until_finished()
    big = np.random.default_rng(0).standard_normal(60_000_000, dtype=np.float32)
    print("SAVING", flush=True)
    state = {"step": np.int32(2), "params": {"w": big}}
    mgr.save(2, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({"config": {"name": "atomic"}, "tokenizer": {}})), force=True)
    mgr.wait_until_finished()
    print("SAVED", flush=True)
    """
)


def test_interrupted_save_leaves_the_previous_checkpoint_restorable(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAVER, str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    try:
        assert proc.stdout.readline().strip() == "SAVING"
        ckdir = workdir / "checkpoints"
        deadline = time.monotonic() + 60
        while not [p for p in ckdir.iterdir() if p.name.startswith("2")]:
            assert time.monotonic() < deadline and proc.poll() is None, "save never started"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # mid-save
    finally:
        proc.kill()
        proc.wait()
    leftovers = [p.name for p in ckdir.iterdir() if p.name != "1"]
    assert leftovers and all(not name.isdigit() for name in leftovers), leftovers
    assert ct.list_steps(workdir) == [1]
    state, meta = ct.load_state(workdir)
    np.testing.assert_array_equal(state["params"]["w"], np.full(1000, 1, np.float32))
    mgr = checkpoint.manager(workdir, read_only=True)
    try:
        assert mgr.latest_step() == 1
        assert checkpoint.latest_intact_step(mgr) == 1
    finally:
        mgr.close()


def _truncate_largest_data_file(step_dir: Path) -> Path:
    files = sorted((step_dir / "state").glob("ocdbt.process_*/d/*"), key=lambda f: f.stat().st_size)
    with open(files[-1], "r+b") as f:
        f.truncate(files[-1].stat().st_size // 3)
    return files[-1]


def test_damaged_checkpoint_is_named_and_skipped(run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(run, workdir)
    newest = workdir / "checkpoints/3"
    _truncate_largest_data_file(newest)
    mesh = sharding.make_mesh()
    target = _train_state_target(run, mesh)
    mgr = checkpoint.manager(workdir, keep=3)
    try:
        with pytest.raises(RuntimeError, match=str(newest)):
            checkpoint.restore(mgr, target)
        lines = []
        state, meta, step = checkpoint.restore_latest_intact(mgr, target, log=lines.append)
        assert step == 2 and int(state.step) == 2
        assert str(newest) in lines[0] and "Skipping" in lines[0]
        want = ct.load_state(run / "checkpoints/2")[0]["params"]["head"]["kernel"]
        np.testing.assert_array_equal(state.params["head"]["kernel"], want)
        # Metadata-level damage is seen without reading arrays.
        assert checkpoint.latest_intact_step(mgr) == 3  # data damage shows only when read
        (workdir / "checkpoints/2/state/_METADATA").unlink()
        shutil.rmtree(workdir / "checkpoints/3/meta")
        assert checkpoint.latest_intact_step(mgr) == 1
        state, _, step = checkpoint.restore_latest_intact(mgr, target, log=lines.append)
        assert step == 1
        assert [line.split(":")[0] for line in lines[2:4]] == [
            f"Skipping damaged checkpoint {workdir / 'checkpoints' / str(s)}" for s in (3, 2)
        ]
    finally:
        mgr.close()
    with pytest.raises(ct.CheckpointError, match=str(workdir / "checkpoints/3")):
        ct.load_state(workdir, 3)
    # Quarantined, the damaged checkpoints leave the step list, so those steps can be saved again.
    mgr = checkpoint.manager(workdir, keep=3)
    try:
        lines = []
        _, _, step = checkpoint.restore_latest_intact(
            mgr, target, log=lines.append, quarantine=True
        )
        assert step == 1 and mgr.all_steps() == [1]
        assert (workdir / "checkpoints/3.damaged").is_dir()
        assert (workdir / "checkpoints/2.damaged").is_dir()
        assert ct.list_steps(workdir) == [1]
    finally:
        mgr.close()
