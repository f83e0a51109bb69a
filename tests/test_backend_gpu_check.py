"""The GPU check (`bench/gpu_check.py`) in its tiny CPU mode, so the script cannot rot unseen."""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_gpu_check_runs_every_case_in_tiny_cpu_mode(tmp_path, capsys):
    assert _gpu_check().main(["--tiny", "--out", str(tmp_path), "--steps", "4"]) == 0
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert (tmp_path / "gpu-check.txt").read_text().startswith("gpu_check ")
    assert [case["key"] for case in report["cases"]] == ["1", "2", "3", "4"]
    for case in report["cases"]:
        labels = [c["label"] for c in case["configs"]]
        assert labels[:2] == ["full transfer (l = 0)", "LP plan"] and len(labels) >= 4
        # every split computes the same greedy continuation from the one shared prefill
        assert case["tokens_agree"] is True
        assert all(c["step_ms"] > 0 for c in case["configs"])
        assert case["timing_overhead"]["untimed_step_s"] > 0
    assert report["cases"][1]["lp"]["resident_kv_layers"] == 1
    assert report["cases"][3]["lp"]["gpu_batches"] == 4
    assert "step_ms" in report["cases"][0]["resident"]
    assert report["checks"] and all(check["pass"] is None for check in report["checks"])  # not judged on a CPU
    assert "case 4" in capsys.readouterr().out
