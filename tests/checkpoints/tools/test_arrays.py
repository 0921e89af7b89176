"""jaxlm.checkpoints.tools.arrays: export to and import from .npz and .safetensors."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxlm import checkpoints as ck
from jaxlm.checkpoints import tools as ct
from jaxlm.tree import flatten
from tests.helpers import ROOT, assert_trees_equal


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_export_import_round_trip_is_bit_identical(run, tmp_path, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    file = tmp_path / f"state{suffix}"
    info = ct.export(run, file)
    original, _ = ck.load_state(run)
    arrays, meta = ct.read_arrays(file)
    assert info["arrays"] == len(arrays) == len(flatten(original))
    assert "params/embed/embedding" in arrays and "opt_state/1/0/mu/head/kernel" in arrays
    assert meta["step"] == "3"
    # The source is named by the run folder's name, not by a path of this machine.
    assert meta["source"] == f"{run.name}/checkpoints/3" and str(run.parent) not in meta["source"]
    # Import into the shape of another checkpoint (step 1): every array comes from the file.
    out = ct.import_arrays(file, tmp_path / "imported", like=run / "checkpoints/1")
    assert out == tmp_path / "imported/checkpoints/3"
    restored, _ = ck.load_state(out)
    assert_trees_equal(restored, original)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_export_params_only_with_cast(run, tmp_path, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    file = tmp_path / f"params{suffix}"
    ct.export(run, file, dtype="bfloat16", opt_state=False)
    arrays, _ = ct.read_arrays(file)
    original, _ = ck.load_state(run)
    params = flatten(original["params"])
    assert sorted(arrays) == sorted("params/" + n for n in params)
    for name, value in params.items():
        assert arrays["params/" + name].dtype == jax.numpy.bfloat16
        assert arrays["params/" + name].tobytes() == value.astype(jax.numpy.bfloat16).tobytes()
    template = run / "checkpoints/1"
    out = ct.import_arrays(file, tmp_path / "back", like=template, dtype="float32")
    back, _ = ck.load_state(out)
    for name, value in flatten(back["params"]).items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, params[name].astype(jax.numpy.bfloat16))
    assert_trees_equal(back["opt_state"], ck.load_state(template)[0]["opt_state"])


def test_import_rejects_wrong_names_and_shapes(run, tmp_path):
    np.savez(tmp_path / "bad.npz", **{"params/head/kernel": np.zeros((3, 3), np.float32)})
    with pytest.raises(ck.CheckpointError, match=r"params/head/kernel has shape \(3, 3\)"):
        ct.import_arrays(tmp_path / "bad.npz", tmp_path / "x", like=run)
    np.savez(tmp_path / "odd.npz", **{"params/nope": np.zeros(3, np.float32)})
    with pytest.raises(ck.CheckpointError, match="params/nope"):
        ct.import_arrays(tmp_path / "odd.npz", tmp_path / "x", like=run)


def test_npz_is_read_without_pickle(tmp_path):
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ck.CheckpointError, match="objects.npz: .*allow_pickle"):
        ct.read_arrays(tmp_path / "objects.npz")
    readers = [*(ROOT / "jaxlm/checkpoints").rglob("*.py"), *(ROOT / "jaxlm/interop").glob("*.py")]
    readers += [
        ROOT / "jaxlm/evaluate.py",
        ROOT / "jaxlm/train/evaluate.py",
        ROOT / "tools/checkpoint.py",
    ]
    assert len(readers) > 10
    for path in readers:
        source = path.read_text()
        for banned in ("import pickle", "allow_pickle=True", "torch.load(", "weights_only"):
            assert banned not in source, f"{path}: {banned}"


def test_import_refuses_another_dtype_and_writes_nothing(run, tmp_path, cli, capsys):
    kernel = flatten(ck.load_state(run, parts=("params",))[0]["params"])["head/kernel"]
    assert kernel.dtype == np.float32
    ints = tmp_path / "ints.npz"
    np.savez(ints, **{"params/head/kernel": (kernel * 100).astype(np.int32)})
    # --dtype casts floating-point arrays only, so it does not make integers acceptable either.
    for dtype in (None, "float32"):
        with pytest.raises(
            ck.CheckpointError,
            match=rf"{ints}: params/head/kernel is int32; .* expects float32.*--dtype",
        ):
            ct.import_arrays(ints, tmp_path / "never", like=run, dtype=dtype)
    half = tmp_path / "half.npz"
    np.savez(half, **{"params/head/kernel": kernel.astype(np.float16)})
    expected = r"is float16; .* expects float32: cast .* with --dtype float32"
    with pytest.raises(ck.CheckpointError, match=expected):
        ct.import_arrays(half, tmp_path / "never", like=run)
    assert not (tmp_path / "never").exists()
    # Cast to the template's dtype, a float array is welcome, as before.
    out = ct.import_arrays(half, tmp_path / "cast", like=run, dtype="float32")
    back = flatten(ck.load_state(out, parts=("params",))[0]["params"])["head/kernel"]
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, kernel.astype(np.float16).astype(np.float32))
    # The command line says it in one line, exit status 2.
    assert cli(["import", str(ints), "--like", str(run), "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {ints}: params/head/kernel is int32") and err.count("\n") == 1
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_unreadable_array_files_are_named(run, tmp_path, cli, capsys, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    good = tmp_path / f"good{suffix}"
    ct.export(run, good, opt_state=False)
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(b"this is not an array file\n" * 8)
    for bad in (truncated, garbage):
        with pytest.raises(ck.CheckpointError, match=f"{bad}: not a readable {suffix} file"):
            ct.read_arrays(bad)
        out = tmp_path / "never"
        assert cli(["import", str(bad), "--like", str(run), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {bad}: not a readable") and err.count("\n") == 1
        assert "pickle.load" not in err  # numpy's advice for a file it takes for a pickle
        assert not out.exists()
