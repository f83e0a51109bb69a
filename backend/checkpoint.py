"""Weights from a local Hugging Face checkpoint folder (`config.json` + `*.safetensors`).

Nothing is downloaded. The folder's config must describe the plan's model (same family and
shapes); its tensors are read lazily with safetensors, one layer at a time, and rearranged into
the backend's flat per-layer layout (`model.LayerLayout`) on the device where each layer will
live. The same conversion serves an in-memory `state_dict`, which is how the tests hand a
transformers model's random weights to the backend. A tokenizer in the folder, if any, is loaded
for `--prompt` and the generated text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from advisor.catalog import model_from_hf_config
from advisor.documents import ModelSpec
from advisor.errors import UserError
from backend.model import OPT_POSITION_OFFSET, GlobalWeights, LayerLayout, LayerWeights

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def checkpoint_spec(plan_model: ModelSpec, folder: Path) -> ModelSpec:
    """The plan's model with the checkpoint's numerics (rope θ, norm ε, biases), after checking
    that the checkpoint's config (read by `advisor.catalog`) has the plan's shapes."""
    folder = Path(folder)
    found = model_from_hf_config(folder)
    where = str(folder / "config.json")
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
        from safetensors import safe_open

        folder = Path(folder)
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise UserError(f"{folder}: no *.safetensors files (only safetensors checkpoints are read)")
        handles = [safe_open(str(path), framework="pt", device="cpu") for path in files]
        where_is = {name: handle for handle in handles for name in handle.keys()}
        return cls(lambda name: where_is[name].get_tensor(name) if name in where_is else None, str(folder))

    def tensor(self, *names: str, required: bool = True) -> torch.Tensor | None:
        """The first of `names` present (each also tried with and without a `model.` prefix)."""
        for name in names:
            for candidate in (name, f"model.{name}", name.removeprefix("model.")):
                found = self._get(candidate)
                if found is not None:
                    return found
        if required:
            raise UserError(f"{self.where}: tensor {names[0]} is missing")
        return None

    def _layer_tensors(self, spec: ModelSpec, layer: int) -> dict[str, torch.Tensor]:
        t = self.tensor
        if spec.family == "opt":
            p = f"model.decoder.layers.{layer}."
            out = {
                "attn_norm_w": t(p + "self_attn_layer_norm.weight"),
                "attn_norm_b": t(p + "self_attn_layer_norm.bias"),
                "wqkv": torch.cat([t(p + f"self_attn.{x}_proj.weight") for x in "qkv"]),
                "wo": t(p + "self_attn.out_proj.weight"),
                "mlp_norm_w": t(p + "final_layer_norm.weight"),
                "mlp_norm_b": t(p + "final_layer_norm.bias"),
                "w1": t(p + "fc1.weight"),
                "w2": t(p + "fc2.weight"),
            }
            if spec.bias:
                out["bqkv"] = torch.cat([t(p + f"self_attn.{x}_proj.bias") for x in "qkv"])
                out["bo"] = t(p + "self_attn.out_proj.bias")
                out["b1"] = t(p + "fc1.bias")
                out["b2"] = t(p + "fc2.bias")
            return out
        p = f"model.layers.{layer}."
        out = {
            "attn_norm_w": t(p + "input_layernorm.weight"),
            "wqkv": torch.cat([t(p + f"self_attn.{x}_proj.weight") for x in "qkv"]),
            "wo": t(p + "self_attn.o_proj.weight"),
            "mlp_norm_w": t(p + "post_attention_layernorm.weight"),
            "w13": torch.cat([t(p + "mlp.gate_proj.weight"), t(p + "mlp.up_proj.weight")]),
            "w2": t(p + "mlp.down_proj.weight"),
        }
        if spec.bias:
            out["bqkv"] = torch.cat([t(p + f"self_attn.{x}_proj.bias") for x in "qkv"])
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
        def load(*names, required=True):
            value = self.tensor(*names, required=required)
            return None if value is None else value.to(device=device, dtype=dtype)

        if spec.family == "opt":
            embed = load("model.decoder.embed_tokens.weight")
            positions = load("model.decoder.embed_positions.weight")
            if positions.shape[0] < spec.max_positions + OPT_POSITION_OFFSET:
                raise UserError(f"{self.where}: embed_positions has {positions.shape[0]} rows, "
                                f"need {spec.max_positions + OPT_POSITION_OFFSET}")
            norm_w = load("model.decoder.final_layer_norm.weight")
            norm_b = load("model.decoder.final_layer_norm.bias")
        else:
            embed = load("model.embed_tokens.weight")
            positions, norm_b = None, None
            norm_w = load("model.norm.weight")
        head = None if spec.tie_embeddings else load("lm_head.weight", required=False)
        return GlobalWeights(embed, positions, norm_w, norm_b, embed if head is None else head)


def load_tokenizer(folder: Path | None):
    """The folder's tokenizer, or None when it has none."""
    if folder is None or not any((Path(folder) / name).exists() for name in TOKENIZER_FILES):
        return None
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:  # a broken tokenizer should not stop a run with --prompt-ids
        raise UserError(f"{folder}: cannot load the tokenizer: {error}") from None
