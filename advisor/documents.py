"""The documents every part exchanges: hardware profile, model spec, workload, plan and trace.

They are pydantic v2 models with `extra="forbid"` and a `schema_version`, so a document written by
one part is read by another without guessing; `load_document` turns validation failures into one
line per problem (`file: field.path: message`) and `write_document` writes atomically. Units follow
DESIGN §3: seconds `_s`, bytes `_bytes`, bytes per second `_Bps`, FLOP/s `_flops`.
"""

from __future__ import annotations

import errno
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
        if self.offload:
            self._check_store()
        return self

    def _check_store(self) -> None:
        """The host store must hold what the steps read back (DESIGN §3 "What is stored";
        `advisor.plans.store_policy` writes the smallest such store): the activations of every
        token some step recomputes, act_tokens ≥ max(splits), and the KV of every token some step
        transfers, kv_from ≤ min(splits), within the tokens stored (the prompt and the inputs of
        all decode steps but the last). Without a decode step nothing is read back: any store within
        the stored tokens will do. A plan that does not offload keeps no store."""
        store, stored = self.store, self.workload.stored_tokens
        fix = "make the plan with advisor plan, or set store as advisor.plans.store_policy does"
        if store.act_tokens > stored:
            raise ValueError(f"store.act_tokens {store.act_tokens} exceeds the {stored} tokens stored "
                             f"(the prompt and the input of each decode step but the last); {fix}")
        if store.kv_from > stored:
            raise ValueError(f"store.kv_from {store.kv_from} exceeds the {stored} tokens stored "
                             f"(the prompt and the input of each decode step but the last); {fix}")
        if self.splits and store.act_tokens < max(self.splits):
            raise ValueError(f"store.act_tokens {store.act_tokens} is below the largest split {max(self.splits)}: "
                             f"the activations of the tokens recomputed are not stored; {fix}")
        if self.splits and store.kv_from > min(self.splits):
            raise ValueError(f"store.kv_from {store.kv_from} is above the smallest split {min(self.splits)}: "
                             f"the KV of the tokens transferred is not stored; {fix}")

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
        message = problem["msg"]
        if problem["type"] == "value_error" and "error" in problem.get("ctx", {}):
            message = str(problem["ctx"]["error"])  # a validator's own sentence, without "Value error, "
        path = ".".join(str(part) for part in problem["loc"])
        lines.append(f"{where}: {path}: {message}" if path else f"{where}: {message}")
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


def _missing_folders(folder: Path) -> list[Path]:
    """The folders from `folder` up that do not exist yet, deepest first; refuses (ENOTDIR) when the
    nearest one that exists is not a folder (`-o notes.txt/plan.json`)."""
    missing = []
    while not folder.exists():
        if folder.is_symlink():  # a dangling link: mkdir cannot make it a folder
            raise NotADirectoryError(errno.ENOTDIR, f"{folder} is a broken link, not a folder")
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{folder} is not a folder")
    return missing


def _remove_folders(made: list[Path]) -> None:
    """Remove folders this process made (deepest first) that are still empty."""
    for folder in made:
        try:
            folder.rmdir()
        except OSError:
            break


def _temp_beside(path: Path) -> tuple[int, str, list[Path]]:
    """A new temporary file in `path`'s folder, where `path` will be renamed from, and the folders
    made for it (deepest first): the caller removes them if the write fails."""
    made: list[Path] = []
    try:
        for folder in reversed(_missing_folders(path.parent)):
            try:
                folder.mkdir()
            except FileExistsError:  # `new/..`: missing until `new` was made
                if not folder.is_dir():
                    raise
                continue
            made.insert(0, folder)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except BaseException:
        _remove_folders(made)
        raise
    return fd, tmp, made


def _not_a_file(path: Path) -> bool:
    """A device, pipe or socket (`-o /dev/null`, `-o >(gzip > x)`), or a link (`-o /dev/stdout`):
    written in place, through the link, never replaced by a file of its own."""
    return path.is_symlink() or (path.exists() and not path.is_file() and not path.is_dir())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file.
    A path that is not a regular file (a device, a pipe, a link) is written in place instead.
    Missing folders are made here, as the file is written, and removed again if the write fails."""
    path = Path(path)
    if _not_a_file(path):
        with open(path, "w") as handle:
            handle.write(text)
        return
    fd, tmp, made = _temp_beside(path)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        _remove_folders(made)
        raise


def check_writable(*paths: str | os.PathLike | None) -> None:
    """Refuse, before minutes of work, an output path that could not be written at the end.

    Nothing is left behind: a temporary file is made in the folder and removed; where folders are
    missing (`write_text_atomic` makes them), one is made in the nearest folder that exists and
    removed, so a refused or failed command leaves no empty folders."""
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
            missing = _missing_folders(path.parent)
            if missing:
                os.rmdir(tempfile.mkdtemp(prefix=f".{missing[-1].name}.", dir=missing[-1].parent))
            else:
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
                os.close(fd)
                os.unlink(tmp)
        except OSError as error:
            raise UserError(f"{path}: cannot write: {error.strerror or error}") from None


def _regular_target(path: Path) -> bool:
    """Whether `path` is (or, missing, would be) a regular file: a device or pipe (`/dev/null`) can
    take several outputs, and reading one destroys nothing."""
    return not path.exists() or path.is_file()


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


PathArg = str | os.PathLike | None


def _named_paths(paths: dict[str, PathArg | list[PathArg] | tuple[PathArg, ...]]) -> list[tuple[str, Path]]:
    named = []
    for what, given in paths.items():
        for path in given if isinstance(given, (list, tuple)) else [given]:
            if path is not None:
                named.append((what, Path(path)))
    return named


def check_distinct(inputs: dict[str, PathArg | list[PathArg] | tuple[PathArg, ...]],
                   outputs: dict[str, PathArg | list[PathArg] | tuple[PathArg, ...]]) -> None:
    """Refuse an output that is the same file as an input (writing it would destroy the input) or as
    another output (one would overwrite the other), before any work.

    Keys name each path for the message (`-o`, `--chrome`, `the plan`); a value may be a list
    (`advisor calibrate a.json b.json`). None is skipped, and so are inputs that are not files (a
    shipped profile's name) and paths that are not regular files (`/dev/null`, a pipe). Paths are
    the same when `os.path.samefile` says so (links, `./x`, hard links), or, for an output not
    written yet, when they resolve to the same path."""
    # os.path.isfile, not Path.is_file: inline JSON (`--prompt-ids '[…]'`) can be too long a name
    given_inputs = [(what, path) for what, path in _named_paths(inputs) if os.path.isfile(path)]
    given_outputs = _named_paths(outputs)
    for i, (what, out) in enumerate(given_outputs):
        if not _regular_target(out):
            continue
        for source, path in given_inputs:
            if _same_file(out, path):
                raise UserError(f"{what} {out}: the same file as {source} {path}; writing it would destroy "
                                "that input: choose another output file")
        for other, earlier in given_outputs[:i]:
            if _regular_target(earlier) and _same_file(out, earlier):
                raise UserError(f"{what} {out}: the same file as {other} {earlier}; one would overwrite the "
                                "other: choose another file for one of them")


def write_document(path: str | os.PathLike, document: Document) -> None:
    write_text_atomic(path, document.model_dump_json(indent=1) + "\n")


def json_schema(name: str) -> dict:
    if name not in DOCUMENT_TYPES:
        raise UserError(f"unknown schema {name!r}: choose from {', '.join(DOCUMENT_TYPES)}")
    return DOCUMENT_TYPES[name].model_json_schema()
