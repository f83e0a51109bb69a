"""`advisor execute`: the measured trace, checkpoints saved by transformers, refusals and clean failure."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from advisor.catalog import load_hardware, load_model  # noqa: E402
from advisor.cli import main  # noqa: E402
from advisor.documents import Trace, Workload, load_document, write_document  # noqa: E402
from advisor.opgraph import build_graph  # noqa: E402
from advisor.plans import make_plan  # noqa: E402
from test_backend import hf_greedy, hf_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def write_plan(path, spec, batch=2, prompt=8, gen=4, **choices):
    wl = Workload(batch=batch, prompt_len=prompt, gen_len=gen)
    plan = make_plan(spec, load_hardware("cpu-generic"), wl, **choices)
    write_document(path, plan)
    return plan


def test_execute_writes_a_measured_trace_keyed_by_the_graphs_ids(tmp_path, capsys):
    plan = write_plan(tmp_path / "plan.json", load_model("tiny-llama"), splits=4, chunks=2)
    ids = [[5, 6, 7, 8, 9, 10, 11, 12], [1, 2, 3, 4, 5, 6, 7, 8]]
    code = main(["execute", str(tmp_path / "plan.json"), "-o", str(tmp_path / "m.json"), "--device", "cpu",
                 "--prompt-ids", json.dumps(ids), "--warmup-steps", "1"])
    assert code == 0
    trace = load_document(Trace, tmp_path / "m.json")
    assert trace.source == "measured" and trace.plan_fingerprint == plan.fingerprint()
    assert [r.id for r in trace.records] == [op.id for op in build_graph(plan).operations]
    assert all(r.end_s >= r.start_s >= 0 for r in trace.records)
    assert trace.prompt_ids == ids and len(trace.generated_ids) == 2 and len(trace.generated_ids[0]) == 4
    assert trace.summary.warmup_steps_excluded == 1 and len(trace.summary.step_times_s) == 3
    for key in ("kv_copy_GBps", "pinned_bytes", "timing_overhead"):
        assert key in trace.extra
    assert trace.extra["timing_overhead"] is not None and trace.extra["reference_step_s"] > 0
    assert any(note.startswith("timing overhead: decode steps 1..2") for note in trace.notes)
    assert trace.extra["pinned_bytes"] == 0  # CPU mode pins nothing
    assert any("warm-up" in note for note in trace.notes)
    assert "wrote" in capsys.readouterr().out
    assert trace.extra["plan_path"] == str((tmp_path / "plan.json").resolve())
    assert trace.extra["device_kind"] == "cpu"


def test_the_timing_overhead_can_be_left_out(tmp_path, capsys):
    write_plan(tmp_path / "plan.json", load_model("tiny-opt"), splits=4)
    assert main(["execute", str(tmp_path / "plan.json"), "-o", str(tmp_path / "m.json"), "--device", "cpu",
                 "--no-timing-overhead"]) == 0
    trace = load_document(Trace, tmp_path / "m.json")
    assert trace.extra["timing_overhead"] is None
    assert not any(note.startswith("timing overhead") for note in trace.notes)
    assert "timing overhead n/a" in capsys.readouterr().out


def test_calibrate_finds_the_plan_a_measured_trace_names(tmp_path, capsys):
    """`advisor execute` records its plan's path, so `advisor calibrate measured.json` needs no --plan."""
    write_plan(tmp_path / "plan.json", load_model("tiny-opt"), splits=4, chunks=2, gen=6)
    assert main(["execute", str(tmp_path / "plan.json"), "-o", str(tmp_path / "m.json"), "--device", "cpu"]) == 0
    out = tmp_path / "calibrated.json"
    assert main(["calibrate", str(tmp_path / "m.json"), "--hardware", "cpu-generic", "-o", str(out)]) == 0
    from advisor.documents import HardwareProfile

    profile = load_document(HardwareProfile, out)
    assert any("m.json" in used for used in profile.provenance.calibrated_from)


def _tokenizer(folder, vocab_size):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(1, vocab_size)} | {"[UNK]": 0}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def test_a_transformers_checkpoint_runs_through_python_m_advisor_with_a_text_prompt(tmp_path):
    reference = hf_model(load_model("tiny-opt"))
    folder = tmp_path / "ckpt"
    reference.save_pretrained(str(folder), safe_serialization=True)
    _tokenizer(folder, reference.config.vocab_size)
    prompt = "w5 w17 w3 w900 w42 w8"
    spec = load_model(str(folder))  # the plan is made from the checkpoint's config.json
    plan = write_plan(tmp_path / "plan.json", spec, batch=2, prompt=6, gen=5, splits=3, chunks=2)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "advisor", "execute", str(tmp_path / "plan.json"), "-o",
                          str(tmp_path / "m.json"), "--device", "cpu", "--checkpoint", str(folder), "--prompt", prompt],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    trace = load_document(Trace, tmp_path / "m.json")
    assert trace.prompt_ids == [[5, 17, 3, 900, 42, 8]] * 2
    _, tokens = hf_greedy(reference, torch.tensor(trace.prompt_ids), plan.workload.gen_len)
    assert trace.generated_ids == tokens.t().tolist()
    assert trace.generated_text == [" ".join(f"w{t}" if t else "[UNK]" for t in row) for row in trace.generated_ids]
    assert "generated:" in run.stdout


def test_a_llama_gqa_checkpoint_gives_transformers_tokens(tmp_path):
    reference = hf_model(load_model("tiny-llama-gqa"))
    folder = tmp_path / "llama"
    reference.save_pretrained(str(folder), safe_serialization=True)
    write_plan(tmp_path / "plan.json", load_model(str(folder)), batch=2, prompt=8, gen=4, splits=5, chunks=3)
    ids = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]]
    assert main(["execute", str(tmp_path / "plan.json"), "-o", str(tmp_path / "m.json"), "--device", "cpu",
                 "--checkpoint", str(folder), "--prompt-ids", json.dumps(ids)]) == 0
    trace = load_document(Trace, tmp_path / "m.json")
    _, tokens = hf_greedy(reference, torch.tensor(ids), 4)
    assert trace.generated_ids == tokens.t().tolist()
    assert trace.generated_text is None  # no tokenizer in the folder


def test_a_checkpoint_of_another_shape_is_refused(tmp_path, capsys):
    reference = hf_model(load_model("tiny-opt"))
    reference.save_pretrained(str(tmp_path / "ckpt"), safe_serialization=True)
    write_plan(tmp_path / "plan.json", load_model("tiny-llama"))
    code = main(["execute", str(tmp_path / "plan.json"), "-o", str(tmp_path / "m.json"), "--device", "cpu",
                 "--checkpoint", str(tmp_path / "ckpt")])
    assert code == 2 and "family is opt" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_is_refused_with_a_clear_message_when_absent(tmp_path, capsys):
    write_plan(tmp_path / "plan.json", load_model("tiny-opt"))
    code = main(["execute", str(tmp_path / "plan.json"), "-o", str(tmp_path / "m.json"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and "no CUDA device" in err and "--device cpu" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.json").exists()


def test_a_plan_that_does_not_fit_host_memory_is_refused_before_allocating(tmp_path, capsys, monkeypatch):
    import backend.command as command

    monkeypatch.setattr(command, "host_available_bytes", lambda: 2 * 10**9 + 1000)
    monkeypatch.setattr(command.Runtime, "__init__", lambda *a, **k: pytest.fail("allocated"))
    write_plan(tmp_path / "plan.json", load_model("tiny-opt"), splits=4)
    code = main(["execute", str(tmp_path / "plan.json"), "-o", str(tmp_path / "m.json"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "host memory: the plan needs" in err
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("failure", [KeyboardInterrupt, torch.cuda.OutOfMemoryError])
def test_a_failure_mid_run_releases_memory_and_leaves_no_file(tmp_path, monkeypatch, failure):
    import backend.command as command

    released = []
    original = command.Runtime.release

    def spy(self):
        released.append(self.host_stores is not None)
        original(self)

    def fail(self, *args, **kwargs):
        raise failure("simulated")

    monkeypatch.setattr(command.Runtime, "release", spy)
    monkeypatch.setattr(command.Executor, "run", fail)
    write_plan(tmp_path / "plan.json", load_model("tiny-opt"), splits=4)
    code = main(["execute", str(tmp_path / "plan.json"), "-o", str(tmp_path / "m.json"), "--device", "cpu"])
    assert code == (130 if failure is KeyboardInterrupt else 2)
    assert released and released[0]  # the stores were still held, and were released
    assert not (tmp_path / "m.json").exists()
    assert not list(tmp_path.glob(".m.json*"))


@pytest.mark.parametrize("ids, message", [
    ("[1, 2, 3]", "has 3 tokens"),
    ("[[1, 2, 3, 4, 5, 6, 7, 8]]", "1 sequences"),
    ("[1, 2, 3, 4, 5, 6, 7, 100000]", "outside"),
    ("{", "not JSON"),
])
def test_prompt_ids_are_checked_against_the_plan(tmp_path, capsys, ids, message):
    write_plan(tmp_path / "plan.json", load_model("tiny-opt"))
    code = main(["execute", str(tmp_path / "plan.json"), "-o", str(tmp_path / "m.json"), "--device", "cpu",
                 "--prompt-ids", ids])
    assert code == 2 and message in capsys.readouterr().err


def test_a_text_prompt_without_a_tokenizer_is_refused(tmp_path, capsys):
    write_plan(tmp_path / "plan.json", load_model("tiny-opt"))
    code = main(["execute", str(tmp_path / "plan.json"), "-o", str(tmp_path / "m.json"), "--device", "cpu",
                 "--prompt", "hello"])
    assert code == 2 and "needs a tokenizer" in capsys.readouterr().err


def test_the_backend_never_imports_textual():
    code = ("import sys, backend.command, backend.executor, backend.runtime, bench.gpu_check; "
            "sys.exit('textual' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("command", ["execute", "profile", "tune"])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, monkeypatch, command):
    import advisor.profile
    import advisor.tune
    import backend.command

    def no_work(*args, **kwargs):
        raise AssertionError("the work started although its output could not be written")

    for module, name in ((backend.command, "run_plan"), (advisor.profile, "measure"), (advisor.tune, "tune")):
        monkeypatch.setattr(module, name, no_work)
    write_plan(tmp_path / "plan.json", load_model("tiny-opt"))
    (tmp_path / "a-file").write_text("")
    blocked = str(tmp_path / "a-file" / "out.json")  # its folder would have to be a file
    argv = {"execute": ["execute", str(tmp_path / "plan.json"), "-o", blocked, "--device", "cpu"],
            "profile": ["profile", "--device", "cpu", "--quick", "-o", blocked],
            "tune": ["tune", "--model", "tiny-opt", "--hardware", "cpu-generic", "--batch", "2", "--prompt-len", "16",
                     "--gen-len", "4", "--device", "cpu", "-o", blocked]}[command]
    assert main(argv) == 2
    assert f"{blocked}: cannot write" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "plan.json"]


def test_a_gpu_plan_run_on_the_cpu_warns_and_refuses_calibrating_before_the_run(tmp_path, capsys):
    """Its tokens are still a numerics check, but compare and calibrate refuse its timings; before,
    nothing said so until compare, whose advice (a CPU profile) could not be followed."""
    wl = Workload(batch=2, prompt_len=8, gen_len=3)
    write_document(tmp_path / "gpu.json", make_plan(load_model("tiny-opt"), load_hardware("h100-pcie5"), wl,
                                                    splits=4, dtype="fp32"))
    base = ["execute", str(tmp_path / "gpu.json"), "--device", "cpu", "--no-timing-overhead"]
    assert main(base + ["-o", str(tmp_path / "m.json"), "--calibrate", str(tmp_path / "cal.json")]) == 2
    err = capsys.readouterr().err
    assert "--calibrate could not use it" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "cal.json").exists()
    assert main(base + ["-o", str(tmp_path / "m.json")]) == 0
    err = capsys.readouterr().err
    assert "a cuda profile; this run is on cpu" in err and "--hardware cpu-generic" in err
    assert main(["compare", str(tmp_path / "gpu.json"), str(tmp_path / "m.json")]) == 2
    assert "a plan made with one" in capsys.readouterr().err


def test_outputs_that_are_inputs_are_refused_and_a_clamped_warmup_is_said(tmp_path, capsys):
    write_plan(tmp_path / "plan.json", load_model("tiny-opt"), gen=4, splits=4)
    before = (tmp_path / "plan.json").read_text()
    assert main(["execute", str(tmp_path / "plan.json"), "-o", str(tmp_path / "plan.json"), "--device", "cpu"]) == 2
    assert "would destroy" in capsys.readouterr().err and (tmp_path / "plan.json").read_text() == before
    assert main(["execute", str(tmp_path / "plan.json"), "-o", str(tmp_path / "m.json"), "--device", "cpu",
                 "--no-timing-overhead", "--warmup-steps", "10"]) == 0
    assert "--warmup-steps 10: the plan has 3 decode step(s); 2 are left out" in capsys.readouterr().err
    assert load_document(Trace, tmp_path / "m.json").summary.warmup_steps_excluded == 2
    measured = (tmp_path / "m.json").read_text()
    for args in (["calibrate", str(tmp_path / "m.json"), "--hardware", "cpu-generic", "-o", str(tmp_path / "m.json")],
                 ["compare", str(tmp_path / "plan.json"), str(tmp_path / "m.json"), "--chrome", str(tmp_path / "m.json")]):
        assert main(args) == 2
        assert "would destroy" in capsys.readouterr().err and (tmp_path / "m.json").read_text() == measured
