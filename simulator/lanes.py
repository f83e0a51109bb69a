"""The machine a plan runs on: two copy engines, a GPU compute stream and the host CPU.

Each lane is one SimPy process that runs its operations in issue order, like a CUDA stream: it
waits until every dependency of its next operation has finished, then holds the lane for that
operation. A lane whose operations take a fixed time (the GPU, the CPU, and copies whose rate
never changes) settles an operation's end when it starts it, so a dependent on another lane can
plan its own start from that time without an extra event. A copy engine under bidirectional
sharing cannot: its copy first spends the direction's latency, then moves its bytes at the
direction's bandwidth, or, while the other direction also has a copy in flight, at its share of
the profile's bidirectional total; the copy in flight is interrupted and re-rated (its remaining
bytes carried over) whenever the other direction starts or ends a copy, so its end is known only
when it happens. A profile whose lanes do not overlap runs every operation on one process, in
graph order.

Operations are plain indices here; `simulator.simulate` validates the graph and prepares their
durations, byte counts and dependencies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import simpy


@dataclass(frozen=True, slots=True)
class CopyRates:
    """One copy direction's figures for the sharing model, bytes per second."""

    own_Bps: float  # alone on the link
    shared_Bps: float  # while the other direction also has a copy in flight


class Machine:
    """Start and end times of operations, filled in by the lane processes as SimPy runs them."""

    def __init__(self, env: simpy.Environment, deps: Sequence[Sequence[int]], durations: Sequence[float]):
        n = len(durations)
        self.env = env
        self.deps = deps
        self.duration = durations
        self.start: list[float] = [0.0] * n
        # the time an operation ends, once it is settled (None before); a fixed-time lane settles
        # it when the operation starts, a shared copy engine when the copy ends
        self.end: list[float | None] = [None] * n
        # one event per operation someone waits for while its end is not yet settled
        self.waiters: dict[int, simpy.Event] = {}
        # sharing state per copy direction (0: h2d, 1: d2h)
        self.busy = [False, False]  # a copy in flight, in its latency or its transfer
        self.copy_procs: list[simpy.Process | None] = [None, None]

    # --- lanes ---------------------------------------------------------------------------------

    def dependencies_done(self, i: int, ready: float):
        """Wait until every dependency of operation `i` has an end time; the latest of them and `ready`.

        An end time is known as soon as a fixed-duration operation starts, so most operations never
        wait on an event; a waiter gets one event per missing dependency."""
        end, waiters = self.end, self.waiters
        for d in self.deps[i]:
            e = end[d]
            while e is None:
                ev = waiters.get(d)
                if ev is None:
                    ev = waiters[d] = self.env.event()
                yield ev
                e = end[d]
            if e > ready:
                ready = e
        return ready

    def fixed_lane(self, order: Sequence[int]):
        """Run `order` in issue order; every operation takes its precomputed duration."""
        env, end, start, duration, waiters = self.env, self.end, self.start, self.duration, self.waiters
        timeout = env.timeout
        free = env.now
        for i in order:
            ready = yield from self.dependencies_done(i, free)
            free = ready + duration[i]
            start[i] = ready
            end[i] = free
            ev = waiters.pop(i, None)
            if ev is not None:
                ev.succeed()
            delay = free - env.now
            if delay > 0:
                yield timeout(delay)

    def shared_copy_lane(self, order: Sequence[int], me: int, nbytes: Sequence[float],
                         latency: Sequence[float], rates: tuple[CopyRates, CopyRates]):
        """Run the copies of direction `me` in order, re-rated while the other direction is busy."""
        env, end, start, waiters = self.env, self.end, self.start, self.waiters
        timeout = env.timeout
        busy = self.busy
        other = 1 - me
        own, shared = rates[me].own_Bps, rates[me].shared_Bps
        for i in order:
            ready = yield from self.dependencies_done(i, env.now)
            if ready > env.now:
                yield timeout(ready - env.now)
            start[i] = env.now
            size = nbytes[i]
            if size > 0:
                busy[me] = True
                self._rerate(other)
                lat, remaining = latency[i], float(size)
                while True:
                    rate = shared if busy[other] else own
                    began = env.now
                    try:
                        yield timeout(lat + remaining / rate)
                        break
                    except simpy.Interrupt:
                        elapsed = env.now - began
                        if elapsed < lat:
                            lat -= elapsed
                        else:
                            remaining -= (elapsed - lat) * rate
                            lat = 0.0
                            if remaining <= size * 1e-12:
                                break
                busy[me] = False
            end[i] = env.now
            ev = waiters.pop(i, None)
            if ev is not None:
                ev.succeed()
            if size > 0:
                self._rerate(other)

    def _rerate(self, direction: int) -> None:
        """The other direction started or ended a copy: re-rate `direction`'s copy in flight."""
        if self.busy[direction]:
            self.copy_procs[direction].interrupt("re-rate")

    # --- after the run -------------------------------------------------------------------------

    def deadlock(self, orders: dict[str, Sequence[int]], ids: Sequence[str]) -> str | None:
        """None if every operation ran; else one line naming an operation that never ran and why.

        `orders` maps a label for each process ("lane gpu", ...) to the operations it issues.
        """
        end = self.end
        heads: dict[str, int] = {}
        lane_of: dict[int, str] = {}
        for lane, order in orders.items():
            for i in order:
                lane_of[i] = lane
            for i in order:
                if end[i] is None:
                    heads[lane] = i
                    break
        if not heads:
            return None
        # follow "waits for" from a stuck lane's head: each head waits for an unsettled
        # dependency, which is a head itself or queued behind its lane's head; heads are finite,
        # so the walk comes back to one of them
        first = min(heads.values())
        cur, path, seen = first, [], {}
        while cur not in seen:
            seen[cur] = len(path)
            dep = next(d for d in self.deps[cur] if end[d] is None)
            head = heads[lane_of[dep]]
            path.append((cur, dep, head))
            cur = head
        parts = []
        for op, dep, head in path[seen[cur]:]:
            if head == dep:
                parts.append(f"{ids[op]} waits for {ids[dep]}")
            elif head == op:
                parts.append(f"{ids[op]} waits for {ids[dep]}, which {lane_of[dep]} issues after it")
            else:
                parts.append(f"{ids[op]} waits for {ids[dep]}, queued on {lane_of[dep]} behind {ids[head]}")
        return f"operation {ids[first]} never ran: dependency cycle: " + "; ".join(parts)
