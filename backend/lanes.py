"""Where operations run: CUDA streams and events, or the CPU in graph order, or an emulation.

The executor hands each operation to `submit(op_id, lane, fn, waits)`: run `fn` on `lane` after
the completion tokens in `waits` (dependencies on other lanes; a lane keeps its own order).

- `CudaLanes` — three streams (`h2d`, `d2h`, `gpu`), the same ones for every run on a device.
  Submitting waits on the dependencies' CUDA events, records a start event, enqueues the kernels
  or copies `fn` issues and records an end event; the completion token is an event of its own
  without timing. Nothing is synchronised. Timing can be off, or limited to some operations
  (`timing=` a set of op ids: the step boundaries alone, say), which is how `backend.measure`
  tells what timing every operation costs.
- `SerialLanes` — the CPU mode of DESIGN §3: `fn` runs at once, in graph order; nothing overlaps.
- `EmulatedLanes` — for tests: CUDA stream semantics on the CPU. Each lane is a queue; whenever it
  is asked to make progress it runs a randomly chosen lane's head whose waits have completed, so
  the operations run in an order a GPU could choose. A dependency the executor forgot to wait for
  then shows up as a wrong result, which is how the GPU code path is tested without a GPU.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Collection

import torch

LANES = ("h2d", "d2h", "gpu")


def _timed(timing: bool | Collection[str], op_id: str) -> bool:
    """Whether an operation gets timestamps: all (True), none (False) or those named."""
    return timing if isinstance(timing, bool) else op_id in timing


class SerialLanes:
    kind = "cpu"

    def __init__(self, timing: bool | Collection[str] = True):
        self.timing = timing
        self._times: dict[str, tuple[float, float]] = {}

    def start(self, expected_ops: int = 0) -> None:
        self._times = {}
        self.origin = time.perf_counter()

    def submit(self, op_id: str, lane: str, fn: Callable[[], None], waits: list) -> str:
        if _timed(self.timing, op_id):
            start = time.perf_counter()
            fn()
            self._times[op_id] = (start - self.origin, time.perf_counter() - self.origin)
        else:
            fn()
        return op_id

    def wait_host(self, token) -> None:
        pass

    def finish(self) -> None:
        pass

    def span_s(self) -> float | None:
        return None  # no device clock: the host wall clock is the run's time

    def times(self) -> dict[str, tuple[float, float]]:
        return dict(self._times)


# The three streams of each device, made once per process: torch hands out a new stream from a
# round-robin pool at every `torch.cuda.Stream()`, and its caching allocator keeps freed blocks per
# stream, so lanes on fresh streams would allocate (and map) new GPU memory at every run's start,
# and a stream would change roles from one run to the next.
_STREAMS: dict[torch.device, dict[str, torch.cuda.Stream]] = {}


def _lane_streams(device: torch.device) -> dict[str, torch.cuda.Stream]:
    if device not in _STREAMS:
        streams = {lane: torch.cuda.Stream(device=device) for lane in LANES}
        streams["cpu"] = streams["gpu"]
        _STREAMS[device] = streams
    return _STREAMS[device]


class CudaLanes:
    kind = "cuda"

    def __init__(self, device: torch.device, timing: bool | Collection[str] = True):
        self.device = device
        self.timing = timing
        self.streams = _lane_streams(device)
        self._events: dict[str, tuple[torch.cuda.Event, torch.cuda.Event]] = {}

    def start(self, expected_ops: int = 0) -> None:
        """Create the run's events before it starts (a CUDA event is created at its first record,
        which is better kept off the issue path)."""
        gpu = self.streams["gpu"]
        self._pools: dict[bool, list[torch.cuda.Event]] = {True: [], False: []}
        timed = expected_ops if self.timing is True else (0 if self.timing is False else len(self.timing))
        for timing, count in ((True, 2 * min(timed, expected_ops)), (False, expected_ops)):
            for _ in range(count):
                event = torch.cuda.Event(enable_timing=timing)
                event.record(gpu)
                self._pools[timing].append(event)
        torch.cuda.synchronize(self.device)
        self._events = {}
        self.origin = torch.cuda.Event(enable_timing=True)
        self.origin.record(gpu)

    def _event(self, timing: bool) -> torch.cuda.Event:
        pool = self._pools[timing]
        return pool.pop() if pool else torch.cuda.Event(enable_timing=timing)

    def submit(self, op_id: str, lane: str, fn: Callable[[], None], waits: list) -> torch.cuda.Event:
        """The completion token other lanes wait on is always an event without timing (CUDA's
        advice for events used in waits); timing adds its own start and end events. On the H100
        (2026-11-26) neither this nor the event pool changed the timing overhead of
        bench/gpu_check.py's case 3 as pairs of single-step runs measured it (+13.4% before, +12.4%
        after): a cost per run, not per step, by its size (backend.measure now separates the two)."""
        stream = self.streams[lane]
        timed = _timed(self.timing, op_id)
        with torch.cuda.stream(stream):
            for event in waits:
                stream.wait_event(event)
            if timed:
                start = self._event(True)
                start.record(stream)
            fn()
            if timed:
                end = self._event(True)
                end.record(stream)
                self._events[op_id] = (start, end)
            token = self._event(False)
            token.record(stream)
        return token

    def wait_host(self, token: torch.cuda.Event) -> None:
        token.synchronize()

    def finish(self) -> None:
        gpu = self.streams["gpu"]
        for lane in ("h2d", "d2h"):
            gpu.wait_stream(self.streams[lane])
        self.final = torch.cuda.Event(enable_timing=True)
        self.final.record(gpu)
        torch.cuda.synchronize(self.device)

    def span_s(self) -> float:
        """The run on the GPU's own clock: from the origin to the end of the last lane's work."""
        return self.origin.elapsed_time(self.final) / 1e3

    def times(self) -> dict[str, tuple[float, float]]:
        """(start, end) seconds after the run's origin, read once everything has finished."""
        out = {}
        for op_id, (start, end) in self._events.items():
            s = max(self.origin.elapsed_time(start) / 1e3, 0.0)
            out[op_id] = (s, max(self.origin.elapsed_time(end) / 1e3, s))
        return out


class DeadlockError(RuntimeError):
    pass


class EmulatedLanes:
    kind = "emulated"

    def __init__(self, seed: int = 0, eagerness: float = 0.3):
        self.rng = random.Random(seed)
        self.eagerness = eagerness  # chance of running a queued operation after each submission
        # each lane gets a speed drawn over four orders of magnitude, so that in some runs one lane
        # races ahead of the others as far as its waits allow, and in others it lags far behind
        self.speed = {lane: 10 ** self.rng.uniform(-2, 2) for lane in LANES}
        self.timing = True
        self.queues: dict[str, deque] = {lane: deque() for lane in LANES}
        self.done: set[str] = set()
        self._times: dict[str, tuple[float, float]] = {}
        self.clock = 0.0

    def start(self, expected_ops: int = 0) -> None:
        self._times = {}
        self.done = set()
        self.clock = 0.0

    def submit(self, op_id: str, lane: str, fn: Callable[[], None], waits: list) -> str:
        self.queues["gpu" if lane == "cpu" else lane].append((op_id, fn, list(waits)))
        while self.rng.random() < self.eagerness and self._step():
            pass
        return op_id

    def _runnable(self) -> list[str]:
        return [lane for lane, q in self.queues.items() if q and all(w in self.done for w in q[0][2])]

    def _step(self) -> bool:
        lanes = self._runnable()
        if not lanes:
            return False
        lane = self.rng.choices(lanes, weights=[self.speed[lane] for lane in lanes])[0]
        op_id, fn, _ = self.queues[lane].popleft()
        start = self.clock
        fn()
        self.clock += 1e-3
        self._times[op_id] = (start, self.clock)
        self.done.add(op_id)
        return True

    def wait_host(self, token: str) -> None:
        while token not in self.done:
            if not self._step():
                raise DeadlockError(f"{token} can never run: the lanes wait on each other")

    def finish(self) -> None:
        while any(self.queues.values()):
            if not self._step():
                heads = {lane: q[0][0] for lane, q in self.queues.items() if q}
                raise DeadlockError(f"lanes blocked, heads: {heads}")

    def span_s(self) -> float | None:
        return None

    def times(self) -> dict[str, tuple[float, float]]:
        return dict(self._times)


def make_lanes(device: torch.device, timing: bool | Collection[str] = True):
    return CudaLanes(device, timing) if device.type == "cuda" else SerialLanes(timing)
