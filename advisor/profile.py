"""`advisor profile`: measure this machine into a HardwareProfile.

Every figure the time model uses (DESIGN §3) is measured here rather than read from a data sheet:
pinned host-to-device and device-to-host copies over a range of sizes, fitted to
`latency + bytes / bandwidth` with the points kept; both directions at once (their total);
pageable copies (so a run that forgot to pin can be recognised); GEMM rates over the row count M
for the (2h × h) weight shapes of the models of interest; decode attention and memory-bound rates;
the per-kernel launch overhead; GPU and host memory; NUMA placement where visible. Honest
measurement: synchronise, warm up, take the median, and record the method with the figures.

On a machine without a GPU (or with `--device cpu`) it profiles the CPU mode the backend runs
there: "copies" are memcpy between two host buffers and "kernels" are torch ops on the CPU, and
the profile says `device_kind: cpu`, `lanes_overlap: false`.
"""

from __future__ import annotations

import datetime
import itertools
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from advisor.documents import GemmCurve, HardwareProfile, Provenance, RatePoint, check_writable, write_document
from advisor.errors import UserError
from advisor.fitting import fit_copy_model

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CPU_MODE_THREADS = 1


@dataclass
class Settings:
    """What to measure; `settings_for` gives the defaults, tests pass smaller ones."""

    copy_sizes: list[int]
    gemm_hidden: list[int]
    gemm_m: list[int]
    repeats: int = 7
    warmups: int = 2
    bidirectional_bytes: int = 256 * MiB
    pageable_bytes: int = 64 * MiB
    attention: tuple[int, int, int, int] = (8, 32, 4096, 128)  # batch, heads, context, head dim
    elementwise_bytes: int = 256 * MiB
    launch_ops: int = 2000
    # GEMMs rotate over copies of their weight of this many bytes in all, and copies over slices of
    # buffers this large, so that each reads from memory, not a cache, as a decode step does (0: one
    # weight and one buffer, as the GPU reference microbenchmark; a GPU copy never hits a cache)
    cold_bytes: int = 0
    quick: bool = False
    notes: list[str] = field(default_factory=list)


def _sizes(low: int, high: int, factor: int = 4) -> list[int]:
    sizes, size = [], low
    while size <= high:
        sizes.append(size)
        size *= factor
    return sizes


def settings_for(device: str, quick: bool) -> Settings:
    """The default measurement plan: 64 KiB..1 GiB copies (64 MiB with --quick)."""
    if device == "cuda":
        top = 64 * MiB if quick else GiB
        return Settings(
            copy_sizes=_sizes(64 * KiB, top),
            gemm_hidden=[4096, 5120, 7168] if quick else [2048, 4096, 5120, 7168, 8192],
            gemm_m=[128, 512, 2048, 8192, 32768] if not quick else [128, 512, 2048, 8192],
            repeats=5 if quick else 10,
            warmups=2 if quick else 3,
            bidirectional_bytes=64 * MiB if quick else 512 * MiB,
            pageable_bytes=64 * MiB,
            attention=(8, 32, 2048 if quick else 8192, 128),
            elementwise_bytes=256 * MiB,
            launch_ops=1000 if quick else 5000,
            quick=quick,
        )
    # the CPU mode: keep the largest copy well inside the memory that is free
    available = _meminfo().get("MemAvailable", 4 * GiB)
    top = 64 * MiB if quick else min(GiB, _floor_pow4(available // 8))
    return Settings(
        copy_sizes=_sizes(64 * KiB, max(top, 64 * KiB)),
        gemm_hidden=[64, 256] if quick else [64, 256, 1024],
        gemm_m=[1, 16, 256, 4096] if quick else [1, 8, 64, 512, 4096],
        repeats=5 if quick else 7,
        warmups=1 if quick else 2,
        bidirectional_bytes=0,
        pageable_bytes=0,
        attention=(8, 8, 512 if quick else 2048, 64),
        elementwise_bytes=16 * MiB if quick else 64 * MiB,
        launch_ops=500 if quick else 2000,
        # a CPU's caches hold a small weight between repeats (28 GB/s here against 7 from memory)
        cold_bytes=128 * MiB if quick else 256 * MiB,
        quick=quick,
    )


def _floor_pow4(n: int) -> int:
    size = 64 * KiB
    while size * 4 <= n:
        size *= 4
    return size


# ---------------------------------------------------------------------------------------------
# Machine facts
# ---------------------------------------------------------------------------------------------


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (empty where there is none)."""
    info = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                info[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    except OSError:
        pass
    return info


def host_memory_bytes() -> int:
    total = _meminfo().get("MemTotal")
    if total:
        return total
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * GiB


def numa_nodes() -> int | None:
    folder = Path("/sys/devices/system/node")
    if not folder.is_dir():
        return None
    return len([p for p in folder.glob("node[0-9]*")]) or None


def gpu_numa_node(props) -> str | None:
    """The NUMA node of the GPU's PCI device, from sysfs, if the VM shows it."""
    bus = getattr(props, "pci_bus_id", None)
    if bus is None:
        return None
    domain = getattr(props, "pci_domain_id", 0) or 0
    device = getattr(props, "pci_device_id", 0) or 0
    address = f"{domain:04x}:{bus:02x}:{device:02x}.0"
    try:
        node = Path(f"/sys/bus/pci/devices/{address}/numa_node").read_text().strip()
    except OSError:
        return None
    return f"{address} on NUMA node {node}" + (" (not reported)" if node == "-1" else "")


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


@contextmanager
def cpu_mode_threads(device: str, threads: int = CPU_MODE_THREADS):
    """Run the CPU mode on one intra-op thread, then restore torch's setting.

    With two or more threads, each torch op ends at a barrier; when another process takes one of
    the cores, every op waits for the descheduled thread and a 1 ms decode step takes 100 ms. One
    thread slows down only in proportion. The backend's CPU mode should run the same way (the
    profile and the measurements it is calibrated on must agree).
    """
    if device != "cpu":
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Clock:
    """Times a callable: CUDA events on the GPU, perf_counter on the CPU; median of repeats."""

    def __init__(self, torch, device: str, repeats: int, warmups: int):
        self.torch = torch
        self.cuda = device == "cuda"
        self.repeats = repeats
        self.warmups = warmups

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def once(self, fn: Callable[[], object], inner: int = 1) -> float:
        if self.cuda:
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / inner
        begin = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - begin) / inner

    def median(self, fn: Callable[[], object], inner: int = 1, repeats: int | None = None) -> float:
        for _ in range(self.warmups):
            fn()
        self.sync()
        return statistics.median(self.once(fn, inner) for _ in range(repeats or self.repeats))


def _inner_for(seconds_hint: float) -> int:
    """Repeat very short operations inside one timing so the clock's own cost does not count."""
    return max(1, min(200, int(2e-4 / max(seconds_hint, 1e-9))))


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


@dataclass
class Measured:
    h2d: list[tuple[int, float]] = field(default_factory=list)
    d2h: list[tuple[int, float]] = field(default_factory=list)
    bidirectional_Bps: float | None = None
    pageable_h2d_Bps: float | None = None
    gemm: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    attention_Bps: float = 0.0
    memory_bound_Bps: float = 0.0
    launch_overhead_s: float = 0.0
    gpu_memory_bytes: int = 0
    gpu_reserved_bytes: int = 0
    host_memory_bytes: int = 0  # 0: all of this machine's
    device_name: str = ""
    facts: dict[str, str] = field(default_factory=dict)


class Profiler:
    """Runs each measurement in turn, advancing `tick` (a progress callback) after each."""

    def __init__(self, device: str, settings: Settings, tick: Callable[[str], None]):
        import torch

        self.torch = torch
        self.device = device
        self.s = settings
        self.tick = tick
        self.clock = Clock(torch, device, settings.repeats, settings.warmups)
        self.dtype = torch.float16 if device == "cuda" else torch.float32
        self.m = Measured()

    def steps(self) -> list[tuple[str, Callable[[], None]]]:
        steps = [("copies", self.copies)]
        if self.device == "cuda":
            steps += [("both directions", self.bidirectional), ("pageable copies", self.pageable)]
        steps += [("GEMM", self.gemm), ("attention", self.attention), ("memory-bound", self.memory_bound),
                  ("launch overhead", self.launch), ("memory", self.memory)]
        return steps

    def units(self) -> int:
        """Progress units: one per copy size and direction, per GEMM shape and M, per other step."""
        n = 2 * len(self.s.copy_sizes) + len(self.s.gemm_hidden) * len(self.s.gemm_m) + 4
        return n + (2 if self.device == "cuda" else 0)

    # --- copies ----------------------------------------------------------------------------

    def copies(self):
        torch, top = self.torch, max(self.s.copy_sizes)
        if self.device == "cuda":
            # one pinned slab carved into views (DESIGN §1: pinned blocks round up to powers of two)
            host = torch.empty(top, dtype=torch.uint8, pin_memory=True)
            host.fill_(1)
            dev = torch.empty(top, dtype=torch.uint8, device="cuda")
        else:
            host = torch.ones(max(top, self.s.cold_bytes), dtype=torch.uint8)
            dev = torch.zeros(max(top, self.s.cold_bytes), dtype=torch.uint8)

        def timed(src_buffer, dst_buffer, size: int) -> float:
            """Each copy of `size` on the next slice of the buffers: a cold one, where they are large."""
            slices = itertools.cycle(range(0, len(src_buffer) - size + 1, size))

            def copy():
                offset = next(slices)
                dst_buffer[offset:offset + size].copy_(src_buffer[offset:offset + size], non_blocking=True)
            return self.clock.median(copy)

        for size in self.s.copy_sizes:
            self.m.h2d.append((size, timed(host, dev, size)))
            self.tick(f"h2d {size // KiB} KiB")
        for size in self.s.copy_sizes:
            self.m.d2h.append((size, timed(dev, host, size)))
            self.tick(f"d2h {size // KiB} KiB")

    def bidirectional(self):
        """Both directions at once on two streams: total bytes over the time both took."""
        torch, size = self.torch, self.s.bidirectional_bytes
        host = torch.empty(2 * size, dtype=torch.uint8, pin_memory=True)
        host.fill_(1)
        dev = torch.empty(2 * size, dtype=torch.uint8, device="cuda")
        up, down = torch.cuda.Stream(), torch.cuda.Stream()

        def both():
            main = torch.cuda.current_stream()
            up.wait_stream(main)
            down.wait_stream(main)
            with torch.cuda.stream(up):
                dev[:size].copy_(host[:size], non_blocking=True)
            with torch.cuda.stream(down):
                host[size:].copy_(dev[size:], non_blocking=True)
            main.wait_stream(up)
            main.wait_stream(down)

        t = self.clock.median(both)
        self.m.bidirectional_Bps = 2 * size / t
        self.tick("both directions")

    def pageable(self):
        torch, size = self.torch, self.s.pageable_bytes
        host = torch.ones(size, dtype=torch.uint8)  # ordinary (pageable) memory
        dev = torch.empty(size, dtype=torch.uint8, device="cuda")
        t = self.clock.median(lambda: dev.copy_(host), repeats=max(3, self.s.repeats // 2))
        self.m.pageable_h2d_Bps = size / t
        self.tick("pageable")

    # --- kernels ---------------------------------------------------------------------------

    def gemm(self):
        """(M × h) · (h × 2h): the K/V projection shape, as in the reference microbenchmark."""
        torch, dev = self.torch, self.device
        for h in self.s.gemm_hidden:
            points = []
            one = 2 * h * h * torch.empty((), dtype=self.dtype).element_size()
            copies = max(1, -(-self.s.cold_bytes // one))
            weights = itertools.cycle([torch.randn(2 * h, h, device=dev, dtype=self.dtype) for _ in range(copies)])
            for m in self.s.gemm_m:
                x = torch.randn(m, h, device=dev, dtype=self.dtype)
                out = torch.empty(m, 2 * h, device=dev, dtype=self.dtype)
                flops = 2.0 * m * 2 * h * h
                hint = flops / (5e13 if dev == "cuda" else 2e10)
                t = self.clock.median(lambda: torch.matmul(x, next(weights).t(), out=out), inner=_inner_for(hint))
                points.append((m, flops / t))
                self.tick(f"GEMM h={h} M={m}")
            self.m.gemm[h] = points

    def attention(self):
        """Decode attention of one query token per sequence over a long KV: KV bytes per second.

        Times the backend's own `attend_decode` on token-major K/V views (the layout of its KV
        buffers), not `scaled_dot_product_attention` on head-major tensors: on the GPU the two take
        different kernels (a fused decode kernel against bmm, softmax, bmm over strided K/V), and
        the rate must predict what the backend runs.
        """
        from backend.model import attend_decode

        torch, dev = self.torch, self.device
        b, heads, context, d = self.s.attention
        q = torch.randn(b, heads, d, device=dev, dtype=self.dtype)
        k = torch.randn(context, b, heads, d, device=dev, dtype=self.dtype)
        v = torch.randn(context, b, heads, d, device=dev, dtype=self.dtype)
        t = self.clock.median(lambda: attend_decode(q, k, v))
        self.m.attention_Bps = (k.numel() + v.numel()) * k.element_size() / t
        self.tick("attention")

    def memory_bound(self):
        """A large elementwise add: two reads and one write per element."""
        torch, dev = self.torch, self.device
        n = self.s.elementwise_bytes // 4
        a = torch.ones(n, device=dev, dtype=torch.float32)
        b = torch.ones(n, device=dev, dtype=torch.float32)
        c = torch.empty_like(a)
        t = self.clock.median(lambda: torch.add(a, b, out=c))
        self.m.memory_bound_Bps = 3 * n * 4 / t
        self.tick("memory-bound")

    def launch(self):
        """A trivial kernel issued back to back: the cost of one more kernel."""
        torch, dev = self.torch, self.device
        x = torch.zeros(1, device=dev)
        ops = self.s.launch_ops
        self.m.launch_overhead_s = self.clock.median(lambda: x.add_(1.0), inner=ops, repeats=3)
        self.tick("launch overhead")

    def memory(self):
        torch = self.torch
        if self.device == "cuda":
            free, total = torch.cuda.mem_get_info()
            props = torch.cuda.get_device_properties(0)
            self.m.gpu_memory_bytes = int(total)
            # what the context and allocator already hold, and at least the default slack
            self.m.gpu_reserved_bytes = int(max(total - free - torch.cuda.memory_reserved(), 1 << 30))
            self.m.device_name = props.name
            self.m.facts["gpu"] = f"{props.name}, {total / 1e9:.1f} GB, capability {props.major}.{props.minor}"
            numa = gpu_numa_node(props)
            self.m.facts["numa"] = numa or "not visible"
        else:
            host = host_memory_bytes()
            # the CPU mode's "device" memory is host memory: give each role half, so that a plan
            # within both fits the machine (both whole, a plan could pass and execute refuse it)
            self.m.gpu_memory_bytes = host // 2
            self.m.host_memory_bytes = host - host // 2
            self.m.gpu_reserved_bytes = 0
            self.m.device_name = platform.processor() or platform.machine()
            self.m.facts["cpu"] = (f"{os.cpu_count()} logical CPUs; measured on {torch.get_num_threads()} torch "
                                   "thread(s), as the CPU mode runs")
        nodes = numa_nodes()
        self.m.facts["numa_nodes"] = str(nodes) if nodes else "not visible"
        self.tick("memory")


# ---------------------------------------------------------------------------------------------
# Profile assembly
# ---------------------------------------------------------------------------------------------


def _default_name(device: str) -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]+", "-", platform.node() or "this-machine").strip("-") or "this-machine"
    return f"{host}-{device}"


def resolve_device(requested: str | None) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (use --device cpu for the CPU mode)")
    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def assemble(device: str, m: Measured, settings: Settings, name: str, elapsed_s: float,
             torch_version: str) -> HardwareProfile:
    """A HardwareProfile document from the measurements."""
    h2d, d2h = fit_copy_model(m.h2d), fit_copy_model(m.d2h)
    curves = [
        GemmCurve(n=2 * h, k=h, points=[RatePoint(m=mm, flops=rate) for mm, rate in points])
        for h, points in sorted(m.gemm.items())
    ]
    timer = "CUDA events" if device == "cuda" else "time.perf_counter"
    method = (
        f"advisor profile --device {device}{' --quick' if settings.quick else ''}, torch {torch_version}, "
        f"medians of {settings.repeats} timed runs after {settings.warmups} warm-up(s), {timer}; "
        f"copies {settings.copy_sizes[0] // KiB} KiB..{settings.copy_sizes[-1] // KiB} KiB "
        f"({'pinned host ↔ GPU' if device == 'cuda' else 'memcpy between two host buffers'}) fitted to "
        f"latency + bytes/bandwidth (relative least squares); GEMM (M×h)·(h×2h) in "
        f"{'fp16' if device == 'cuda' else 'fp32'}"
        f"{f', rotating over {settings.cold_bytes // MiB} MiB of weight copies (and copies over buffers as large)' if settings.cold_bytes else ''}"
        f"; attention: the backend's decode attention (bmm, fp32 "
        f"softmax, bmm over token-major K/V) of one query token over {settings.attention[2]} cached tokens, "
        f"KV bytes / time; memory-bound: elementwise add, "
        f"3 × bytes / time; launch overhead: a one-element add issued back to back; took {elapsed_s:.1f} s"
    )
    sources = {"host": platform.node(), **m.facts}
    if m.pageable_h2d_Bps:
        sources["pageable"] = (f"pageable H2D {m.pageable_h2d_Bps / 1e9:.1f} GB/s against pinned "
                               f"{h2d.bandwidth_Bps / 1e9:.1f} GB/s: stream only from pinned memory")
    return HardwareProfile(
        name=name,
        description=f"{m.device_name or device} measured by advisor profile"
                    f"{' (quick)' if settings.quick else ''}",
        device_kind=device,
        lanes_overlap=device == "cuda",
        gpu_memory_bytes=max(1, m.gpu_memory_bytes),
        host_memory_bytes=max(1, m.host_memory_bytes or host_memory_bytes()),
        h2d=h2d,
        d2h=d2h,
        bidirectional_total_Bps=m.bidirectional_Bps,
        pageable_h2d_Bps=m.pageable_h2d_Bps,
        gemm=curves,
        attention_Bps=m.attention_Bps,
        memory_bound_Bps=m.memory_bound_Bps,
        launch_overhead_s=m.launch_overhead_s,
        gpu_reserved_bytes=m.gpu_reserved_bytes,
        provenance=Provenance(source="advisor profile", date=datetime.date.today().isoformat(),
                              method=method, sources=sources),
    )


def measure(device: str | None = None, quick: bool = False, settings: Settings | None = None,
            name: str | None = None, progress: bool = True) -> HardwareProfile:
    """Profile this machine (the CPU mode where there is no GPU) and return the profile."""
    import torch

    device = resolve_device(device)
    settings = settings or settings_for(device, quick)
    began = time.perf_counter()
    profiler = Profiler(device, settings, tick=lambda label: None)
    with cpu_mode_threads(device):
        _run(profiler, progress)
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - began
    return assemble(device, profiler.m, settings, name or _default_name(device), elapsed, torch.__version__)


def _run(profiler: Profiler, progress: bool) -> None:
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("profiling {task.description:24s}"), BarColumn(), TimeElapsedColumn(),
                      transient=True) as bar:
            task = bar.add_task("", total=profiler.units())
            profiler.tick = lambda label: bar.update(task, advance=1, description=label)
            for _, step in profiler.steps():
                step()
    else:
        for _, step in profiler.steps():
            step()


def describe(hw: HardwareProfile) -> list[str]:
    lines = [
        f"{hw.name}: {hw.description} (device_kind {hw.device_kind}, lanes overlap: {hw.lanes_overlap})",
        f"h2d: {hw.h2d.latency_s * 1e6:.1f} µs + bytes / {hw.h2d.bandwidth_Bps / 1e9:.2f} GB/s "
        f"({len(hw.h2d.points)} sizes)",
        f"d2h: {hw.d2h.latency_s * 1e6:.1f} µs + bytes / {hw.d2h.bandwidth_Bps / 1e9:.2f} GB/s",
    ]
    if hw.bidirectional_total_Bps:
        lines.append(f"both directions at once: {hw.bidirectional_total_Bps / 1e9:.1f} GB/s in total")
    if hw.pageable_h2d_Bps:
        lines.append(f"pageable h2d: {hw.pageable_h2d_Bps / 1e9:.1f} GB/s (pin what streams)")
    for curve in hw.gemm:
        rates = ", ".join(f"M={p.m}: {p.flops / 1e12:.3g}" for p in curve.points)
        lines.append(f"GEMM ({curve.n} × {curve.k}) TFLOP/s: {rates}")
    lines += [
        f"attention {hw.attention_Bps / 1e9:.1f} GB/s, memory-bound {hw.memory_bound_Bps / 1e9:.1f} GB/s, "
        f"launch overhead {hw.launch_overhead_s * 1e6:.2f} µs",
        f"memory: device {hw.gpu_memory_bytes / 1e9:.1f} GB, host {hw.host_memory_bytes / 1e9:.1f} GB; "
        + "; ".join(f"{k}: {v}" for k, v in hw.provenance.sources.items() if k in ("numa", "numa_nodes")),
        f"method: {hw.provenance.method}",
    ]
    return lines


def cmd_profile(args) -> int:
    check_writable(args.output)
    hw = measure(args.device, args.quick, name=args.name)
    try:
        write_document(args.output, hw)
    except OSError as error:
        raise UserError(f"{args.output}: cannot write: {error.strerror or error}") from None
    for line in describe(hw):
        print(line)
    print(f"wrote {args.output}")
    return 0
