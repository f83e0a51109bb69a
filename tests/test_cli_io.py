"""Outputs and argument types of the commands: refused cleanly (one line, exit 2) before any work,
never over an input, never leaving files or folders behind."""

import json
import os

import pytest

from advisor.catalog import load_hardware, load_model
from advisor.cli import main
from advisor.documents import Plan, Workload, check_distinct, load_document, write_document
from advisor.errors import UserError
from advisor.plans import make_plan


def write_plan(path, gen=4, **choices):
    plan = make_plan(load_model("tiny-opt"), load_hardware("cpu-generic"),
                     Workload(batch=2, prompt_len=16, gen_len=gen), **choices)
    write_document(path, plan)
    return plan


def refused(capsys, argv) -> str:
    """The one line a refused command prints; it printed nothing else."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert out == ""  # refused before the report
    return lines[0]


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --- simulate: outputs checked before the work ----------------------------------------------------


@pytest.mark.parametrize("option", ["-o", "--chrome"])
def test_simulate_refuses_a_folder_as_output(tmp_path, capsys, option):
    write_plan(tmp_path / "p.json")
    (tmp_path / "d").mkdir()
    line = refused(capsys, ["simulate", str(tmp_path / "p.json"), option, str(tmp_path / "d")])
    assert line == f"advisor simulate: {tmp_path / 'd'}: cannot write: is a folder"
    assert listing(tmp_path) == ["d", "p.json"]


def test_an_output_under_a_regular_file_says_its_parent_is_not_a_folder(tmp_path, capsys):
    write_plan(tmp_path / "p.json")
    (tmp_path / "f").write_text("keep")
    blocked = tmp_path / "f" / "x.json"
    line = refused(capsys, ["simulate", str(tmp_path / "p.json"), "-o", str(blocked)])
    assert line == f"advisor simulate: {blocked}: cannot write: {tmp_path / 'f'} is not a folder"
    deeper = tmp_path / "f" / "sub" / "x.json"  # also when folders are missing below it
    line = refused(capsys, ["simulate", str(tmp_path / "p.json"), "--chrome", str(deeper)])
    assert line.endswith(f"cannot write: {tmp_path / 'f'} is not a folder")
    assert (tmp_path / "f").read_text() == "keep" and listing(tmp_path) == ["f", "p.json"]


def test_simulate_never_writes_over_its_plan_or_one_output_over_another(tmp_path, capsys):
    plan = write_plan(tmp_path / "p.json")
    before = (tmp_path / "p.json").read_text()
    line = refused(capsys, ["simulate", str(tmp_path / "p.json"), "-o", str(tmp_path / "." / "p.json")])
    assert "-o" in line and "the same file as the plan" in line
    (tmp_path / "link.json").symlink_to(tmp_path / "p.json")
    line = refused(capsys, ["simulate", str(tmp_path / "link.json"), "--chrome", str(tmp_path / "p.json")])
    assert "the same file as the plan" in line
    line = refused(capsys, ["simulate", str(tmp_path / "p.json"), "-o", str(tmp_path / "t.json"),
                            "--chrome", str(tmp_path / "sub" / ".." / "t.json")])
    assert "--chrome" in line and "the same file as -o" in line
    assert (tmp_path / "p.json").read_text() == before and load_document(Plan, tmp_path / "p.json") == plan
    assert listing(tmp_path) == ["link.json", "p.json"]


def test_simulate_makes_missing_folders_only_when_it_writes(tmp_path, capsys):
    write_plan(tmp_path / "p.json")
    (tmp_path / "d").mkdir()
    refused(capsys, ["simulate", str(tmp_path / "p.json"), "-o", str(tmp_path / "new" / "sub" / "t.json"),
                     "--chrome", str(tmp_path / "d")])
    assert listing(tmp_path) == ["d", "p.json"]
    assert main(["simulate", str(tmp_path / "p.json"), "-o", str(tmp_path / "new" / "sub" / "t.json")]) == 0
    assert (tmp_path / "new" / "sub" / "t.json").is_file()


def test_check_distinct_ignores_names_and_devices(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    check_distinct({"--hardware": "h100-pcie5"}, {"-o": "h100-pcie5.json"})  # a shipped name, not a file
    os.mkfifo(tmp_path / "pipe")  # a pipe or a device (`/dev/null`) takes both
    check_distinct({}, {"-o": tmp_path / "pipe", "--chrome": str(tmp_path / "pipe")})
    check_distinct({"the plan": None}, {"-o": None})
    with pytest.raises(UserError, match="the same file as the plan"):
        check_distinct({"the plan": tmp_path / "a.json"}, {"-o": str(tmp_path / "a.json")})
    (tmp_path / "hard.json").hardlink_to(tmp_path / "a.json")
    with pytest.raises(UserError, match="the same file as the plan"):
        check_distinct({"the plan": tmp_path / "a.json"}, {"-o": tmp_path / "hard.json"})


def test_plan_refuses_to_write_over_its_hardware_profile(tmp_path, capsys):
    hw = tmp_path / "hw.json"
    write_document(hw, load_hardware("cpu-generic"))
    before = hw.read_text()
    line = refused(capsys, ["plan", "--model", "tiny-opt", "--hardware", str(hw), "--batch", "2", "--prompt-len",
                            "16", "--gen-len", "4", "-o", str(hw)])
    assert "the same file as --hardware" in line and hw.read_text() == before


# --- tune: outputs, --gen-len 1 ---------------------------------------------------------------------

TUNE = ["tune", "--model", "tiny-opt", "--hardware", "cpu-generic", "--batch", "2", "--prompt-len", "16",
        "--gen-len", "4", "--device", "cpu"]


@pytest.fixture
def no_tuning(monkeypatch):
    import advisor.profile
    import advisor.tune

    def no_work(*args, **kwargs):
        raise AssertionError("the work started although the command should have been refused")

    monkeypatch.setattr(advisor.tune, "tune", no_work)
    monkeypatch.setattr(advisor.profile, "measure", no_work)


def test_tune_refuses_one_file_for_both_outputs_before_any_work(tmp_path, capsys, no_tuning):
    same = str(tmp_path / "same.json")
    line = refused(capsys, TUNE + ["-o", same, "--profile-output", same])
    assert "--profile-output" in line and "the same file as -o" in line
    # the profile it would measure into a new --hardware file is an output too
    line = refused(capsys, TUNE[:4] + [same] + TUNE[5:] + ["-o", str(tmp_path / "p.json"),
                                                           "--profile-output", same])
    assert "the same file as" in line
    hw = tmp_path / "hw.json"  # an existing profile is an input: not overwritten by the calibrated one
    write_document(hw, load_hardware("cpu-generic"))
    line = refused(capsys, TUNE[:4] + [str(hw)] + TUNE[5:] + ["-o", str(tmp_path / "p.json"),
                                                              "--profile-output", str(hw)])
    assert "the same file as --hardware" in line
    assert listing(tmp_path) == ["hw.json"]


def test_tune_refuses_a_workload_without_a_decode_step(tmp_path, capsys, no_tuning):
    argv = TUNE[:-3] + ["1", "--device", "cpu", "-o", str(tmp_path / "p.json"),
                        "--profile-output", str(tmp_path / "h.json")]
    line = refused(capsys, argv)
    assert "--gen-len 1 has no decode step" in line and "--gen-len 2 or more" in line
    assert listing(tmp_path) == []


# --- argument types -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
@pytest.mark.parametrize("command", ["plan", "tune"])
def test_a_non_finite_kv_budget_is_refused_by_the_parser(tmp_path, capsys, command, value):
    base = (["plan"] + TUNE[1:-2]) if command == "plan" else TUNE
    with pytest.raises(SystemExit) as stop:
        main(base + [f"--gpu-kv-budget={value}", "-o", str(tmp_path / "p.json")])
    assert stop.value.code == 2
    assert f"argument --gpu-kv-budget: {value!r} is not a finite number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + [f"--weights-on-gpu={value}", "-o", str(tmp_path / "p.json")])
    assert listing(tmp_path) == []


def test_a_kv_budget_too_large_for_bytes_is_refused_not_a_crash(tmp_path, capsys, no_tuning):
    from advisor.planner_cli import budget_bytes

    for command in (["plan"] + TUNE[1:-2], TUNE):
        line = refused(capsys, command + ["--gpu-kv-budget", "1e300", "-o", str(tmp_path / "p.json")])
        assert "GPU KV budget: 1e+300 GB is too large" in line
    with pytest.raises(UserError, match="not a number"):  # what the TUI's field goes through
        budget_bytes(float("nan"))
    assert budget_bytes(2.5) == 2_500_000_000 and budget_bytes(None) is None
    assert listing(tmp_path) == []


@pytest.mark.parametrize("option, value, message", [
    ("--split", "-1", "argument --split: -1 must be ≥ 0"),
    ("--gpu-kv-budget", "-0.5", "argument --gpu-kv-budget: -0.5 must be ≥ 0"),
    ("--chunks", "0", "argument --chunks: 0 must be positive (1 or more)"),
    ("--split", "1.5", "argument --split: '1.5' is not a whole number"),
    ("--weights-on-gpu", "2", "argument --weights-on-gpu: 2.0 must lie in [0, 1]"),
])
def test_argument_messages_say_what_is_allowed(capsys, option, value, message):
    with pytest.raises(SystemExit):
        main(["plan"] + TUNE[1:-2] + [f"{option}={value}"])
    assert message in capsys.readouterr().err


# --- Ctrl-C while the command's module (torch) is imported ------------------------------------------


def test_ctrl_c_while_the_handler_is_imported_is_an_interruption(monkeypatch, capsys):
    import advisor.cli

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(advisor.cli.importlib, "import_module", interrupted)
    assert main(["list"]) == 130
    assert capsys.readouterr().err == "advisor list: interrupted\n"


# --- the store must hold what the steps read back ---------------------------------------------------


@pytest.mark.parametrize("store, message", [
    ({"act_tokens": 0, "kv_from": 0}, "store.act_tokens 0 is below the largest split 10"),
    ({"act_tokens": 16, "kv_from": 12}, "store.kv_from 12 is above the smallest split 10"),
])
def test_execute_refuses_a_plan_whose_store_misses_what_it_reads(tmp_path, capsys, store, message):
    path = tmp_path / "p.json"
    data = json.loads(write_plan(path, splits=10).model_dump_json())
    data["store"] = store
    path.write_text(json.dumps(data))
    line = refused(capsys, ["execute", str(path), "-o", str(tmp_path / "new" / "m.json"), "--device", "cpu"])
    assert line.startswith(f"advisor execute: {path}: {message}")
    assert listing(tmp_path) == ["p.json"]  # no output, no folder made for it


def test_a_runtime_refuses_a_plan_too_large_for_it_as_a_user_error():
    pytest.importorskip("torch")
    from backend.executor import Executor
    from backend.model import RandomWeights
    from backend.runtime import Capacity, Runtime

    cpu, tiny = load_hardware("cpu-generic"), load_model("tiny-opt")
    small = make_plan(tiny, cpu, Workload(batch=2, prompt_len=12, gen_len=3), splits=4)
    runtime = Runtime(Capacity.of(small), "cpu", RandomWeights(0))
    try:
        with pytest.raises(UserError, match="recomputes more tokens than the activation buffers hold"):
            Executor(runtime, make_plan(tiny, cpu, Workload(batch=2, prompt_len=12, gen_len=3), splits=8))
        with pytest.raises(UserError, match="plans differ"):
            Executor(runtime, make_plan(tiny, cpu, Workload(batch=4, prompt_len=12, gen_len=3), splits=4))
    finally:
        runtime.release()


def test_check_distinct_takes_lists_of_inputs(tmp_path):
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text("{}")
    check_distinct({"a measured trace": [tmp_path / "a.json", tmp_path / "b.json"], "--plan": None},
                   {"-o": tmp_path / "c.json"})
    with pytest.raises(UserError, match=r"^-o .*b\.json: the same file as a measured trace .*b\.json; "):
        check_distinct({"a measured trace": [str(tmp_path / "a.json"), str(tmp_path / "b.json")]},
                       {"-o": tmp_path / "b.json"})


def test_an_output_through_a_missing_folder_and_back_is_written(tmp_path, capsys):
    """`-o new/../t.json`: `new/..` is missing until `new` is made; the write must not fail after the
    work (it said "File exists")."""
    write_plan(tmp_path / "p.json")
    assert main(["simulate", str(tmp_path / "p.json"), "-o", str(tmp_path / "new" / ".." / "t.json")]) == 0
    assert (tmp_path / "t.json").is_file()
    capsys.readouterr()


def test_inline_prompt_ids_longer_than_a_file_name_are_ids_not_a_crash(tmp_path, capsys):
    """check_distinct looks whether each input is a file; a 300-character JSON list is too long a
    name for the OS, which raised instead of answering no."""
    write_plan(tmp_path / "p.json", gen=2, splits=0)
    padded = json.dumps([[i % 50 for i in range(16)]] * 2).replace(",", ",        ")  # batch 2, prompt 16
    assert len(padded) > 300
    assert main(["execute", str(tmp_path / "p.json"), "-o", str(tmp_path / "m.json"), "--device", "cpu",
                 "--no-timing-overhead", "--prompt-ids", padded]) == 0
    capsys.readouterr()
