"""`advisor simulate plan.json [-o trace.json] [--chrome out.json] [--layers N]`.

Runs the plan's operations on the simulated machine, prints the figures a user compares plans by
(TTFT, decode step time, tokens per second, how busy each lane is and its longest idle gap) and a
text timeline of one decode step from the middle of the run, and writes the predicted trace and,
if asked, a Chrome/Perfetto trace.
"""

from __future__ import annotations

import statistics
import time

from advisor.chrome import write_chrome
from advisor.documents import Plan, Trace, check_distinct, check_writable, load_document, write_document
from advisor.errors import UserError
from advisor.opgraph import PREFILL, build_graph
from simulator.simulate import simulate_plan
from simulator.timeline import text_timeline


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def summary_text(plan: Plan, trace: Trace) -> str:
    """The summary block `advisor simulate` prints."""
    wl, s = plan.workload, trace.summary
    splits = plan.splits
    split_text = (f"split {splits[0]}" if splits and min(splits) == max(splits)
                  else f"splits {min(splits)}..{max(splits)}" if splits else "no decode steps")
    lines = [
        f"plan {trace.plan_fingerprint}: {plan.model.name} on {plan.hardware.name}, batch {wl.batch} "
        f"({wl.gpu_batches} GPU batch{'es' if wl.gpu_batches > 1 else ''}), prompt {wl.prompt_len}, "
        f"gen {wl.gen_len}, {plan.schedule} schedule, {split_text}, {plan.chunks} chunk(s), "
        f"weights on GPU {plan.weights_gpu_layers}/{plan.model.num_layers} layers, "
        f"resident KV {plan.resident_kv_layers} layers",
        f"  TTFT                 {_ms(s.ttft_s)}",
    ]
    if s.step_times_s:
        lines.append(f"  decode step          {_ms(s.decode_step_s)} mean, {_ms(statistics.median(s.step_times_s))} "
                     f"median, {_ms(min(s.step_times_s))}..{_ms(max(s.step_times_s))} over "
                     f"{len(s.step_times_s)} steps")
        lines.append(f"  decode tokens/s      {s.decode_tokens_per_s:.1f}")
    busy = "  ".join(f"{lane} {100 * s.lane_busy[lane]:.1f}%" for lane in ("h2d", "gpu", "d2h", "cpu")
                     if lane in s.lane_busy)
    lines.append(f"  lane busy            {busy}")
    lines.append(f"  longest idle         gpu {_ms(s.longest_gpu_idle_s)}, h2d {_ms(s.longest_h2d_idle_s)}")
    if plan.predicted is not None and s.step_times_s and plan.predicted.decode_step_s > 0:
        ratio = s.decode_step_s / plan.predicted.decode_step_s
        lines.append(f"  plan's cost model    {_ms(plan.predicted.decode_step_s)} per step "
                     f"(simulated / cost model = {ratio:.3f})")
    for note in trace.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def cmd_simulate(args) -> int:
    plan = load_document(Plan, args.plan)
    check_distinct({"the plan": args.plan}, {"-o": args.output, "--chrome": args.chrome})
    check_writable(args.output, args.chrome)
    began = time.perf_counter()
    graph = build_graph(plan)
    trace = simulate_plan(plan, graph)
    elapsed = time.perf_counter() - began
    for path, write in ((args.output, lambda: write_document(args.output, trace)),
                        (args.chrome, lambda: write_chrome(args.chrome, {"predicted": trace}, graph))):
        if not path:
            continue
        try:
            write()  # atomically: a failed write leaves no partial file, and an existing one as it was
        except OSError as error:
            done = f" ({args.output} was written)" if path == args.chrome and args.output else ""
            raise UserError(f"{path}: cannot write: {error.strerror or error}{done}") from None
    print(summary_text(plan, trace))
    print(f"  simulated {len(trace.records):,} operations in {elapsed:.2f} s")
    steps = plan.workload.decode_steps
    step = steps // 2 if steps else PREFILL
    print()
    # start where the KV cache is offloaded: layers whose KV stays on the GPU never wait for PCIe
    first = plan.resident_kv_layers if plan.offload and plan.resident_kv_layers < plan.model.num_layers else 0
    print(text_timeline(plan, trace, step, getattr(args, "layers", 4) or 4, first_layer=first))
    if args.output:
        print(f"wrote {args.output}")
    if args.chrome:
        print(f"wrote {args.chrome} (open in https://ui.perfetto.dev)")
    return 0
