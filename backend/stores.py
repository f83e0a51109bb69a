"""Host memory: exactly sized, pinned, token-major stores of activations, KV and streamed weights.

Everything that crosses PCIe during decoding must sit in pinned memory (pageable copies run at a
fraction of the bandwidth), and pinned memory is expensive: PyTorch's caching host allocator
rounds each block up to a power of two, and pinning tens of GB takes seconds per GB (DESIGN §1).
So a `HostSlab` is one ordinary allocation, sized to the sum of its pieces (each rounded up to a
page), carved into views, and each view is page-locked with `cudaHostRegister` on its own, with
progress reported piece by piece. The bytes it reports are the bytes really locked. Copies never
cross a piece, so a piece is always one registration.

`HostStores` lays out what the plan's store policy keeps per offloaded layer and GPU batch,
token-major so that a split is two contiguous slices: activations `[act_tokens, b, h]` of tokens
[0, act_tokens), and K and V `[tokens, b, kv_heads, d]` of tokens [kv_from, stored). In CPU mode
the same layout is plain memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

PAGE = 4096
REGISTER_PORTABLE = 1  # cudaHostRegisterPortable

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass(frozen=True)
class Piece:
    key: tuple
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.tensor([], dtype=self.dtype).element_size()


def page_round(n: int) -> int:
    return -(-n // PAGE) * PAGE


def slab_bytes(pieces: Sequence[Piece]) -> int:
    """Host bytes a slab of these pieces occupies (and pins, when pinned)."""
    return sum(page_round(p.nbytes) for p in pieces)


class PinError(RuntimeError):
    pass


class HostSlab:
    """One host allocation carved into page-aligned tensors, each optionally page-locked."""

    def __init__(self, pieces: Sequence[Piece], pin: bool, progress: Progress | None = None):
        self.total_bytes = slab_bytes(pieces)
        self.pinned_bytes = 0
        self._registered: list[int] = []
        self.tensors: dict[tuple, torch.Tensor] = {}
        self._raw = torch.empty(self.total_bytes + PAGE, dtype=torch.uint8)
        base = (-self._raw.data_ptr()) % PAGE
        offset = base
        for piece in pieces:
            n = piece.nbytes
            self.tensors[piece.key] = self._raw[offset:offset + n].view(piece.dtype).view(piece.shape)
            offset += page_round(n)
        if pin:
            try:
                self._pin(pieces, progress)
            except BaseException:
                self.release()
                raise
        elif progress:
            progress(self.total_bytes, self.total_bytes)

    def _pin(self, pieces: Sequence[Piece], progress: Progress | None) -> None:
        """Touch each piece's pages (a zero fill, on all cores), then register it with CUDA.

        Registration runs on a worker thread while the next piece is being filled (the runtime API
        is thread-safe and torch releases the GIL around it); each piece is one registration, so a
        copy never spans two.
        """
        from concurrent.futures import ThreadPoolExecutor

        cudart = torch.cuda.cudart()

        def register(ptr: int, size: int) -> tuple[int, int, int]:
            return ptr, size, int(cudart.cudaHostRegister(ptr, size, REGISTER_PORTABLE))

        state = {"done": 0, "failure": None}
        pending: list = []

        def drain(block: bool) -> None:
            while pending and (block or pending[0].done()):
                ptr, size, error = pending.pop(0).result()
                if error == 0:
                    self._registered.append(ptr)
                    self.pinned_bytes += size
                elif state["failure"] is None:
                    state["failure"] = f"cudaHostRegister of {size} bytes failed with CUDA error {error}"
                state["done"] += size
                if progress:
                    progress(state["done"], self.total_bytes)

        with ThreadPoolExecutor(max_workers=2) as pool:
            try:
                for piece in pieces:
                    tensor = self.tensors[piece.key]
                    size = page_round(piece.nbytes)
                    if size:
                        tensor.view(-1).view(torch.uint8).zero_()
                        pending.append(pool.submit(register, tensor.data_ptr(), size))
                    drain(block=False)
            finally:
                drain(block=True)  # every registration that happened is known, so release() undoes it
        failure = state["failure"]
        if failure:
            raise PinError(f"{failure} ({self.pinned_bytes} bytes were pinned)")

    def release(self) -> None:
        """Unpin and free; safe to call twice."""
        if self._registered:
            cudart = torch.cuda.cudart()
            for ptr in self._registered:
                cudart.cudaHostUnregister(ptr)
            self._registered = []
        self.pinned_bytes = 0
        self.tensors = {}
        self._raw = None


@dataclass(frozen=True)
class StoreShape:
    """What one offloaded layer keeps per GPU batch, in tokens."""

    batch: int  # GPU batch size b
    gpu_batches: int
    hidden: int
    kv_heads: int
    head_dim: int
    act_tokens: int  # activations of tokens [0, act_tokens)
    kv_from: int  # KV of tokens [kv_from, stored_tokens)
    stored_tokens: int

    @property
    def kv_tokens(self) -> int:
        return max(self.stored_tokens - self.kv_from, 0)


def store_pieces(shape: StoreShape, layers: Sequence[int], dtype: torch.dtype) -> list[Piece]:
    pieces = []
    b = shape.batch
    for layer in layers:
        for j in range(shape.gpu_batches):
            if shape.act_tokens:
                pieces.append(Piece(("act", layer, j), (shape.act_tokens, b, shape.hidden), dtype))
            if shape.kv_tokens:
                kv = (shape.kv_tokens, b, shape.kv_heads, shape.head_dim)
                pieces.append(Piece(("k", layer, j), kv, dtype))
                pieces.append(Piece(("v", layer, j), kv, dtype))
    return pieces


class HostStores:
    """The host store of every offloaded layer and GPU batch, indexed by absolute token."""

    def __init__(self, shape: StoreShape, layers: Sequence[int], dtype: torch.dtype, pin: bool,
                 progress: Progress | None = None):
        self.shape = shape
        self.layers = list(layers)
        self.slab = HostSlab(store_pieces(shape, self.layers, dtype), pin, progress)

    def act(self, layer: int, batch: int, lo: int, hi: int) -> torch.Tensor:
        """Activations of tokens [lo, hi) (must lie in [0, act_tokens))."""
        assert 0 <= lo <= hi <= self.shape.act_tokens, (lo, hi, self.shape.act_tokens)
        return self.slab.tensors[("act", layer, batch)][lo:hi]

    def kv(self, layer: int, batch: int, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of tokens [lo, hi) (must lie in [kv_from, stored_tokens))."""
        first = self.shape.kv_from
        assert first <= lo <= hi <= self.shape.stored_tokens, (lo, hi, first, self.shape.stored_tokens)
        t = self.slab.tensors
        return t[("k", layer, batch)][lo - first:hi - first], t[("v", layer, batch)][lo - first:hi - first]

    @property
    def pinned_bytes(self) -> int:
        return self.slab.pinned_bytes

    @property
    def total_bytes(self) -> int:
        return self.slab.total_bytes

    def release(self) -> None:
        self.slab.release()
