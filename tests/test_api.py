"""The package's face: the curated API, cheap imports, command lines that define no flags when
imported, console scripts, and what ships with the package."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys

import pytest

import jaxlm
from tests.helpers import ROOT


def test_every_public_name_resolves():
    for name in jaxlm.__all__:
        assert getattr(jaxlm, name) is not None, name
    assert callable(jaxlm.load_run) and callable(jaxlm.train_and_evaluate)
    # Subpackages are attributes without an explicit import (jaxlm.runtime.compiler_options...).
    assert callable(jaxlm.runtime.compiler_options) and callable(jaxlm.transforms.freeze)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        jaxlm.nope  # noqa: B018


def test_importing_jaxlm_and_the_train_package_does_not_import_jax():
    # python -m jaxlm.train installs its SIGTERM handler before the slow imports.
    code = "import sys, jaxlm, jaxlm.train; print('jax' in sys.modules, 'orbax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_command_lines_define_no_flags_when_imported():
    # Importing both command lines (and every library module) in one process is fine: flags
    # are defined only when a command line runs (no DuplicateFlagError, none for the user's
    # own absl main).
    from absl import flags

    for module in ("jaxlm.evaluate", "jaxlm.train.__main__", "jaxlm.checkpoints.__main__"):
        importlib.import_module(module)
    ours = {"config", "workdir", "keep_heap", "verbose", "checkpoint", "split", "dry_run"}
    assert ours.isdisjoint(flags.FLAGS)


def test_console_scripts_point_at_the_command_lines():
    scripts = {
        ep.name: ep.value
        for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.name.startswith("jaxlm-")
    }
    assert scripts == {
        "jaxlm-train": "jaxlm.train.__main__:run",
        "jaxlm-evaluate": "jaxlm.evaluate:run",
        "jaxlm-checkpoint": "jaxlm.checkpoints.__main__:main",
        "jaxlm-search": "jaxlm.search.__main__:run",
        "jaxlm-explain": "jaxlm.explain.__main__:run",
        "jaxlm-runs": "jaxlm.runs.__main__:run",
    }
    for value in scripts.values():
        module, _, function = value.partition(":")
        assert callable(getattr(importlib.import_module(module), function))


def test_the_package_ships_its_recipes_types_and_license():
    package = ROOT / "jaxlm"
    assert (package / "py.typed").is_file() and (ROOT / "LICENSE").is_file()
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    assert (ROOT / "configs").resolve() == (package / "configs").resolve()
    assert {p.stem for p in (package / "configs").glob("*.py")} >= {"lstm", "transformer"}
