"""`advisor tune`: the closed loop in one command — profile, plan, execute, calibrate, re-plan.

The plan is only as good as the profile it was solved on, and the profile is only as good as its
agreement with what runs. So each round executes the current plan and its neighbours (the split
a tenth of the prompt either side, half and twice the chunks, half and twice the GPU batches in
the column schedule) for a few decode steps each, calibrates the starting profile on every run
measured so far (`advisor.calibrate`), and solves again on the calibrated profile. It stops when
the plan no longer changes, or after `--rounds` rounds, and reports the first plan's prediction
and the final one's next to what each measured.

Candidates run on a shortened copy of the workload (same batch and prompt, `--steps` decode steps
after the warm-up), through the backend's runtime and executor; plans of the same shape share
one runtime so pinned stores are allocated once per shape, not once per candidate. If the
profile given is for another kind of device than the one tuned on (or is `measure`, or a file
that does not exist yet), the machine is profiled first (`advisor profile --quick`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

from advisor.calibrate import Run, calibrate, make_run
from advisor.documents import (HardwareProfile, Plan, Trace, Workload, check_distinct, check_writable,
                               write_document)
from advisor.errors import UserError
from advisor.plans import make_plan
from advisor.profile import cpu_mode_threads
from advisor.scheduler import MAX_GPU_BATCHES, Request, plan as solve

# ---------------------------------------------------------------------------------------------
# Candidates
# ---------------------------------------------------------------------------------------------


def decisions(p: Plan) -> tuple:
    """What the tuner chooses besides the splits."""
    return (p.chunks, p.workload.gpu_batches, p.weights_gpu_layers, p.resident_kv_layers, p.offload, p.schedule)


def same_plan(a: Plan, b: Plan) -> bool:
    """The same choices, and splits no further apart than measurement noise moves them.

    Calibrated on noisy timings, the optimal split wanders by a token or two from round to round;
    that is not a new plan. Tolerance: 1% of the prompt, at least 2 tokens.
    """
    if decisions(a) != decisions(b) or len(a.splits) != len(b.splits):
        return False
    tolerance = max(2, a.workload.prompt_len // 100)
    return all(abs(x - y) <= tolerance for x, y in zip(a.splits, b.splits))


def short_plan(p: Plan, steps: int, warmup: int, hardware: HardwareProfile | None = None) -> Plan:
    """`p` on the same batch and prompt for `warmup + steps` decode steps, its first splits kept."""
    wl = p.workload
    gen_len = max(2, min(wl.gen_len, steps + warmup + 1))
    short = Workload(batch=wl.batch, prompt_len=wl.prompt_len, gen_len=gen_len, gpu_batches=wl.gpu_batches,
                     gpu_kv_budget_bytes=wl.gpu_kv_budget_bytes)
    return _variant(p, short, p.splits[: short.decode_steps], p.chunks, hardware)


def _variant(p: Plan, workload: Workload, splits: list[int], chunks: int,
             hardware: HardwareProfile | None = None) -> Plan:
    return make_plan(
        p.model, hardware or p.hardware, workload, splits=splits, chunks=chunks, schedule=p.schedule,
        objective=p.objective, dtype=p.dtype, weights_gpu_layers=p.weights_gpu_layers,
        resident_kv_layers=p.resident_kv_layers, offload=p.offload, cost_model=p.cost_model,
    )


def describe_choice(p: Plan) -> str:
    if not p.offload:
        return f"no offloading, {p.workload.gpu_batches} GPU batch(es)"
    splits = sorted(set(p.splits))
    split = (f"split {splits[0]}" if len(splits) == 1 else f"splits {p.splits[0]}..{p.splits[-1]}") if splits else "-"
    return f"{split}, {p.chunks} chunk(s), {p.workload.gpu_batches} GPU batch(es)"


def neighbours(p: Plan) -> list[tuple[str, Plan]]:
    """(label, plan) of the plans next to `p`: other splits, chunks and GPU batch counts."""
    wl = p.workload
    out: list[tuple[str, Plan]] = []
    if p.offload and p.resident_kv_layers < p.model.num_layers and wl.decode_steps:
        delta = max(1, round(wl.prompt_len / 10))
        for sign in (-1, 1):
            splits = [min(max(s + sign * delta, 0), wl.context(t)) for t, s in enumerate(p.splits)]
            if splits != p.splits:
                out.append((f"split {'-' if sign < 0 else '+'}{delta}", _variant(p, wl, splits, p.chunks)))
        if max(p.splits) > 0:
            for chunks in (p.chunks * 2, p.chunks // 2):
                if 1 <= chunks <= 16 and chunks != p.chunks and chunks <= max(p.splits):
                    out.append((f"{chunks} chunks", _variant(p, wl, p.splits, chunks)))
    # the nearest GPU batch counts the planner could choose, above and below (both schedules)
    counts = [g for g in range(1, MAX_GPU_BATCHES[p.schedule] + 1) if wl.batch % g == 0]
    below = [g for g in counts if g < wl.gpu_batches]
    above = [g for g in counts if g > wl.gpu_batches]
    for g in above[:1] + below[-1:]:
        other = wl.model_copy(update={"gpu_batches": g})
        out.append((f"{g} GPU batches", _variant(p, Workload.model_validate(other.model_dump()),
                                                 p.splits, p.chunks)))
    return out


# ---------------------------------------------------------------------------------------------
# Executing candidates (the backend does the work)
# ---------------------------------------------------------------------------------------------


def default_warmup(device: str) -> int:
    return 2 if device == "cuda" else 1


ProgressFn = Callable[[str, float, float], None]  # (what, done, total): backend.progress.Progress.update


def execute_plans(plans: list[Plan], device: str, warmup: int, seed: int = 0,
                  on_skip: Callable[[Plan, str], None] | None = None,
                  progress: ProgressFn | None = None, what: str = "candidates") -> list[Trace | None]:
    """Measured traces of `plans` (None for one this machine cannot hold), sharing runtimes by shape.
    `progress(what, done, total)` counts the tokens sampled (prefill and decode steps) over all plans."""
    import torch

    from advisor.tracesummary import summarise
    from backend.command import check_machine, release
    from backend.executor import Executor
    from backend.lanes import make_lanes
    from backend.model import RandomWeights
    from backend.runtime import Capacity, Runtime, check_same_shape
    from backend.stores import PinError

    dev = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
    name = (f"cuda: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}" if device == "cuda"
            else f"cpu: torch {torch.__version__}")
    groups: list[list[int]] = []
    for i, p in enumerate(plans):
        for group in groups:
            try:
                check_same_shape(plans[group[0]], p)
            except ValueError:
                continue
            group.append(i)
            break
        else:
            groups.append([i])

    traces: list[Trace | None] = [None] * len(plans)
    samples = [p.workload.gen_len * p.workload.gpu_batches for p in plans]
    total, done = sum(samples), [0]

    def advance(count: int = 1) -> None:
        done[0] += count
        if progress is not None:
            progress(what, min(done[0], total), total)

    advance(0)
    with cpu_mode_threads(device):
        group_end = 0
        for group in groups:
            members = [plans[i] for i in group]
            group_end += sum(samples[i] for i in group)
            capacity = Capacity.of(*members)
            try:
                check_machine(capacity, dev)
            except UserError as error:
                for p in members:
                    if on_skip:
                        on_skip(p, error.lines[0])
                advance(group_end - done[0])
                continue
            runtime = None
            try:
                runtime = Runtime(capacity, dev, RandomWeights(seed))
                runtime.set_prompt(_random_prompt(members[0], seed))
                for i, p in zip(group, members):
                    steps = p.workload.decode_steps
                    used_warmup = min(warmup, max(steps - 1, 0))
                    result = Executor(runtime, p).run(make_lanes(dev), on_sample=lambda op: advance())
                    records = result.records()
                    traces[i] = Trace(
                        source="measured", plan_fingerprint=p.fingerprint(), device=name, records=records,
                        summary=summarise(p, records, used_warmup),
                        extra={"device_kind": device, "warmup_steps": used_warmup, "run_wall_s": result.wall_s},
                        notes=["measured by advisor tune through the backend's executor (random weights)"],
                    )
            except (torch.cuda.OutOfMemoryError, PinError) as error:
                why = "out of GPU memory" if isinstance(error, torch.cuda.OutOfMemoryError) else "pinning failed"
                for p in members:
                    if on_skip:
                        on_skip(p, f"{why}: {str(error).splitlines()[0] if str(error) else ''}")
            finally:
                release(runtime, dev)
            advance(group_end - done[0])  # a group skipped or cut short still ends its share of the bar
    return traces


def _random_prompt(p: Plan, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, p.model.vocab_size, (p.workload.batch, p.workload.prompt_len), generator=generator)


def measured_step_s(trace: Trace) -> float:
    """Median decode step time after the warm-up."""
    times = trace.summary.step_times_s[trace.summary.warmup_steps_excluded:] or trace.summary.step_times_s
    return float(statistics.median(times)) if times else 0.0


def predicted_step_s(p: Plan, hw: HardwareProfile, warmup: int) -> float:
    """Median simulated decode step time of `p` on `hw`, over the same steps as the measurement."""
    from simulator import simulate_plan

    times = simulate_plan(p.model_copy(update={"hardware": hw})).summary.step_times_s
    times = times[warmup:] or times
    return float(statistics.median(times)) if times else 0.0


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclass
class Tried:
    label: str
    plan: Plan  # the short plan that ran
    trace: Trace | None
    predicted_s: float  # on the profile the round planned with
    skipped: str = ""

    @property
    def measured_s(self) -> float | None:
        return measured_step_s(self.trace) if self.trace else None


@dataclass
class Round:
    number: int
    plan: Plan  # full workload, solved on the round's profile
    tried: list[Tried]
    error_before_pct: float | None = None
    error_after_pct: float | None = None
    next_plan: Plan | None = None


@dataclass
class Outcome:
    first: Tried
    final: Tried
    first_plan: Plan
    final_plan: Plan
    profile: HardwareProfile
    rounds: list[Round] = field(default_factory=list)
    stopped: str = ""
    elapsed_s: float = 0.0


RunPlans = Callable[[list[Plan], str, int], list[Trace | None]]

NO_DECODE_STEP = ("--gen-len 1 has no decode step, and decode steps are what tune measures and tunes "
                  "(the split applies to them): give --gen-len 2 or more")


def tune(request: Request, device: str, rounds: int = 3, steps: int = 4, warmup: int | None = None,
         execute: RunPlans | None = None, log: Callable[[str], None] = print,
         progress: Callable[[], AbstractContextManager] | None = None) -> Outcome:
    """Plan, execute the plan and its neighbours, calibrate, re-plan — until the plan repeats.

    `progress()` (e.g. `backend.progress.Progress`) makes the bars that follow each round's runs:
    one context per round, closed before the round's lines are logged (a live bar would take
    standard output over while it shows)."""
    if request.gen_len < 2:
        raise UserError(NO_DECODE_STEP)
    began = time.perf_counter()
    warmup = default_warmup(device) if warmup is None else warmup
    skipped: dict[str, str] = {}

    def run_all(plans: list[Plan], what: str) -> list[Trace | None]:
        with progress() if progress is not None else nullcontext() as bars:
            if execute is not None:
                return execute(plans, device, warmup)
            return execute_plans(plans, device, warmup,
                                 on_skip=lambda p, why: skipped.__setitem__(p.fingerprint(), why),
                                 progress=bars.update if bars is not None else None, what=what)

    start = request.hardware
    hw = start
    current = solve(request)
    first_plan = current
    runs: list[Run] = []
    measured: dict[str, Tried] = {}
    history: list[Round] = []
    stopped = f"stopped after {rounds} round(s) (--rounds)"
    for number in range(1, rounds + 1):
        base = short_plan(current, steps, warmup)
        candidates = [("plan", base)] + [(label, p) for label, p in neighbours(base)
                                         if p.fingerprint() != base.fingerprint()]
        fresh = [(label, p) for label, p in candidates if p.fingerprint() not in measured]
        traces = run_all([p for _, p in fresh], f"round {number}: {len(fresh)} plan(s)")
        tried = []
        for (label, p), trace in zip(fresh, traces):
            item = Tried(label, p, trace, predicted_step_s(p, hw, warmup), skipped.get(p.fingerprint(), ""))
            if trace is not None:
                runs.append(make_run(f"round{number}-{label.replace(' ', '')}", p, trace, start))
                measured[p.fingerprint()] = item
            tried.append(item)
        if base.fingerprint() not in measured:
            raise UserError(f"the plan ({describe_choice(current)}) could not run here: "
                            f"{skipped.get(base.fingerprint(), 'no measurement')}")
        result = calibrate(start, runs, name=_tuned_name(start))
        hw = result.profile
        next_plan = solve(replace(request, hardware=hw))
        history.append(Round(number, current, tried, result.error_before_pct, result.error_after_pct, next_plan))
        _log_round(log, history[-1], measured[base.fingerprint()])
        if same_plan(next_plan, current):
            current = next_plan
            stopped = f"the plan stopped changing after {number} round(s)"
            break
        current = next_plan

    first = measured[short_plan(first_plan, steps, warmup).fingerprint()]
    first = replace(first, predicted_s=predicted_step_s(first.plan, start, warmup))
    final_short = short_plan(current, steps, warmup)
    if final_short.fingerprint() not in measured:
        trace = run_all([final_short], "final plan")[0]
        if trace is None:
            raise UserError(f"the final plan ({describe_choice(current)}) could not run here: "
                            f"{skipped.get(final_short.fingerprint(), 'no measurement')}")
        measured[final_short.fingerprint()] = Tried("final", final_short, trace, 0.0)
    final = replace(measured[final_short.fingerprint()], predicted_s=predicted_step_s(final_short, hw, warmup))
    return Outcome(first, final, first_plan, current, hw, history, stopped, time.perf_counter() - began)


def _tuned_name(hw: HardwareProfile) -> str:
    base = hw.name.removesuffix("-calibrated").removesuffix("-tuned")
    return f"{base}-tuned"


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.3f} ms"


def _err(predicted: float, measured: float | None) -> str:
    if not measured:
        return ""
    return f" ({(predicted - measured) / measured * 100:+.1f}%)"


def _log_round(log, r: Round, main: Tried) -> None:
    log(f"round {r.number}: {describe_choice(r.plan)}")
    for t in r.tried:
        if t.trace is None:
            log(f"  {t.label:16s} {describe_choice(t.plan):40s} skipped: {t.skipped or 'did not run'}")
        else:
            log(f"  {t.label:16s} {describe_choice(t.plan):40s} predicted {_ms(t.predicted_s):>11s}, "
                f"measured {_ms(t.measured_s):>11s} per step")
    if r.error_before_pct is not None:
        log(f"  calibrated on every run so far: per-operation model error {r.error_before_pct:.1f}% → "
            f"{r.error_after_pct:.1f}%")
    if r.next_plan is not None:
        same = same_plan(r.next_plan, r.plan)
        log(f"  re-planned: {describe_choice(r.next_plan)}{' (unchanged)' if same else ''}")


def candidate_steps(gen_len: int, steps: int, warmup: int) -> tuple[int, int]:
    """(warm-up, measured) decode steps each candidate runs: `steps` after `warmup`, fewer when the
    workload has fewer decode steps (as `short_plan` and `execute_plans` shorten them)."""
    decode = max(2, min(gen_len, steps + warmup + 1)) - 1
    used_warmup = min(warmup, max(decode - 1, 0))
    return used_warmup, decode - used_warmup


def summary_lines(o: Outcome, steps: int) -> list[str]:
    s = o.final.trace.summary if o.final.trace else None
    measured = len(s.step_times_s) - s.warmup_steps_excluded if s and s.step_times_s else steps
    full = o.final_plan.predicted.decode_step_s if o.final_plan.predicted and o.final_plan.workload.decode_steps else None
    return [
        o.stopped + f", {o.elapsed_s:.1f} s",
        f"first plan: {describe_choice(o.first_plan)}: predicted {_ms(o.first.predicted_s)} per step on "
        f"{o.first_plan.hardware.name}, measured {_ms(o.first.measured_s)}{_err(o.first.predicted_s, o.first.measured_s)}",
        f"final plan: {describe_choice(o.final_plan)}: predicted {_ms(o.final.predicted_s)} per step on "
        f"{o.profile.name}, measured {_ms(o.final.measured_s)}{_err(o.final.predicted_s, o.final.measured_s)}",
        f"(decode steps of the shortened workload, {measured} per candidate after the warm-up, medians; the final "
        f"plan's full workload is predicted at {_ms(full)} per step)",
    ]


def _starting_profile(args, device: str) -> HardwareProfile:
    """The profile to start from: the one given, or this machine's, measured now if needed."""
    from advisor.catalog import load_hardware
    from advisor.profile import measure

    name = args.hardware
    path = Path(name)
    if name == "measure" or (path.suffix == ".json" and not path.exists()):
        print(f"profiling this machine ({device}, quick) …")
        hw = measure(device, quick=True)
        if name != "measure":
            write_document(path, hw)
            print(f"wrote {path}")
        return hw
    hw = load_hardware(name)
    if hw.device_kind != device:
        print(f"{hw.name} profiles a {hw.device_kind} device; tuning runs on {device}: profiling this machine "
              "first (quick)")
        return measure(device, quick=True)
    return hw


def _profile_written_to(args) -> str | None:
    """The path `_starting_profile` writes this machine's profile to, if it will write one."""
    path = Path(args.hardware)
    return args.hardware if args.hardware != "measure" and path.suffix == ".json" and not path.exists() else None


def cmd_tune(args) -> int:
    from advisor.catalog import load_model
    from advisor.planner_cli import budget_bytes, build_request
    from backend.command import choose_device
    from backend.progress import Progress as ProgressBars

    if args.gen_len < 2:
        raise UserError(NO_DECODE_STEP)
    budget_bytes(args.gpu_kv_budget)  # refused now, not after profiling
    measured_to = _profile_written_to(args)
    check_distinct({"--model": args.model, "--hardware": None if measured_to else args.hardware},
                   {"-o": args.output, "--profile-output": args.profile_output, "--hardware": measured_to})
    check_writable(args.output, args.profile_output, measured_to)
    device = choose_device(args.device).type
    model = load_model(args.model)
    hw = _starting_profile(args, device)
    request = build_request(
        model, hw, batch=args.batch, prompt_len=args.prompt_len, gen_len=args.gen_len, schedule=args.schedule,
        objective=args.objective, gpu_batches=args.gpu_batches, weights_on_gpu=args.weights_on_gpu,
        gpu_kv_budget_gb=args.gpu_kv_budget, split=args.split, chunks=args.chunks, cost_model=args.cost_model,
        dtype=args.dtype,
    )
    warmup, measured = candidate_steps(args.gen_len, args.steps, default_warmup(device))
    fewer = (f" (the workload has {args.gen_len - 1} decode step(s): --steps {args.steps} and the "
             f"{default_warmup(device)}-step warm-up do not fit)" if (warmup, measured) !=
             (default_warmup(device), args.steps) else "")
    print(f"tune: {model.name} on {hw.name} ({device}), batch {args.batch}, prompt {args.prompt_len}, "
          f"{args.gen_len} new tokens; at most {args.rounds} round(s), {measured} decode step(s) per candidate "
          f"after {warmup} warm-up step(s){fewer}")
    outcome = tune(request, device, rounds=args.rounds, steps=args.steps, progress=ProgressBars)
    for line in summary_lines(outcome, measured):
        print(line)
    for path, document in ((args.output, outcome.final_plan), (args.profile_output, outcome.profile)):
        try:
            write_document(path, document)
        except OSError as error:
            raise UserError(f"{path}: cannot write: {error.strerror or error}") from None
    print(f"wrote {args.output} and {args.profile_output}")
    return 0
