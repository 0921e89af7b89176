"""python -m jaxlm.checkpoints (and tools/checkpoint.py): the checkpoint tools' command line."""

from __future__ import annotations

import pytest


def test_cli_help(cli, capsys):
    for verb in ("inspect", "average", "export", "import", "reshard", "diff", "gpt2", "verify"):
        with pytest.raises(SystemExit) as e:
            cli([verb, "--help"])
        assert e.value.code == 0
        assert "usage" in capsys.readouterr().out
    assert cli(["inspect", "/nonexistent/run"]) == 2
    assert "/nonexistent/run" in capsys.readouterr().err
