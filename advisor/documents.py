"""The documents every part exchanges: hardware profile, model spec, workload, plan and trace.

They are pydantic v2 models with `extra="forbid"` and a `schema_version`, so a document written by
one part is read by another without guessing; `load_document` turns validation failures into one
line per problem (`file: field.path: message`) and `write_document` writes atomically. Units follow
DESIGN §3: seconds `_s`, bytes `_bytes`, bytes per second `_Bps`, FLOP/s `_flops`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from advisor import SCHEMA_VERSION
from advisor.errors import UserError

DType = Literal["fp16", "bf16", "fp32"]
DTYPE_BYTES: dict[str, int] = {"fp16": 2, "bf16": 2, "fp32": 4}


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------
# Hardware profile
# ---------------------------------------------------------------------------------------------


class CopyPoint(Document):
    bytes: int = Field(gt=0)
    seconds: float = Field(gt=0)


class CopyModel(Document):
    """One copy direction: t(bytes) = latency_s + bytes / bandwidth_Bps, fitted to `points`."""

    latency_s: float = Field(ge=0)
    bandwidth_Bps: float = Field(gt=0)
    points: list[CopyPoint] = Field(default_factory=list)


class RatePoint(Document):
    m: int = Field(gt=0)
    flops: float = Field(gt=0)


class GemmCurve(Document):
    """Achieved FLOP/s over the row count M for one weight shape (N outputs, K inputs)."""

    n: int = Field(gt=0)
    k: int = Field(gt=0)
    points: list[RatePoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _sorted(self):
        self.points.sort(key=lambda p: p.m)
        return self


class Provenance(Document):
    source: str = ""
    date: str = ""
    method: str = ""
    sources: dict[str, str] = Field(default_factory=dict)
    calibrated_from: list[str] = Field(default_factory=list)


class HardwareProfile(Document):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str
    description: str = ""
    device_kind: Literal["cuda", "cpu"]
    lanes_overlap: bool
    gpu_memory_bytes: int = Field(gt=0)
    host_memory_bytes: int = Field(gt=0)
    h2d: CopyModel
    d2h: CopyModel
    bidirectional_total_Bps: float | None = Field(
        default=None, gt=0, description="both directions together; None: they do not interfere"
    )
    pageable_h2d_Bps: float | None = Field(default=None, gt=0)
    gemm: list[GemmCurve] = Field(min_length=1)
    attention_Bps: float = Field(gt=0, description="KV bytes read per second by decode attention")
    memory_bound_Bps: float = Field(gt=0, description="bytes per second of memory-bound kernels")
    launch_overhead_s: float = Field(ge=0)
    gpu_reserved_bytes: int = Field(default=1 << 30, ge=0, description="CUDA context, allocator slack")
    provenance: Provenance = Field(default_factory=Provenance)

    @property
    def concurrent_lanes(self) -> bool:
        """Whether copies and compute run at the same time; a CPU device runs every operation in
        one order, whatever `lanes_overlap` says."""
        return self.lanes_overlap and self.device_kind == "cuda"


# ---------------------------------------------------------------------------------------------
# Model spec
# ---------------------------------------------------------------------------------------------


class ModelSpec(Document):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str
    family: Literal["opt", "llama"]
    num_layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    ffn_hidden: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    max_positions: int = Field(gt=0)
    norm: Literal["layernorm", "rmsnorm"]
    activation: Literal["relu", "swiglu"]
    position: Literal["learned", "rotary"]
    bias: bool
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dtype: DType = "fp16"
    source: str = ""

    @model_validator(mode="after")
    def _heads(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if self.num_heads * self.head_dim != self.hidden:
            raise ValueError("num_heads * head_dim must equal hidden")
        return self

    @property
    def kv_dim(self) -> int:
        """h_kv: values of K (or of V) per token per layer."""
        return self.num_kv_heads * self.head_dim

    @property
    def gqa_group(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def mlp_matrices(self) -> int:
        return 3 if self.activation == "swiglu" else 2

    def layer_params(self) -> int:
        """Parameters of one decoder layer (projections, norms, biases)."""
        h, kv, f = self.hidden, self.kv_dim, self.ffn_hidden
        attn = h * (h + 2 * kv) + h * h
        mlp = self.mlp_matrices * h * f
        extra = 2 * h * (2 if self.norm == "layernorm" else 1)
        if self.bias:  # OPT: every projection; Llama (attention_bias): Q/K/V and out only
            extra += (h + 2 * kv) + h + ((f + h) if self.activation == "relu" else 0)
        return attn + mlp + extra

    def embedding_params(self) -> int:
        """Parameters outside the decoder layers (embeddings, final norm, LM head)."""
        n = self.vocab_size * self.hidden + 2 * self.hidden
        if self.position == "learned":
            n += (self.max_positions + 2) * self.hidden
        if not self.tie_embeddings:
            n += self.vocab_size * self.hidden
        return n


# ---------------------------------------------------------------------------------------------
# Workload and plan
# ---------------------------------------------------------------------------------------------


class Workload(Document):
    batch: int = Field(gt=0, description="sequences decoded together, over all GPU batches")
    prompt_len: int = Field(gt=0)
    gen_len: int = Field(gt=0, description="new tokens per sequence; the first comes from prefill")
    gpu_batches: int = Field(default=1, gt=0)
    gpu_kv_budget_bytes: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _divides(self):
        if self.batch % self.gpu_batches:
            raise ValueError(f"batch {self.batch} is not a multiple of gpu_batches {self.gpu_batches}")
        return self

    @property
    def gpu_batch_size(self) -> int:
        return self.batch // self.gpu_batches

    @property
    def decode_steps(self) -> int:
        return self.gen_len - 1

    def context(self, step: int) -> int:
        """Tokens already in the cache when decode step `step` runs."""
        return self.prompt_len + step

    @property
    def max_context(self) -> int:
        """Positions the run uses: the prompt and every generated token but the last."""
        return self.prompt_len + self.gen_len - 1

    @property
    def stored_tokens(self) -> int:
        """Tokens some decode step reads back: the prompt and the inputs of all but the last step."""
        return self.prompt_len + max(self.decode_steps - 1, 0)


class StorePolicy(Document):
    """What the host store keeps per offloaded layer (DESIGN §3 "What is stored").

    Activations of tokens [0, act_tokens) and KV of tokens [kv_from, end): a token is kept as an
    activation if some step recomputes it and as KV if some step transfers it.
    """

    act_tokens: int = Field(ge=0)
    kv_from: int = Field(ge=0)


class Predicted(Document):
    ttft_s: float
    step_times_s: list[float]
    decode_step_s: float = Field(description="mean decode step time")
    decode_tokens_per_s: float
    pcie_bytes_per_step: float
    gpu_memory_bytes: int
    host_memory_bytes: int
    host_pinned_bytes: int
    baseline_step_s: float | None = Field(default=None, description="full transfer, same config")
    speedup_vs_full_transfer: float | None = None
    resident_step_s: float | None = Field(default=None, description="GPU-resident cache, if it fits")
    speedup_vs_resident: float | None = None


class Plan(Document):
    schema_version: Literal[1] = SCHEMA_VERSION
    model: ModelSpec
    hardware: HardwareProfile
    workload: Workload
    dtype: DType
    schedule: Literal["row", "column"]
    objective: Literal["latency", "throughput"]
    cost_model: Literal["pipelined", "paper"] = "pipelined"
    splits: list[int] = Field(description="split l per decode step: tokens [0, l) are recomputed")
    chunks: int = Field(ge=1, description="activation chunks per layer")
    weights_gpu_layers: int = Field(ge=0, description="layers [0, n) keep their weights on the GPU")
    resident_kv_layers: int = Field(ge=0, description="layers [0, n) keep their whole KV on the GPU")
    store: StorePolicy
    offload: bool = Field(default=True, description="False: the whole KV cache fits on the GPU")
    predicted: Predicted | None = None
    notes: list[str] = Field(default_factory=list)
    provenance: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self):
        wl, m = self.workload, self.model
        if len(self.splits) != wl.decode_steps:
            raise ValueError(f"splits has {len(self.splits)} entries, expected {wl.decode_steps}")
        for step, split in enumerate(self.splits):
            if not 0 <= split <= wl.context(step):
                raise ValueError(f"split {split} at step {step} outside [0, {wl.context(step)}]")
        if self.weights_gpu_layers > m.num_layers or self.resident_kv_layers > m.num_layers:
            raise ValueError("more resident layers than the model has")
        if wl.prompt_len + wl.gen_len - 1 > m.max_positions:
            raise ValueError(
                f"prompt_len + gen_len - 1 = {wl.max_context} exceeds the model's "
                f"{m.max_positions} positions"
            )
        return self

    @property
    def offloaded_layers(self) -> int:
        return self.model.num_layers - self.resident_kv_layers

    def fingerprint(self) -> str:
        """Identifies the operations a plan expands to; traces carry it so compare can check them."""
        keys = self.model_dump(
            include={"workload", "schedule", "splits", "chunks", "weights_gpu_layers",
                     "resident_kv_layers", "store", "dtype", "offload"}
        )
        keys["model"] = self.model.model_dump(exclude={"source"})
        raw = json.dumps(keys, sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Trace
# ---------------------------------------------------------------------------------------------


class TraceRecord(Document):
    id: str
    lane: Literal["h2d", "d2h", "gpu", "cpu"]
    start_s: float
    end_s: float


class TraceSummary(Document):
    ttft_s: float
    step_times_s: list[float]
    decode_step_s: float
    decode_tokens_per_s: float
    lane_busy: dict[str, float] = Field(default_factory=dict)
    longest_gpu_idle_s: float = 0.0
    longest_h2d_idle_s: float = 0.0
    warmup_steps_excluded: int = 0


class Trace(Document):
    schema_version: Literal[1] = SCHEMA_VERSION
    source: Literal["simulated", "measured"]
    plan_fingerprint: str
    device: str
    records: list[TraceRecord]
    summary: TraceSummary
    prompt_ids: list[list[int]] | None = None
    generated_ids: list[list[int]] | None = None
    generated_text: list[str] | None = None
    extra: dict[str, float | int | str | bool | list[float] | None] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)


DOCUMENT_TYPES: dict[str, type[Document]] = {
    "plan": Plan,
    "hardware": HardwareProfile,
    "model": ModelSpec,
    "trace": Trace,
}

D = TypeVar("D", bound=Document)

# each kind of document in words, and where it comes from: for someone who passed the wrong file
DOCUMENT_WORDS = {
    "plan": ("a plan", "advisor plan or tune"),
    "hardware": ("a hardware profile", "advisor profile or calibrate, or a shipped name"),
    "model": ("a model", "a shipped name, a model JSON or a checkpoint folder"),
    "trace": ("a trace", "advisor execute (measured) or simulate (predicted)"),
}


def _wrong_kind(cls: type[Document], data: object, where: str) -> str | None:
    """'where: is a plan, not a trace (…)' when `data` is a valid document of another kind."""
    wanted = next((name for name, kind in DOCUMENT_TYPES.items() if kind is cls), None)
    if wanted is None or not isinstance(data, dict):
        return None
    for name, kind in DOCUMENT_TYPES.items():
        if kind is cls:
            continue
        try:
            kind.model_validate(data)
        except ValidationError:
            continue
        (is_noun, _), (wanted_noun, source) = DOCUMENT_WORDS[name], DOCUMENT_WORDS[wanted]
        return f"{where}: is {is_noun}, not {wanted_noun} (which comes from {source})"
    return None


def validation_lines(where: str, error: ValidationError) -> list[str]:
    """One line per problem: `where: field.path: message`."""
    lines = []
    for problem in error.errors():
        path = ".".join(str(part) for part in problem["loc"]) or "(document)"
        lines.append(f"{where}: {path}: {problem['msg']}")
    return lines


def parse_document(cls: type[D], data: object, where: str) -> D:
    if isinstance(data, dict) and "schema_version" in cls.model_fields:
        version = data.get("schema_version")
        if version is not None and version != SCHEMA_VERSION:
            raise UserError(
                f"{where}: schema_version: is {version!r}, this advisor reads version {SCHEMA_VERSION}"
            )
    try:
        return cls.model_validate(data)
    except ValidationError as error:
        wrong_kind = _wrong_kind(cls, data, where)
        raise UserError(*([wrong_kind] if wrong_kind else validation_lines(where, error))) from None


def load_document(cls: type[D], path: str | os.PathLike) -> D:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise UserError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not JSON: {error.msg} at line {error.lineno}") from None
    return parse_document(cls, data, str(path))


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new temporary file in `path`'s folder (made if missing), where `path` will be renamed from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)


def _not_a_file(path: Path) -> bool:
    """A device, pipe or socket (`-o /dev/null`, `-o >(gzip > x)`), or a link (`-o /dev/stdout`):
    written in place, through the link, never replaced by a file of its own."""
    return path.is_symlink() or (path.exists() and not path.is_file() and not path.is_dir())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file.
    A path that is not a regular file (a device, a pipe, a link) is written in place instead."""
    path = Path(path)
    if _not_a_file(path):
        with open(path, "w") as handle:
            handle.write(text)
        return
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(*paths: str | os.PathLike | None) -> None:
    """Refuse, before minutes of work, an output path that could not be written at the end: make its
    folder and a temporary file in it the way `write_text_atomic` will, then remove the file."""
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            raise UserError(f"{path}: cannot write: is a folder")
        if _not_a_file(path):
            target = path.resolve()
            if not os.access(target if target.exists() else target.parent, os.W_OK):
                raise UserError(f"{path}: cannot write: permission denied")
            continue
        try:
            fd, tmp = _temp_beside(path)
            os.close(fd)
            os.unlink(tmp)
        except OSError as error:
            raise UserError(f"{path}: cannot write: {error.strerror or error}") from None


def write_document(path: str | os.PathLike, document: Document) -> None:
    write_text_atomic(path, document.model_dump_json(indent=1) + "\n")


def json_schema(name: str) -> dict:
    if name not in DOCUMENT_TYPES:
        raise UserError(f"unknown schema {name!r}: choose from {', '.join(DOCUMENT_TYPES)}")
    return DOCUMENT_TYPES[name].model_json_schema()
