"""jaxlm.train.workdir: the run-folder protocol every run follows."""

from __future__ import annotations

import json

from jaxlm.config import load_config
from jaxlm.data.tokenizers import ByteTokenizer
from jaxlm.monitor import Monitor
from jaxlm.train import workdir


def test_prepare_report_and_finished(tmp_path, capsys):
    config = load_config("lstm:smoke")
    workdir.prepare(tmp_path / "run", config, ByteTokenizer())
    assert json.loads((tmp_path / "run/config.json").read_text())["name"] == "lstm_smoke"
    assert json.loads((tmp_path / "run/tokenizer.json").read_text()) == {"kind": "byte"}
    result = {"loss": 1.0, "bits": 1.44, "perplexity": 2.72, "tokens": 10.0}
    final = workdir.final_report(7, result, result, sample="The")
    assert final["step"] == 7 and final["test_bits"] == 1.44 and final["sample"] == "The"
    assert "tokens" not in final  # counts stay in metrics.jsonl
    assert workdir.finished(tmp_path / "run") is None
    Monitor(tmp_path / "run", 7, tensorboard=False).status("finished", 7, final=final)
    assert workdir.finished(tmp_path / "run") == final
    workdir.print_final(final, "byte")
    assert "Final validation loss 1.0000 nats/byte" in capsys.readouterr().out


def test_fine_tuning_runs_get_their_own_folder():
    config = load_config("lstm:smoke")
    assert workdir.default_workdir(config) == "runs/lstm_smoke"
    config.init_from, config.finetune.strategy = "runs/lstm_smoke", "feature"
    assert workdir.default_workdir(config) == "runs/lstm_smoke_ft_feature"
