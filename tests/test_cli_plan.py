"""`advisor plan` and friends from the command line: outputs, and bad input refused cleanly."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from advisor.cli import main
from advisor.documents import Plan, load_document

ROOT = Path(__file__).resolve().parent.parent
BASE = ["plan", "--model", "opt-6.7b", "--hardware", "h100-pcie5", "--batch", "8", "--prompt-len", "2000",
        "--gen-len", "8", "--gpu-kv-budget", "0"]


def test_plan_writes_a_valid_plan_and_prints_the_figures(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(BASE + ["-o", str(out)]) == 0
    printed = capsys.readouterr().out
    plan = load_document(Plan, out)
    assert plan.splits and min(plan.splits) > 1000
    for words in ("split:", "PCIe per decode step", "predicted TTFT", "tokens/s", "GPU", "host pinned",
                  "speedup"):
        assert words in printed


@pytest.mark.parametrize("hardware, dtype_args, expected", [
    ("h100-pcie5", [], "fp16"),         # the model's own dtype on a GPU
    ("cpu-generic", [], "fp32"),        # what the CPU mode computes in
    ("cpu-generic", ["--dtype", "bf16"], "bf16"),
])
def test_plan_dtype_defaults_to_what_the_device_computes_in(tmp_path, hardware, dtype_args, expected):
    out = tmp_path / "plan.json"
    args = ["plan", "--model", "opt-125m", "--hardware", hardware, "--batch", "2", "--prompt-len", "32",
            "--gen-len", "4", "--gpu-kv-budget", "0", "-o", str(out)]
    assert main(args + dtype_args) == 0
    plan = load_document(Plan, out)
    assert plan.dtype == expected
    if hardware == "cpu-generic":  # the CPU cannot overlap recomputation: full transfer, all KV offloaded
        assert set(plan.splits) == {0} and plan.resident_kv_layers == 0
        wl = plan.workload  # each step loads its context's KV and stores the new token's, but the last
        tokens = [wl.context(step) + (step < wl.decode_steps - 1) for step in range(wl.decode_steps)]
        kv_per_step = 2 * plan.model.num_layers * plan.model.hidden * wl.batch * sum(tokens) / wl.decode_steps
        assert plan.predicted.pcie_bytes_per_step == pytest.approx(kv_per_step * (4 if expected == "fp32" else 2))


def test_python_dash_m_works_from_the_source_tree_without_installation(tmp_path):
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "advisor", "list", "hardware"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "h100-pcie5" in result.stdout and "kvpr-paper" in result.stdout


@pytest.mark.parametrize("args", [["schema", "plan"], BASE + ["-o", "plan.json"]])
def test_a_reader_that_goes_away_neither_fails_the_command_nor_loses_its_file(tmp_path, args):
    """`advisor ... | head -1`: stdout's reader is gone before the command prints."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen([sys.executable, "-m", "advisor", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait() == 0, stderr
    assert "BrokenPipeError" not in stderr and "Traceback" not in stderr
    if "-o" in args:
        load_document(Plan, tmp_path / "plan.json")


def test_schema_prints_the_committed_schema(capsys):
    assert main(["schema", "plan"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((ROOT / "advisor" / "schemas" / "plan.json").read_text())


@pytest.mark.parametrize("change, message", [
    (["--model", "opt-unknown"], "unknown model 'opt-unknown'"),
    (["--hardware", "nope"], "unknown hardware profile 'nope'"),
    (["--prompt-len", "2048"], "positions"),
    (["--batch", "4096", "--weights-on-gpu", "1"], "cannot fit"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, change, message):
    out = tmp_path / "plan.json"
    args = BASE + change + ["-o", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_negative_batch_is_refused_by_the_parser(tmp_path, capsys):
    out = tmp_path / "plan.json"
    with pytest.raises(SystemExit) as stop:
        main(BASE[:5] + ["--batch", "-3"] + BASE[7:] + ["-o", str(out)])
    assert stop.value.code == 2
    assert "must be positive" in capsys.readouterr().err
    assert not out.exists()


def test_malformed_hardware_file_is_named_per_field(tmp_path, capsys):
    bad = tmp_path / "hw.json"
    bad.write_text(json.dumps({"schema_version": 1, "name": "x"}))
    out = tmp_path / "plan.json"
    args = BASE[:3] + ["--hardware", str(bad)] + BASE[5:] + ["-o", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 5 and all(str(bad) in line for line in err)
    assert any("device_kind: Field required" in line for line in err)
    assert not out.exists()


def test_a_gpu_that_cannot_hold_even_the_buffers_gets_every_item_that_adds_up_to_the_need(tmp_path, capsys):
    import re

    args = ["plan", "--model", "opt-175b", "--hardware", "t4-pcie3", "--batch", "16", "--prompt-len", "1024",
            "--gen-len", "32", "--weights-on-gpu", "0", "-o", str(tmp_path / "plan.json")]
    assert main(args) == 2
    error = capsys.readouterr().err
    line = next(line for line in error.splitlines() if "with no KV resident" in line)
    need, listed = re.search(r"need ([\d.]+) GB with no KV resident \(([^)]*)\)", line).groups()
    items = {name.strip(): float(size) for name, size in re.findall(r"([a-zA-Z ]+) ([\d.]+) GB", listed)}
    assert {"weights", "weight slots", "prefill workspace", "reserve"} <= set(items)
    assert sum(items.values()) == pytest.approx(float(need), abs=0.01 * len(items))
    # two streamed layers in flight, each OPT-175B layer's 12 h² + 13 h fp16 parameters
    h = 12288
    assert items["weight slots"] == pytest.approx(2 * (12 * h * h + 13 * h) * 2 / 1e9, abs=0.01)
    assert not (tmp_path / "plan.json").exists()


def test_every_argument_of_every_subcommand_says_what_it_is():
    from advisor.cli import build_parser

    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    undocumented = [f"{name} {action.option_strings or action.dest}"
                    for name, sub in subcommands.items() for action in sub._actions
                    if action.dest != "help" and not action.help]
    assert len(subcommands) == 10 and undocumented == []


def test_a_command_whose_package_is_missing_names_it_in_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "textual", None)  # as on the GPU machine, which has no textual
    for name in [m for m in sys.modules if m == "tui" or m.startswith("tui.")]:
        monkeypatch.delitem(sys.modules, name)
    assert main(["tui"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("advisor tui: needs the Python package 'textual', which is not installed here "
                           "(pip install -e . installs what every command needs)")


def test_batch_max_plans_the_largest_batch_that_fits(tmp_path, capsys):
    args = ["plan", "--model", "opt-6.7b", "--hardware", "t4-pcie3", "--prompt-len", "1024", "--gen-len", "8",
            "--json"]
    assert main(args + ["--batch", "max", "-o", str(tmp_path / "max.json")]) == 0
    out = capsys.readouterr()
    printed = json.loads(out.out)  # the choice goes to stderr: --json stays parseable
    chosen = load_document(Plan, tmp_path / "max.json").workload.batch
    assert printed["workload"]["batch"] == chosen
    assert f"batch: the largest that fits GPU and host memory, all else equal, is {chosen}" in out.err
    assert main(args + ["--batch", str(chosen + 1), "-o", str(tmp_path / "above.json")]) == 2
    assert "cannot fit" in capsys.readouterr().err and not (tmp_path / "above.json").exists()


def test_a_single_new_token_has_no_step_to_compare_and_is_not_called_unfit(tmp_path, capsys):
    args = ["plan", "--model", "opt-125m", "--hardware", "h100-pcie5", "--batch", "1", "--prompt-len", "8",
            "--gen-len", "1", "--gpu-kv-budget", "0", "-o", str(tmp_path / "plan.json")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "no decode steps (--gen-len 1)" in printed and "does not fit" not in printed
    assert "decode step n/a" in printed and "0.0 tokens/s" not in printed
    plan = load_document(Plan, tmp_path / "plan.json")
    assert plan.splits == [] and plan.predicted.ttft_s > 0


@pytest.mark.parametrize("model_name, hardware_name, prompt, schedule", [
    ("opt-2.7b", "l4-pcie4", 2000, "row"),
    ("llama-2-7b", "rtx4090-pcie4", 1500, "column"),
])
def test_batch_best_finds_the_brute_force_best_throughput(tmp_path, capsys, model_name, hardware_name, prompt,
                                                          schedule):
    """Brute force: every batch up to the largest that fits is planned; `--batch best` (about 15
    of them) lands on the one with the most decode tokens/s, which is not the largest (a smaller
    batch keeps more of its KV on the GPU)."""
    from advisor.catalog import load_hardware, load_model
    from advisor.errors import UserError
    from advisor.scheduler import Request, largest_batch_that_fits, plan

    model, hw = load_model(model_name), load_hardware(hardware_name)
    top = largest_batch_that_fits(Request(model, hw, 4096, prompt, 8, schedule=schedule).resolved())
    throughput = {}
    for batch in range(1, top + 1):
        try:
            throughput[batch] = plan(Request(model, hw, batch, prompt, 8, schedule=schedule)).predicted.decode_tokens_per_s
        except UserError:
            pass
    brute = max(throughput, key=throughput.get)
    assert brute < top
    args = ["plan", "--model", model_name, "--hardware", hardware_name, "--batch", "best", "--prompt-len",
            str(prompt), "--gen-len", "8", "--schedule", schedule, "-o", str(tmp_path / "best.json")]
    assert main(args) == 0
    chosen = load_document(Plan, tmp_path / "best.json")
    assert chosen.workload.batch == brute
    assert chosen.predicted.decode_tokens_per_s == pytest.approx(throughput[brute])
    assert f"batch: best → {brute}" in capsys.readouterr().err


def test_batch_best_needs_decode_steps(tmp_path, capsys):
    args = ["plan", "--model", "opt-125m", "--hardware", "h100-pcie5", "--batch", "best", "--prompt-len", "64",
            "--gen-len", "1", "-o", str(tmp_path / "best.json")]
    assert main(args) == 2
    assert "--gen-len 2 or more" in capsys.readouterr().err and not (tmp_path / "best.json").exists()


def test_a_cpu_plan_speaks_of_copies_and_a_store_not_pcie_and_pinned_memory(tmp_path, capsys):
    """The CPU mode copies between two regions of host memory and pins nothing (execute reports
    0 GB pinned); the plan must not promise PCIe traffic and pinned memory."""
    args = ["plan", "--model", "opt-125m", "--hardware", "cpu-generic", "--batch", "2", "--prompt-len", "32",
            "--gen-len", "4", "--gpu-kv-budget", "0", "-o", str(tmp_path / "plan.json")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "copies (host memory to host memory) per decode step" in printed and "host store" in printed
    assert "PCIe" not in printed and "pinned" not in printed and "memory: device" in printed
