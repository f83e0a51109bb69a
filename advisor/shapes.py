"""Sizes of the work of one layer: bytes each copy moves and the GEMMs each kernel runs.

The operation graph fills its operations from these functions and the vectorised cost model
evaluates the same functions over arrays of splits, so there is one definition of how big the
transfers and the recomputation are. Arguments may be Python numbers or numpy arrays.
`b` is the GPU batch size (sequences in one GPU batch), `p` bytes per value.
"""

from __future__ import annotations

from advisor.documents import ModelSpec

# The backend runs an MLP over at most this many token rows at a time: GEMMs of 8192 rows run within
# 2% of the H100's rate at 32768 (reference microbench, hidden 4096-7168), and the MLP's temporaries
# stay at 8192 rows whatever the batch and prompt. Prefill attention runs a few sequences at a time,
# at most this many query tokens (or one prompt).
MLP_ROWS = 8192
ATTENTION_ROWS = 32768


def kv_bytes(model: ModelSpec, b, tokens, p: int):
    """K and V of `tokens` tokens of one layer: 2·b·tokens·h_kv·p."""
    return 2 * b * tokens * model.kv_dim * p


def act_bytes(model: ModelSpec, b, tokens, p: int):
    """Layer-input activations of `tokens` tokens of one layer: b·tokens·h·p."""
    return b * tokens * model.hidden * p


def layer_weight_bytes(model: ModelSpec, p: int) -> int:
    return model.layer_params() * p


def recompute_gemm(model: ModelSpec, b, tokens) -> tuple:
    """K and V projections of `tokens` tokens as one GEMM (M, N, K) = (b·tokens, 2·h_kv, h)."""
    return (b * tokens, 2 * model.kv_dim, model.hidden)


def qkv_gemm(model: ModelSpec, rows) -> tuple:
    return (rows, model.hidden + 2 * model.kv_dim, model.hidden)


def out_gemm(model: ModelSpec, rows) -> tuple:
    return (rows, model.hidden, model.hidden)


def mlp_gemms(model: ModelSpec, rows) -> list[tuple]:
    up = model.ffn_hidden * (2 if model.activation == "swiglu" else 1)
    return [(rows, up, model.hidden), (rows, model.hidden, model.ffn_hidden)]


def prefill_attention_gemms(model: ModelSpec, b: int, tokens: int) -> list[tuple]:
    """Causal self-attention of a prompt as GEMM-equivalents: scores and weighted sum, half masked."""
    width = max(1, tokens // 2)
    return [(b * tokens, width, model.hidden), (b * tokens, model.hidden, width)]


def head_gemm(model: ModelSpec, rows) -> tuple:
    return (rows, model.vocab_size, model.hidden)


def chunk_bounds(start: int, end: int, chunks: int) -> list[tuple[int, int]]:
    """Split tokens [start, end) into at most `chunks` contiguous, near-equal, non-empty parts."""
    total = end - start
    if total <= 0:
        return []
    parts = min(chunks, total)
    bounds = [start + (total * i) // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


# --- the GPU work of each kind of operation: (gemms, memory-bound bytes, kernels) -------------
# The operation graph fills its GPU operations from these, and the cost model costs the same.


def qkv_work(model: ModelSpec, rows, p: int):
    """Input norm and Q/K/V projections of `rows` token rows (plus the embedding at layer 0)."""
    return [qkv_gemm(model, rows)], rows * model.hidden * p, 3


def recompute_work(model: ModelSpec, b, tokens):
    """K/V projections of `tokens` stored activations (rotary models also rotate K)."""
    return [recompute_gemm(model, b, tokens)], 0, 2 if model.position == "rotary" else 1


def decode_attention_work(model: ModelSpec, b, context, p: int):
    """Attention of one new token over `context` cached tokens and itself, and the out projection."""
    return [out_gemm(model, b)], kv_bytes(model, b, context + 1, p), 4


def prefill_attention_work(model: ModelSpec, b: int, tokens: int):
    return prefill_attention_gemms(model, b, tokens) + [out_gemm(model, b * tokens)], 0, 4


def mlp_work(model: ModelSpec, rows: int, p: int):
    """Norm, MLP and residual of `rows` token rows, in parts of at most MLP_ROWS as the backend runs it."""
    parts = [MLP_ROWS] * (rows // MLP_ROWS) + ([rows % MLP_ROWS] if rows % MLP_ROWS else [])
    return [gemm for part in parts for gemm in mlp_gemms(model, part)], rows * model.ffn_hidden * p, 4 * len(parts)


def sample_work(model: ModelSpec, b: int):
    """Final norm, LM head and greedy choice for one GPU batch."""
    return [head_gemm(model, b)], b * model.vocab_size * 4, 3
