"""Documents: committed schemas match the code, bad documents give one line per problem."""

import json
from pathlib import Path

import pytest

from advisor.catalog import available, load_hardware, load_model, model_from_hf_config
from advisor.documents import DOCUMENT_TYPES, HardwareProfile, Plan, json_schema, load_document, write_document
from advisor.errors import UserError

SCHEMAS = Path(__file__).resolve().parent.parent / "advisor" / "schemas"


@pytest.mark.parametrize("name", sorted(DOCUMENT_TYPES))
def test_committed_schema_matches_the_code(name):
    committed = json.loads((SCHEMAS / f"{name}.json").read_text())
    assert committed == json_schema(name), (
        f"advisor/schemas/{name}.json is stale: regenerate with `python -m advisor schema {name}`")


def test_every_shipped_profile_loads():
    assert len(available("models")) >= 18 and len(available("hardware")) >= 11
    for _, name, _ in available("models"):
        model = load_model(name)
        assert model.num_heads * model.head_dim == model.hidden
    for _, name, _ in available("hardware"):
        hw = load_hardware(name)
        assert hw.provenance.source, f"{name} names no source"


def test_h100_profile_is_fitted_to_the_reference_points():
    hw = load_hardware("h100-pcie5")
    for point in hw.h2d.points:
        predicted = hw.h2d.latency_s + point.bytes / hw.h2d.bandwidth_Bps
        assert abs(predicted / point.seconds - 1) < 0.03
    # 1 MiB at ~38 GB/s and 1 GiB at ~55 GB/s, as measured
    assert 37e9 < (1 << 20) / (hw.h2d.latency_s + (1 << 20) / hw.h2d.bandwidth_Bps) < 39e9


def test_bad_document_gives_one_line_per_problem(tmp_path):
    good = json.loads(load_hardware("kvpr-paper").model_dump_json())
    good["launch_overhead_s"] = -1
    good["gpu_memory_bytes"] = "lots"
    good["surprise"] = 1
    path = tmp_path / "hw.json"
    path.write_text(json.dumps(good))
    with pytest.raises(UserError) as caught:
        load_document(HardwareProfile, path)
    lines = caught.value.lines
    assert len(lines) == 3
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert any("launch_overhead_s" in line for line in lines)
    assert any("surprise" in line for line in lines)


def test_a_document_of_another_kind_is_named_in_one_line(tmp_path):
    path = tmp_path / "h100.json"
    path.write_text(load_hardware("h100-pcie5").model_dump_json())
    with pytest.raises(UserError) as caught:
        load_document(Plan, path)
    assert caught.value.lines == [f"{path}: is a hardware profile, not a plan (which comes from advisor plan or tune)"]
    # a broken document of the right kind still gets its per-field lines
    data = json.loads(path.read_text())
    data["gpu_memory_bytes"] = "lots"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError) as caught:
        load_document(HardwareProfile, path)
    assert caught.value.lines == [f"{path}: gpu_memory_bytes: Input should be a valid integer, unable to parse "
                                  f"string as an integer"]


def test_wrong_schema_version_is_named(tmp_path):
    data = json.loads(load_hardware("kvpr-paper").model_dump_json())
    data["schema_version"] = 7
    path = tmp_path / "hw.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="schema_version: is 7"):
        load_document(HardwareProfile, path)


def test_not_json_and_missing_file(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="not JSON"):
        load_document(Plan, path)
    with pytest.raises(UserError, match="cannot read"):
        load_document(Plan, tmp_path / "absent.json")


def test_model_from_hugging_face_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
        "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 128256,
        "max_position_embeddings": 8192, "rope_theta": 500000.0, "torch_dtype": "bfloat16",
    }))
    spec = model_from_hf_config(tmp_path)
    shipped = load_model("llama-3-8b")
    for field in ("num_layers", "hidden", "num_heads", "num_kv_heads", "ffn_hidden", "vocab_size", "rope_theta"):
        assert getattr(spec, field) == getattr(shipped, field)
    assert spec.dtype == "bf16" and spec.gqa_group == 4


def test_parameter_count_matches_published_sizes():
    # OPT-6.7B has 6.66e9 parameters, Llama-2-7B 6.74e9, Llama-3-8B 8.03e9
    for name, published in (("opt-6.7b", 6.66e9), ("llama-2-7b", 6.74e9), ("llama-3-8b", 8.03e9)):
        m = load_model(name)
        total = m.num_layers * m.layer_params() + m.embedding_params()
        assert abs(total / published - 1) < 0.01, (name, total)


def test_check_writable_refuses_a_folder_and_leaves_nothing_behind(tmp_path):
    from advisor.documents import check_writable

    with pytest.raises(UserError, match="is a folder"):
        check_writable(tmp_path)
    check_writable(tmp_path / "new" / "deeper" / "plan.json", None)  # the folders are made when it is written
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(UserError, match=f"cannot write: {tmp_path / 'notes.txt'} is not a folder"):
        check_writable(tmp_path / "notes.txt" / "new" / "plan.json")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_failed_write_removes_the_folders_it_made(tmp_path, monkeypatch):
    import os

    from advisor.documents import write_text_atomic

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError):
        write_text_atomic(tmp_path / "a" / "b" / "plan.json", "{}")
    assert list(tmp_path.iterdir()) == []


def _plan_data(**workload):
    from advisor.documents import Workload
    from advisor.plans import make_plan

    wl = Workload(**{"batch": 2, "prompt_len": 64, "gen_len": 6, **workload})
    return json.loads(make_plan(load_model("tiny-opt"), load_hardware("cpu-generic"), wl, splits=20).model_dump_json())


@pytest.mark.parametrize("store, splits, message", [
    ({"act_tokens": 0, "kv_from": 0}, None, "store.act_tokens 0 is below the largest split 20"),
    ({"act_tokens": 64, "kv_from": 60}, [10] * 5, "store.kv_from 60 is above the smallest split 10"),
    ({"act_tokens": 69, "kv_from": 0}, None, "store.act_tokens 69 exceeds the 68 tokens stored"),
    ({"act_tokens": 20, "kv_from": 69}, [0] * 5, "store.kv_from 69 exceeds the 68 tokens stored"),
])
def test_a_store_that_misses_what_the_steps_read_is_refused(tmp_path, store, splits, message):
    data = _plan_data()
    data["store"] = store
    if splits is not None:
        data["splits"] = splits
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError) as caught:
        load_document(Plan, path)
    assert len(caught.value.lines) == 1 and caught.value.lines[0].startswith(f"{path}: {message}")


def test_stores_that_hold_what_the_steps_read_are_valid():
    data = _plan_data()
    assert data["store"] == {"act_tokens": 20, "kv_from": 20}  # what advisor.plans.store_policy writes
    data["store"] = {"act_tokens": 68, "kv_from": 0}  # more than needed (a shared runtime's): still valid
    Plan.model_validate(data)
    no_decode = _plan_data(gen_len=1)  # nothing read back: any store within the prompt
    assert no_decode["splits"] == [] and no_decode["store"] == {"act_tokens": 0, "kv_from": 64}
    no_decode["store"] = {"act_tokens": 0, "kv_from": 0}
    Plan.model_validate(no_decode)
    no_decode["store"] = {"act_tokens": 65, "kv_from": 0}
    with pytest.raises(ValueError, match="exceeds the 64 tokens stored"):
        Plan.model_validate(no_decode)
    resident = _plan_data()  # a plan that does not offload keeps no store: it is not checked
    resident.update(offload=False, splits=[0] * 5, store={"act_tokens": 0, "kv_from": 0})
    Plan.model_validate(resident)


def test_a_pipe_or_device_output_is_written_in_place_not_replaced(tmp_path):
    """`-o /dev/null` or a named pipe: the atomic rename would put a regular file in its place
    (as root, /dev/null itself); such a path is written directly instead."""
    import os
    import stat
    import threading

    from advisor.documents import check_writable, write_document

    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    check_writable(fifo)
    hw = load_hardware("h100-pcie5")
    write_document(fifo, hw)
    reader.join(timeout=10)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert received and HardwareProfile.model_validate_json(received[0]) == hw
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.fifo"]  # no temporary file left

    # a link is written through, and stays a link
    target = tmp_path / "real.json"
    link = tmp_path / "link.json"
    link.symlink_to(target)
    check_writable(link)
    write_document(link, hw)
    assert link.is_symlink() and load_document(HardwareProfile, target) == hw



def test_a_user_profile_is_found_by_its_file_name_or_the_name_inside_and_typos_get_suggestions(tmp_path):
    """`advisor calibrate -o ~/.kvpr-advisor/hardware/mine.json` writes a profile named
    `h100-pcie5-calibrated`; plans print that name, so it must be accepted too."""
    import os

    from advisor.errors import UserError

    folder = Path(os.environ["ADVISOR_HOME"]) / "hardware"
    folder.mkdir(parents=True)
    calibrated = load_hardware("h100-pcie5").model_copy(update={"name": "h100-pcie5-calibrated"})
    write_document(folder / "mine.json", calibrated)
    assert load_hardware("mine") == calibrated == load_hardware("h100-pcie5-calibrated")
    assert load_hardware("h100-pcie5").name == "h100-pcie5"  # a shipped file name still wins
    with pytest.raises(UserError, match="did you mean h100-pcie5"):
        load_hardware("h100-pcie")
    with pytest.raises(UserError) as caught:
        load_model("zzz")
    assert "did you mean" not in str(caught.value) and "choose from" in str(caught.value)
