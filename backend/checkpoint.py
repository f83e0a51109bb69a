"""Weights from a local Hugging Face checkpoint folder (`config.json` + `*.safetensors`).

Nothing is downloaded. The folder's config must describe the plan's model (same family and
shapes); its tensors are read lazily with safetensors, one layer at a time, and rearranged into
the backend's flat per-layer layout (`model.LayerLayout`) on the device where each layer will
live. The same conversion serves an in-memory `state_dict`, which is how the tests hand a
transformers model's random weights to the backend. A tokenizer in the folder, if any, is loaded
for `--prompt` and the generated text.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from advisor.catalog import model_from_hf_config, read_hf_config, unsupported_numerics
from advisor.documents import ModelSpec
from advisor.errors import UserError
from backend.model import OPT_POSITION_OFFSET, GlobalWeights, LayerLayout, LayerWeights

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def checkpoint_spec(plan_model: ModelSpec, folder: Path, context: int) -> ModelSpec:
    """The plan's model with the checkpoint's numerics (rope θ, norm ε, biases), after checking
    that the checkpoint's config (read by `advisor.catalog`) has the plan's shapes and nothing the
    decoder would compute differently over the plan's `context` positions."""
    folder = Path(folder)
    found = model_from_hf_config(folder)
    where = str(folder / "config.json")
    unsupported = unsupported_numerics(read_hf_config(folder), context)
    if unsupported:
        raise UserError(f"{where}: {unsupported} is not supported")
    keys = ("family", "num_layers", "hidden", "num_heads", "num_kv_heads", "head_dim", "ffn_hidden", "vocab_size")
    wrong = [f"{key} is {getattr(found, key)}, the plan's model has {getattr(plan_model, key)}"
             for key in keys if getattr(found, key) != getattr(plan_model, key)]
    if wrong:
        raise UserError(*(f"{where}: {line}" for line in wrong))
    if found.max_positions < plan_model.max_positions:
        raise UserError(f"{where}: max_position_embeddings {found.max_positions} is below the "
                        f"plan model's {plan_model.max_positions}")
    update = {"source": str(folder), "bias": found.bias, "tie_embeddings": found.tie_embeddings}
    if found.family == "llama":
        update.update(rope_theta=found.rope_theta, norm_eps=found.norm_eps)
    return plan_model.model_copy(update=update)


class HFWeights:
    """Weights by Hugging Face tensor name, from a `get(name) -> Tensor | None` function."""

    def __init__(self, get: Callable[[str], torch.Tensor | None], where: str):
        self._get = get
        self.where = where

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> "HFWeights":
        return cls(lambda name: state.get(name), "state_dict")

    @classmethod
    def from_folder(cls, folder: Path) -> "HFWeights":
        from safetensors import SafetensorError, safe_open

        folder = Path(folder)
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise UserError(f"{folder}: no *.safetensors files (only safetensors checkpoints are read)")

        def guarded(path: Path, read: Callable, *args, **kwargs):
            """A truncated or corrupt file is the user's to fix: name it, without a traceback."""
            try:
                return read(*args, **kwargs)
            except (SafetensorError, OSError) as error:
                raise UserError(f"{path}: cannot read safetensors: {first_line(error)}") from None

        handles = {path: guarded(path, safe_open, str(path), framework="pt", device="cpu") for path in files}
        where_is = {name: (path, handle) for path, handle in handles.items() for name in handle.keys()}

        def get(name: str) -> torch.Tensor | None:
            if name not in where_is:
                return None
            path, handle = where_is[name]
            return guarded(path, handle.get_tensor, name)

        return cls(get, str(folder))

    def tensor(self, *names: str) -> torch.Tensor:
        """The first of `names` present (each also tried with and without a `model.` prefix)."""
        for name in names:
            for candidate in (name, f"model.{name}", name.removeprefix("model.")):
                found = self._get(candidate)
                if found is None:
                    continue
                if found.dtype not in FLOAT_DTYPES:
                    raise UserError(f"{self.where}: tensor {candidate} is {str(found.dtype).removeprefix('torch.')}: "
                                    "quantized or integer weights are not supported")
                return found
        raise UserError(f"{self.where}: tensor {names[0]} is missing")

    def checked(self, name: str, shape: tuple[int | None, ...]) -> torch.Tensor:
        """`tensor(name)`, refused unless it has `shape` (None matches any size)."""
        value = self.tensor(name)
        if value.dim() != len(shape) or any(want is not None and got != want for got, want in zip(value.shape, shape)):
            wanted = tuple("any" if want is None else want for want in shape)
            raise UserError(f"{self.where}: tensor {name}: shape {tuple(value.shape)}, expected {wanted}")
        return value

    def _rows(self, prefix: str, parts: tuple[str, ...], rows: tuple[int, ...], *cols: int) -> torch.Tensor:
        """The tensors `prefix{part}` stacked by rows, each shape-checked first so that a wrong one is
        named rather than failing inside torch.cat."""
        return torch.cat([self.checked(prefix.format(part), (n, *cols)) for part, n in zip(parts, rows)])

    def _layer_tensors(self, spec: ModelSpec, layer: int) -> dict[str, torch.Tensor]:
        t = self.tensor
        h, qkv = spec.hidden, (spec.hidden, spec.kv_dim, spec.kv_dim)
        if spec.family == "opt":
            p = f"model.decoder.layers.{layer}."
            out = {
                "attn_norm_w": t(p + "self_attn_layer_norm.weight"),
                "attn_norm_b": t(p + "self_attn_layer_norm.bias"),
                "wqkv": self._rows(p + "self_attn.{}_proj.weight", ("q", "k", "v"), qkv, h),
                "wo": t(p + "self_attn.out_proj.weight"),
                "mlp_norm_w": t(p + "final_layer_norm.weight"),
                "mlp_norm_b": t(p + "final_layer_norm.bias"),
                "w1": t(p + "fc1.weight"),
                "w2": t(p + "fc2.weight"),
            }
            if spec.bias:
                out["bqkv"] = self._rows(p + "self_attn.{}_proj.bias", ("q", "k", "v"), qkv)
                out["bo"] = t(p + "self_attn.out_proj.bias")
                out["b1"] = t(p + "fc1.bias")
                out["b2"] = t(p + "fc2.bias")
            return out
        p = f"model.layers.{layer}."
        out = {
            "attn_norm_w": t(p + "input_layernorm.weight"),
            "wqkv": self._rows(p + "self_attn.{}_proj.weight", ("q", "k", "v"), qkv, h),
            "wo": t(p + "self_attn.o_proj.weight"),
            "mlp_norm_w": t(p + "post_attention_layernorm.weight"),
            "w13": self._rows(p + "mlp.{}_proj.weight", ("gate", "up"), (spec.ffn_hidden,) * 2, h),
            "w2": t(p + "mlp.down_proj.weight"),
        }
        if spec.bias:
            out["bqkv"] = self._rows(p + "self_attn.{}_proj.bias", ("q", "k", "v"), qkv)
            out["bo"] = t(p + "self_attn.o_proj.bias")
        return out

    def fill_layer(self, spec: ModelSpec, layout: LayerLayout, layer: int, flat: torch.Tensor) -> None:
        flat.zero_()
        views = LayerWeights(flat, layout, spec)
        for name, value in self._layer_tensors(spec, layer).items():
            target = getattr(views, name)
            if tuple(value.shape) != tuple(target.shape):
                raise UserError(f"{self.where}: layer {layer} {name}: shape {tuple(value.shape)}, "
                                f"expected {tuple(target.shape)}")
            target.copy_(value.to(dtype=target.dtype))

    def global_weights(self, spec: ModelSpec, dtype: torch.dtype, device: torch.device) -> GlobalWeights:
        h, vocab = spec.hidden, spec.vocab_size

        def load(name, *shape):
            return self.checked(name, shape).to(device=device, dtype=dtype)

        if spec.family == "opt":
            embed = load("model.decoder.embed_tokens.weight", vocab, h)
            positions = load("model.decoder.embed_positions.weight", None, h)
            if positions.shape[0] < spec.max_positions + OPT_POSITION_OFFSET:
                raise UserError(f"{self.where}: embed_positions has {positions.shape[0]} rows, "
                                f"need {spec.max_positions + OPT_POSITION_OFFSET}")
            norm_w = load("model.decoder.final_layer_norm.weight", h)
            norm_b = load("model.decoder.final_layer_norm.bias", h)
        else:
            embed = load("model.embed_tokens.weight", vocab, h)
            positions, norm_b = None, None
            norm_w = load("model.norm.weight", h)
        # untied (config tie_word_embeddings false): the checkpoint must have its own head
        head = embed if spec.tie_embeddings else load("lm_head.weight", vocab, h)
        return GlobalWeights(embed, positions, norm_w, norm_b, head)


def load_tokenizer(folder: Path | None, *, needed: bool):
    """The folder's tokenizer, or None when it has none. A broken one, or one with no vocabulary
    (only special tokens, as from a lone tokenizer_config.json), is refused when `needed` (for
    --prompt); otherwise it only costs the generated text, so a warning says so."""
    if folder is None or not any((Path(folder) / name).exists() for name in TOKENIZER_FILES):
        return None
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        empty = not set(tokenizer.get_vocab()) - set(tokenizer.all_special_tokens)
        problem = "the tokenizer has no vocabulary (only special tokens)" if empty else None
    except Exception as error:  # whatever a broken tokenizer file raises
        tokenizer, problem = None, f"cannot load the tokenizer: {first_line(error)}"
    if problem is None:
        return tokenizer
    if needed:
        raise UserError(f"{folder}: {problem}")
    warn(f"{folder}: {problem}; the generated text is left out")
    return None


def warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr)


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
