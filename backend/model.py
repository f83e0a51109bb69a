"""OPT and Llama decoder layers, written as the pieces the operation graph runs.

The backend does not run a whole forward pass: it runs a plan's operations one at a time, on
whatever lane and in whatever order the graph says, so a decoder layer here is its weights (one
flat buffer per layer, so that streaming a layer's weights to the GPU is one copy) and the
functions each operation calls: the embedding, the input norm and Q/K/V projections, the K/V
projections of stored activations (the recomputation), attention, the MLP and the LM head.

Read it top to bottom: weights layout, norms, rotary embeddings, the per-operation functions.
Everything works on token-major tensors (`[tokens, batch, ...]`), the layout of the KV and
activation stores, so that a range of tokens is one contiguous slice everywhere. Numerics follow
Hugging Face transformers' `OPTForCausalLM` and `LlamaForCausalLM` (pre-norm OPT, learned positions
offset by 2; Llama RMSNorm in fp32, `rotate_half` rotary, SwiGLU, grouped-query attention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from advisor.documents import ModelSpec
from advisor.shapes import ATTENTION_ROWS, MLP_ROWS

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
INIT_STD = 0.02
OPT_POSITION_OFFSET = 2  # OPT's learned position table starts at index 2
ALIGN = 128  # elements: every tensor of a flat layer buffer starts on a 256-byte boundary (fp16)


# ---------------------------------------------------------------------------------------------
# Weights: one flat buffer per layer, carved into named views
# ---------------------------------------------------------------------------------------------


class LayerLayout:
    """Names, shapes and offsets of one decoder layer's tensors inside its flat buffer.

    Q, K and V projections are one matrix `wqkv` (rows: Q, then K, then V), so the K and V rows
    that the recomputation needs are one contiguous view; Llama's gate and up projections are one
    matrix `w13`.
    """

    def __init__(self, spec: ModelSpec):
        h, kv, f = spec.hidden, spec.kv_dim, spec.ffn_hidden
        layernorm = spec.norm == "layernorm"
        entries: list[tuple[str, tuple[int, ...]]] = [("attn_norm_w", (h,))]
        if layernorm:
            entries.append(("attn_norm_b", (h,)))
        entries.append(("wqkv", (h + 2 * kv, h)))
        if spec.bias:
            entries.append(("bqkv", (h + 2 * kv,)))
        entries.append(("wo", (h, h)))
        if spec.bias:
            entries.append(("bo", (h,)))
        entries.append(("mlp_norm_w", (h,)))
        if layernorm:
            entries.append(("mlp_norm_b", (h,)))
        if spec.activation == "relu":
            entries.append(("w1", (f, h)))
            if spec.bias:
                entries.append(("b1", (f,)))
            entries.append(("w2", (h, f)))
            if spec.bias:
                entries.append(("b2", (h,)))
        else:
            entries += [("w13", (2 * f, h)), ("w2", (h, f))]
        self.shapes = dict(entries)
        self.offsets: dict[str, int] = {}
        offset = 0
        for name, shape in entries:
            self.offsets[name] = offset
            offset += -(-math.prod(shape) // ALIGN) * ALIGN
        self.numel = offset

    def norm_names(self) -> list[str]:
        return [n for n in self.shapes if n.endswith("norm_w")]


class LayerWeights:
    """Views of one layer's flat buffer by name (missing biases are None)."""

    def __init__(self, flat: torch.Tensor, layout: LayerLayout, spec: ModelSpec):
        self.flat = flat
        for name, shape in layout.shapes.items():
            start = layout.offsets[name]
            setattr(self, name, flat[start:start + math.prod(shape)].view(shape))
        for name in ("attn_norm_b", "mlp_norm_b", "bqkv", "bo", "b1", "b2", "w1", "w13"):
            if name not in layout.shapes:
                setattr(self, name, None)
        h, kv = spec.hidden, spec.kv_dim
        self.wq, self.wk, self.wv = self.wqkv[:h], self.wqkv[h:h + kv], self.wqkv[h + kv:]
        b = self.bqkv
        self.bq, self.bk, self.bv = (None, None, None) if b is None else (b[:h], b[h:h + kv], b[h + kv:])


@dataclass
class GlobalWeights:
    """What lives outside the decoder layers, always on the compute device."""

    embed: torch.Tensor  # [vocab, h]
    positions: torch.Tensor | None  # OPT: [max_positions + 2, h]
    norm_w: torch.Tensor
    norm_b: torch.Tensor | None
    lm_head: torch.Tensor  # [vocab, h]; the embedding itself when tied


class RandomWeights:
    """Weights drawn from a seed: N(0, 0.02) matrices and biases, unit norm scales, zero norm shifts.

    Each layer has its own generator (seeded from the seed and the layer) on the device its buffer
    lives on, so any layer can be filled alone, where it will be used.
    """

    def __init__(self, seed: int = 0):
        self.seed = seed

    def _generator(self, device: torch.device, index: int) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(self.seed * 1_000_003 + index)
        return g

    def fill_layer(self, spec: ModelSpec, layout: LayerLayout, layer: int, flat: torch.Tensor) -> None:
        flat.normal_(0.0, INIT_STD, generator=self._generator(flat.device, layer + 1))
        views = LayerWeights(flat, layout, spec)
        for name in layout.shapes:
            if name.endswith("norm_w"):
                getattr(views, name).fill_(1.0)
            elif name.endswith("norm_b"):
                getattr(views, name).zero_()

    def global_weights(self, spec: ModelSpec, dtype: torch.dtype, device: torch.device) -> GlobalWeights:
        g = self._generator(device, 0)
        h = spec.hidden

        def normal(*shape):
            return torch.empty(shape, dtype=dtype, device=device).normal_(0.0, INIT_STD, generator=g)

        embed = normal(spec.vocab_size, h)
        positions = normal(spec.max_positions + OPT_POSITION_OFFSET, h) if spec.position == "learned" else None
        norm_w = torch.ones(h, dtype=dtype, device=device)
        norm_b = torch.zeros(h, dtype=dtype, device=device) if spec.norm == "layernorm" else None
        lm_head = embed if spec.tie_embeddings else normal(spec.vocab_size, h)
        return GlobalWeights(embed, positions, norm_w, norm_b, lm_head)


# ---------------------------------------------------------------------------------------------
# Norms and rotary embeddings
# ---------------------------------------------------------------------------------------------


def norm(spec: ModelSpec, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if spec.norm == "layernorm":
        return F.layer_norm(x, (x.shape[-1],), weight, bias, spec.norm_eps)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + spec.norm_eps)
    return weight * xf.to(x.dtype)


class Rotary:
    """cos/sin tables of the rotary embedding for every position, in the compute dtype."""

    def __init__(self, spec: ModelSpec, dtype: torch.dtype, device: torch.device):
        d = spec.head_dim
        inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
        positions = torch.arange(spec.max_positions, dtype=torch.float32)
        freqs = positions[:, None] * inv_freq[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        self.cos = angles.cos().to(device=device, dtype=dtype)
        self.sin = angles.sin().to(device=device, dtype=dtype)

    def rotate(self, x: torch.Tensor, first: int) -> torch.Tensor:
        """Rotate `x` [tokens, ..., head_dim] whose tokens sit at positions first, first+1, ..."""
        n = x.shape[0]
        extra = (1,) * (x.dim() - 2)
        cos = self.cos[first:first + n].view(n, *extra, -1)
        sin = self.sin[first:first + n].view(n, *extra, -1)
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin


# ---------------------------------------------------------------------------------------------
# The operations' work
# ---------------------------------------------------------------------------------------------


def embed(spec: ModelSpec, g: GlobalWeights, ids: torch.Tensor, first: int) -> torch.Tensor:
    """Token (and, for OPT, learned position) embeddings of `ids` [tokens, batch] at positions first..."""
    x = F.embedding(ids, g.embed)
    if g.positions is not None:
        n = ids.shape[0]
        start = first + OPT_POSITION_OFFSET
        x = x + g.positions[start:start + n].unsqueeze(1)
    return x


def project_qkv(spec: ModelSpec, w: LayerWeights, rotary: Rotary | None, x: torch.Tensor, first: int):
    """Input norm and Q/K/V projections of hidden states `x` [tokens, batch, h] at positions first...

    Returns the normalised input (what the activation store keeps) and Q [tokens, batch, heads, d],
    K and V [tokens, batch, kv_heads, d], each a tensor of its own; Q and K are rotated for rotary
    models.
    """
    n, b, _ = x.shape
    xn = norm(spec, x, w.attn_norm_w, w.attn_norm_b)
    q = F.linear(xn, w.wq, w.bq).view(n, b, spec.num_heads, spec.head_dim)
    k = F.linear(xn, w.wk, w.bk).view(n, b, spec.num_kv_heads, spec.head_dim)
    v = F.linear(xn, w.wv, w.bv).view(n, b, spec.num_kv_heads, spec.head_dim)
    if rotary is not None:
        q, k = rotary.rotate(q, first), rotary.rotate(k, first)
    return xn, q, k, v


def recompute_kv(spec: ModelSpec, w: LayerWeights, rotary: Rotary | None, act: torch.Tensor,
                 k_out: torch.Tensor, v_out: torch.Tensor, first: int) -> None:
    """K and V of stored normalised activations `act` [tokens, batch, h], written in place.

    `k_out`/`v_out` are the [tokens, batch, kv_heads, d] slices of the KV buffer for the same
    tokens; the projections write straight into them (one GEMM each, no copy). Rotary models
    rotate K afterwards, at the tokens' own positions.
    """
    n, b, h = act.shape
    rows = act.reshape(n * b, h)
    for weight, bias, out in ((w.wk, w.bk, k_out), (w.wv, w.bv, v_out)):
        flat = out.view(n * b, spec.kv_dim)
        if bias is None:
            torch.mm(rows, weight.t(), out=flat)
        else:
            torch.addmm(bias, rows, weight.t(), out=flat)
    if rotary is not None:
        k_out.copy_(rotary.rotate(k_out, first))


def attend_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention of one new token per sequence over all cached tokens, itself included.

    q [batch, heads, d]; k, v [tokens, batch, kv_heads, d] (token-major views of the KV buffer).
    The g query heads that share a KV head are treated as g queries against it, so grouped-query
    attention needs no copy of K/V, and the token-major buffer is read in place.
    """
    S, b, kvh, d = k.shape
    g = q.shape[1] // kvh
    qh = q.reshape(b * kvh, g, d)
    kh = k.permute(1, 2, 0, 3).reshape(b * kvh, S, d)  # a view: batch and head strides merge
    vh = v.permute(1, 2, 0, 3).reshape(b * kvh, S, d)
    scores = torch.bmm(qh, kh.transpose(1, 2)) * (d ** -0.5)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.bmm(probs, vh).reshape(b, kvh * g * d)


def attend_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   max_tokens: int = ATTENTION_ROWS) -> torch.Tensor:
    """Causal self-attention of a prompt: q [T, b, heads, d], k/v [T, b, kv_heads, d] → [T, b, h].

    Runs a few sequences at a time (at most `max_tokens` query tokens) to bound the workspace
    (GQA expands K/V to the query heads, one part at a time).
    """
    T, b, H, d = q.shape
    g = H // k.shape[2]
    out = torch.empty(T, b, H * d, dtype=q.dtype, device=q.device)
    per = max(1, max_tokens // T)
    for lo in range(0, b, per):
        hi = min(b, lo + per)
        qh = q[:, lo:hi].permute(1, 2, 0, 3)
        kh = k[:, lo:hi].permute(1, 2, 0, 3)
        vh = v[:, lo:hi].permute(1, 2, 0, 3)
        if g > 1:
            kh, vh = kh.repeat_interleave(g, dim=1), vh.repeat_interleave(g, dim=1)
        # contiguous parts: every fused kernel accepts them (a strided one may fall back to the
        # math kernel, which materialises the T×T scores)
        part = F.scaled_dot_product_attention(qh.contiguous(), kh.contiguous(), vh.contiguous(),
                                              is_causal=True, scale=d ** -0.5)
        out[:, lo:hi] = part.permute(2, 0, 1, 3).reshape(T, hi - lo, H * d)
    return out


def out_projection(w: LayerWeights, attn: torch.Tensor) -> torch.Tensor:
    return F.linear(attn, w.wo, w.bo)


def mlp(spec: ModelSpec, w: LayerWeights, x: torch.Tensor, max_rows: int = MLP_ROWS) -> torch.Tensor:
    """Post-attention norm, MLP and residual of hidden states `x` [..., h] (rows in parts of max_rows)."""
    shape = x.shape
    rows = x.reshape(-1, shape[-1])
    out = torch.empty_like(rows)
    for start in range(0, rows.shape[0], max_rows):
        part = rows[start:start + max_rows]
        xn = norm(spec, part, w.mlp_norm_w, w.mlp_norm_b)
        if spec.activation == "relu":
            up = F.relu(F.linear(xn, w.w1, w.b1))
        else:
            gate, up = F.linear(xn, w.w13).chunk(2, dim=-1)
            up = F.silu(gate) * up
        out[start:start + max_rows] = part + F.linear(up, w.w2, w.b2)
    return out.view(shape)


def logits(spec: ModelSpec, g: GlobalWeights, x: torch.Tensor) -> torch.Tensor:
    """Final norm and LM head of the last hidden states `x` [batch, h], in fp32."""
    return F.linear(norm(spec, x, g.norm_w, g.norm_b), g.lm_head).float()
