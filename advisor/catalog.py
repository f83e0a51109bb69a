"""Finding hardware and model profiles by name or path.

`--hardware` and `--model` accept a shipped name (`profiles/`), a user profile name (a JSON file
the user keeps under `$ADVISOR_HOME/hardware` or `/models`, default `~/.kvpr-advisor`, such as the
output of `advisor profile` or `calibrate`), or a file; a model may also be a local Hugging Face
checkpoint folder, read from its `config.json`.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

from advisor.documents import HardwareProfile, ModelSpec, load_document, parse_document
from advisor.errors import UserError

SHIPPED = Path(__file__).resolve().parent.parent / "profiles"


def user_home() -> Path:
    return Path(os.environ.get("ADVISOR_HOME", Path.home() / ".kvpr-advisor"))


def _folders(kind: str) -> list[tuple[str, Path]]:
    return [("shipped", SHIPPED / kind), ("user", user_home() / kind)]


def available(kind: str) -> list[tuple[str, str, Path]]:
    """(origin, name, path) of every profile of `kind` ("hardware" or "models")."""
    found = []
    for origin, folder in _folders(kind):
        if folder.is_dir():
            for path in sorted(folder.glob("*.json")):
                found.append((origin, path.stem, path))
    return found


def _by_name(kind: str, name: str) -> Path | None:
    """The profile whose file is `name`.json (a user profile shadows a shipped one), else a user
    profile whose document is named `name` (a copy of `advisor calibrate`'s output kept under
    another file name is still found by the name plans print)."""
    profiles = available(kind)
    matches = [path for _, stem, path in profiles if stem == name]
    if matches:
        return matches[-1]
    for origin, _, path in profiles:
        if origin == "user":
            try:
                if json.loads(path.read_text()).get("name") == name:
                    return path
            except (OSError, ValueError, AttributeError):
                continue
    return None


def _unknown(kind: str, what: str, name: str, also: str) -> UserError:
    """A refusal naming the nearest profile names first, then all of them."""
    names = [stem for _, stem, _ in available(kind)]
    near = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(near)}? " if near else ""
    return UserError(f"unknown {what} {name!r}: {hint}choose from {', '.join(names)}, or give {also}")


def load_hardware(name_or_path: str) -> HardwareProfile:
    path = Path(name_or_path)
    if path.suffix == ".json" or path.is_file():
        return load_document(HardwareProfile, path)
    found = _by_name("hardware", name_or_path)
    if found is None:
        raise _unknown("hardware", "hardware profile", name_or_path, "a file")
    return load_document(HardwareProfile, found)


def load_model(name_or_path: str) -> ModelSpec:
    path = Path(name_or_path)
    if path.is_dir():
        return model_from_hf_config(path)
    if path.suffix == ".json" or path.is_file():
        if path.is_file() and path.name == "config.json":
            return model_from_hf_config(path.parent)
        return load_document(ModelSpec, path)
    found = _by_name("models", name_or_path)
    if found is None:
        raise _unknown("models", "model", name_or_path, "a file or checkpoint folder")
    return load_document(ModelSpec, found)


def rope_theta(cfg: dict) -> float:
    """rope θ from a config written by transformers 4 (top level) or 5 (`rope_parameters`)."""
    params = cfg.get("rope_parameters") or {}
    return float(params.get("rope_theta") or cfg.get("rope_theta") or 10000.0)


def read_hf_config(folder: Path) -> dict:
    """A Hugging Face checkpoint folder's config.json."""
    config_path = folder / "config.json"
    try:
        return json.loads(config_path.read_text())
    except OSError:
        raise UserError(f"{folder}: no config.json: not a Hugging Face checkpoint folder") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{config_path}: not JSON: {error.msg}") from None


def _quantized(cfg: dict) -> str | None:
    """A quantized checkpoint: its weight bytes are not those of its dtype (planning would count
    them wrong) and the backend does not dequantize."""
    quantized = cfg.get("quantization_config")
    if not quantized:
        return None
    method = quantized.get("quant_method") if isinstance(quantized, dict) else None
    return f"a quantized checkpoint ({method or 'quantization_config'})"


def unsupported_numerics(cfg: dict, context: int) -> str | None:
    """What in the config the backend would silently compute differently over `context` positions
    (it implements plain rope, full causal attention, unquantized weights, ReLU OPT and SwiGLU
    Llama), or None. Planning needs only the shapes: it checks none of this but quantization."""
    kind = cfg.get("model_type")
    for rope in (cfg.get("rope_parameters") or {}, cfg.get("rope_scaling") or {}):
        scaling = rope.get("rope_type") or rope.get("type")  # transformers 5 / 4.x / older configs
        if scaling not in (None, "default"):
            return f"rope scaling {scaling!r}"
    window = cfg.get("sliding_window")
    if window is not None and window < context:  # within the window full attention is the same
        return f"sliding-window attention over {context} positions (sliding_window {window})"
    if _quantized(cfg):
        return _quantized(cfg)
    if kind in ("llama", "mistral") and cfg.get("mlp_bias"):
        return "Llama with MLP biases"
    if kind in ("opt", "llama", "mistral"):
        key, implemented = ("activation_function", "relu") if kind == "opt" else ("hidden_act", "silu")
        if cfg.get(key, implemented) != implemented:
            return f"{key} {cfg[key]!r} (only {implemented!r} is implemented)"
    return None


def model_from_hf_config(folder: Path) -> ModelSpec:
    """A ModelSpec from a Hugging Face checkpoint folder's config.json (OPT and Llama families)."""
    config_path = folder / "config.json"
    cfg = read_hf_config(folder)
    kind = cfg.get("model_type")
    dtype = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}.get(
        str(cfg.get("torch_dtype") or cfg.get("dtype") or "float16"), "fp16")
    where = str(config_path)
    if _quantized(cfg):
        raise UserError(f"{where}: {_quantized(cfg)} is not supported")
    try:
        if kind == "opt":
            if not cfg.get("do_layer_norm_before", True) or cfg.get("word_embed_proj_dim", cfg["hidden_size"]) != cfg["hidden_size"]:
                raise UserError(f"{where}: this OPT variant (post-norm or projected embeddings) is not supported")
            hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
            data = dict(
                name=folder.name, family="opt", num_layers=cfg["num_hidden_layers"], hidden=hidden,
                num_heads=heads, num_kv_heads=heads, head_dim=hidden // heads, ffn_hidden=cfg["ffn_dim"],
                vocab_size=cfg["vocab_size"], max_positions=cfg["max_position_embeddings"], norm="layernorm",
                activation="relu", position="learned", bias=cfg.get("enable_bias", True),
                tie_embeddings=cfg.get("tie_word_embeddings", True), dtype=dtype, source=where,
            )
        elif kind in ("llama", "mistral"):
            hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
            data = dict(
                name=folder.name, family="llama", num_layers=cfg["num_hidden_layers"], hidden=hidden,
                num_heads=heads, num_kv_heads=cfg.get("num_key_value_heads") or heads,
                head_dim=cfg.get("head_dim") or hidden // heads, ffn_hidden=cfg["intermediate_size"],
                vocab_size=cfg["vocab_size"], max_positions=cfg["max_position_embeddings"], norm="rmsnorm",
                activation="swiglu", position="rotary", bias=bool(cfg.get("attention_bias", False)),
                rope_theta=rope_theta(cfg), norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                tie_embeddings=cfg.get("tie_word_embeddings", False), dtype=dtype, source=where,
            )
        else:
            raise UserError(f"{where}: model_type {kind!r} is not supported (opt, llama, mistral are)")
    except KeyError as missing:
        raise UserError(f"{where}: {missing.args[0]}: missing") from None
    return parse_document(ModelSpec, data, where)
