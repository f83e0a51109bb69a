"""`advisor execute --checkpoint`: what the backend cannot run faithfully is refused in one line
(exit 2, no output file); what only costs the generated text is a warning."""

import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from advisor.catalog import load_model  # noqa: E402
from advisor.cli import main  # noqa: E402
from advisor.documents import Trace, load_document  # noqa: E402
from advisor.errors import UserError  # noqa: E402
from test_backend import hf_model  # noqa: E402
from test_backend_cli import _tokenizer, write_plan  # noqa: E402

IDS = json.dumps([[3, 1, 4, 1, 5, 9, 2, 6]] * 2)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """tiny-opt (tied embeddings) and tiny-llama (untied) saved by transformers, once per module."""
    root = tmp_path_factory.mktemp("saved")
    for name in ("tiny-opt", "tiny-llama"):
        hf_model(load_model(name)).save_pretrained(str(root / name), safe_serialization=True)
    return root


@pytest.fixture
def checkpoint(saved, tmp_path):
    """A fresh copy of a saved checkpoint, and its plan (batch 2, prompt 8, gen 3)."""
    def make(name):
        folder = tmp_path / name
        shutil.copytree(saved / name, folder)
        write_plan(tmp_path / "plan.json", load_model(name), prompt=8, gen=3, splits=4)
        return folder
    return make


def execute(tmp_path, folder, *extra):
    """Run `advisor execute` on the checkpoint; a refusal must leave no output file."""
    (tmp_path / "m.json").unlink(missing_ok=True)
    code = main(["execute", str(tmp_path / "plan.json"), "-o", str(tmp_path / "m.json"), "--device", "cpu",
                 "--no-timing-overhead", "--checkpoint", str(folder), *extra])
    if code:
        assert not (tmp_path / "m.json").exists() and not list(tmp_path.glob(".m.json*"))
    return code


def refused(capsys, message):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("advisor execute:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    return lines[0]


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not ...}))


def edit_tensors(folder, edit):
    path = next(folder.glob("*.safetensors"))
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("name, changes, message", [
    ("tiny-llama", dict(model_type="mistral", sliding_window=4), "sliding-window attention"),
    ("tiny-llama", dict(rope_parameters=..., rope_theta=10000.0, rope_scaling={"type": "linear", "factor": 4.0}),
     "rope scaling 'linear'"),
    ("tiny-llama", dict(rope_scaling={"type": "dynamic", "factor": 4.0}), "rope scaling 'dynamic'"),
    ("tiny-llama", dict(quantization_config={"quant_method": "fp8"}), "quantized checkpoint (fp8)"),
    ("tiny-llama", dict(hidden_act="gelu"), "hidden_act 'gelu'"),
    ("tiny-opt", dict(activation_function="gelu"), "activation_function 'gelu'"),
])
def test_a_config_the_backend_would_compute_differently_is_refused(checkpoint, tmp_path, capsys, name, changes,
                                                                    message):
    folder = checkpoint(name)
    edit_config(folder, **changes)
    assert execute(tmp_path, folder, "--prompt-ids", IDS) == 2
    refused(capsys, message)


@pytest.mark.parametrize("window", [None, 10, 256])
def test_a_sliding_window_that_never_slides_is_accepted(checkpoint, tmp_path, window):
    """The plan's 10 positions (prompt 8, 3 new tokens) fit in the window: full attention is the
    same. Planning reads only shapes: a window of 4 plans (Mistral-7B-v0.1's 4096 of 32768)."""
    folder = checkpoint("tiny-llama")
    edit_config(folder, model_type="mistral", sliding_window=window)
    assert execute(tmp_path, folder, "--prompt-ids", IDS) == 0
    edit_config(folder, sliding_window=4)
    assert load_model(str(folder)).family == "llama"
    assert load_model("mistral-7b").max_positions == 32768  # the shipped planning profile is unaffected


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn])
def test_quantized_or_integer_tensors_are_refused(checkpoint, tmp_path, capsys, dtype):
    folder = checkpoint("tiny-llama")
    key = "model.layers.1.self_attn.q_proj.weight"
    edit_tensors(folder, lambda t: t.update({key: (t[key] * 100).to(dtype)}))
    assert execute(tmp_path, folder, "--prompt-ids", IDS) == 2
    refused(capsys, f"tensor {key} is {str(dtype).removeprefix('torch.')}: quantized or integer weights")


def _cut(key, rows=None, cols=None):
    def edit(tensors):
        value = tensors[key]
        tensors[key] = value[:rows, :cols].contiguous() if value.dim() == 2 else value[:rows].contiguous()
    return edit


@pytest.mark.parametrize("name, edit, message", [
    ("tiny-llama", _cut("model.embed_tokens.weight", rows=500), "model.embed_tokens.weight: shape (500, 64)"),
    ("tiny-llama", _cut("model.embed_tokens.weight", cols=32), "model.embed_tokens.weight: shape (1000, 32)"),
    ("tiny-llama", _cut("lm_head.weight", rows=10), "lm_head.weight: shape (10, 64), expected (1000, 64)"),
    ("tiny-llama", _cut("model.norm.weight", rows=10), "model.norm.weight: shape (10,), expected (64,)"),
    ("tiny-opt", _cut("model.decoder.embed_positions.weight", cols=10), "embed_positions.weight: shape (258, 10)"),
    ("tiny-opt", _cut("model.decoder.final_layer_norm.bias", rows=3), "final_layer_norm.bias: shape (3,)"),
    ("tiny-llama", _cut("model.layers.0.self_attn.q_proj.weight", cols=32), "q_proj.weight: shape (64, 32)"),
    ("tiny-llama", _cut("model.layers.1.self_attn.k_proj.weight", rows=16), "k_proj.weight: shape (16, 64)"),
    ("tiny-llama", _cut("model.layers.0.mlp.up_proj.weight", cols=8), "up_proj.weight: shape (176, 8)"),
    ("tiny-opt", _cut("model.decoder.layers.0.self_attn.v_proj.bias", rows=5), "v_proj.bias: shape (5,)"),
    ("tiny-llama", lambda t: t.pop("lm_head.weight"), "tensor lm_head.weight is missing"),
])
def test_every_tensor_is_shape_checked_and_an_untied_head_is_required(checkpoint, tmp_path, capsys, name, edit,
                                                                       message):
    folder = checkpoint(name)
    edit_tensors(folder, edit)
    assert execute(tmp_path, folder, "--prompt-ids", IDS) == 2
    refused(capsys, message)


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"not a safetensors file at all"])
def test_a_truncated_or_corrupt_safetensors_file_is_named(checkpoint, tmp_path, capsys, damage):
    folder = checkpoint("tiny-llama")
    path = next(folder.glob("*.safetensors"))
    path.write_bytes(damage(path.read_bytes()))
    assert execute(tmp_path, folder, "--prompt-ids", IDS) == 2
    refused(capsys, f"{path}: cannot read safetensors")


def test_text_prompt_ids_are_checked_against_the_model_vocabulary(checkpoint, tmp_path, capsys):
    folder = checkpoint("tiny-opt")
    _tokenizer(folder, 1200)  # knows more tokens than the model's 1000
    assert execute(tmp_path, folder, "--prompt", "w1 w2 w3 w1100 w4 w5 w6 w7") == 2
    refused(capsys, "--prompt: sequence 0 has ids outside the model's vocabulary [0, 1000): [1100]")


def test_a_broken_tokenizer_only_costs_the_generated_text(checkpoint, tmp_path, capsys):
    folder = checkpoint("tiny-opt")
    (folder / "tokenizer.json").write_text("{")
    assert execute(tmp_path, folder, "--prompt", "w1 w2") == 2
    refused(capsys, "cannot load the tokenizer")
    assert execute(tmp_path, folder, "--prompt-ids", IDS) == 0
    assert "warning:" in capsys.readouterr().err
    assert load_document(Trace, tmp_path / "m.json").generated_text is None


def test_a_tokenizer_without_a_vocabulary_counts_as_absent(checkpoint, tmp_path, capsys):
    folder = checkpoint("tiny-opt")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    assert execute(tmp_path, folder, "--prompt-ids", IDS) == 0
    assert "the tokenizer has no vocabulary" in capsys.readouterr().err
    assert load_document(Trace, tmp_path / "m.json").generated_text is None
    assert execute(tmp_path, folder, "--prompt", "w1 w2") == 2
    refused(capsys, "the tokenizer has no vocabulary")


def test_a_tokenizer_that_cannot_decode_leaves_the_text_out(checkpoint, tmp_path, capsys, monkeypatch):
    folder = checkpoint("tiny-opt")
    _tokenizer(folder, 1000)

    def fail(*args, **kwargs):
        raise ValueError("cannot decode")

    monkeypatch.setattr(transformers.PreTrainedTokenizerFast, "batch_decode", fail)
    assert execute(tmp_path, folder, "--prompt", "w1 w2 w3 w4 w5 w6 w7 w8") == 0
    assert "cannot decode the generated ids (cannot decode)" in capsys.readouterr().err
    trace = load_document(Trace, tmp_path / "m.json")
    assert trace.prompt_ids == [list(range(1, 9))] * 2 and trace.generated_text is None


def test_booleans_are_not_token_ids(tmp_path, capsys):
    write_plan(tmp_path / "plan.json", load_model("tiny-opt"), prompt=4)
    code = main(["execute", str(tmp_path / "plan.json"), "-o", str(tmp_path / "m.json"), "--device", "cpu",
                 "--prompt-ids", "[true, false, 1, 2]"])
    assert code == 2 and "expected a JSON list of token ids" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_one_new_token_has_no_decode_step_to_report(tmp_path, capsys):
    write_plan(tmp_path / "plan.json", load_model("tiny-opt"), gen=1)
    assert main(["execute", str(tmp_path / "plan.json"), "-o", str(tmp_path / "m.json"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "decode step n/a" in out and "tokens/s" not in out


def test_load_model_refuses_with_a_user_error(checkpoint):
    """`advisor plan --model FOLDER` reads the same config: the refusal is the same one line."""
    folder = checkpoint("tiny-llama")
    edit_config(folder, quantization_config={"quant_method": "awq"})
    with pytest.raises(UserError, match="quantized checkpoint"):
        load_model(str(folder))
