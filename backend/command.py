"""`advisor execute plan.json -o measured.json`: run a plan for real and write the measured trace.

Order of work: read the plan; choose the device; check the machine against the plan (CUDA
present, GPU memory free, host memory available for the exactly sized pinned stores) and refuse
with the numbers if it falls short; build the runtime (pinning with progress); run prefill and
every decode step with a progress bar; measure what timing costs; write the trace atomically.
Whatever happens (out of memory, Ctrl-C, a bug), pinned memory is released and no partial output
file is left: the output is written once, at the end.
"""

from __future__ import annotations

import json
import os
import sys
from argparse import Namespace
from pathlib import Path

import torch

from advisor.documents import Plan, Trace, check_distinct, check_writable, load_document, write_document
from advisor.errors import UserError
from advisor.memory import itemised
from advisor.profile import cpu_mode_threads
from advisor.tracesummary import summarise
from backend.checkpoint import HFWeights, checkpoint_spec, first_line, load_tokenizer, warn
from backend.executor import Executor
from backend.lanes import make_lanes
from backend.measure import copy_rate_Bps, default_warmup, timing_overhead
from backend.model import RandomWeights
from backend.progress import Progress
from backend.runtime import Capacity, Runtime
from backend.stores import PinError

GB = 1e9
HOST_MARGIN_BYTES = 2 * 10**9  # leave the process, the OS and the page cache this much
# the timing overhead reruns up to this many decode steps after the warm-up, in this many pairs of
# runs (timed and reference): 16 extra steps at most, shown as a progress bar of its own
OVERHEAD_STEPS, OVERHEAD_PAIRS = 4, 2


def choose_device(requested: str | None) -> torch.device:
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if requested == "cuda":
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise UserError(f"--device cuda: no CUDA device is available (torch {torch.__version__}, {build}); "
                        "run with --device cpu for the CPU mode")
    return torch.device("cpu")


def host_available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_machine(capacity: Capacity, device: torch.device) -> None:
    """Refuse, with the numbers, a plan this machine cannot hold."""
    plan = capacity.plan
    need = Runtime.memory_need(capacity, device)
    problems = []
    if device.type == "cuda":
        if plan.dtype == "bf16" and not torch.cuda.is_bf16_supported():
            problems.append(f"dtype: {torch.cuda.get_device_name(device)} does not support bf16")
        free, total = torch.cuda.mem_get_info(device)
        if need.gpu_total > free:
            problems.append(
                f"GPU memory: the plan needs {need.gpu_total / GB:.2f} GB ({itemised(need.gpu)}); "
                f"{torch.cuda.get_device_name(device)} has {free / GB:.2f} GB free of {total / GB:.2f} GB")
    available = host_available_bytes()
    if available is not None and need.host_total > available - HOST_MARGIN_BYTES:
        what = "pinned host memory" if device.type == "cuda" else "host memory"
        problems.append(
            f"{what}: the plan needs {need.host_total / GB:.2f} GB ({itemised(need.host)}, pages rounded); "
            f"the machine has {available / GB:.2f} GB available, of which {HOST_MARGIN_BYTES / GB:.0f} GB is kept free")
    if problems:
        raise UserError(*problems, "choose a smaller batch or context, or plan for this machine's profile")


def prompt_ids(args: Namespace, plan: Plan, tokenizer) -> torch.Tensor:
    """[batch, prompt_len] token ids: from --prompt, --prompt-ids, or random from --seed."""
    B, T, vocab = plan.workload.batch, plan.workload.prompt_len, plan.model.vocab_size
    if getattr(args, "prompt", None) is not None:
        if tokenizer is None:
            raise UserError("--prompt needs a tokenizer: give --checkpoint with a folder that has one, "
                            "or pass token ids with --prompt-ids")
        ids = list(tokenizer(args.prompt)["input_ids"])
        if len(ids) != T:
            raise UserError(f"--prompt is {len(ids)} tokens long; the plan's prompt is {T}: "
                            f"make the plan with --prompt-len {len(ids)}")
        rows, source = [ids] * B, "--prompt"
    elif getattr(args, "prompt_ids", None) is not None:
        text = args.prompt_ids
        if os.path.isfile(text):
            text = Path(text).read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"--prompt-ids: not JSON: {error.msg}") from None
        if isinstance(data, list) and data and all(_is_id(x) for x in data):
            rows = [data] * B
        elif isinstance(data, list) and all(isinstance(r, list) and all(_is_id(x) for x in r) for r in data):
            rows = data
            if len(rows) != B:
                raise UserError(f"--prompt-ids: {len(rows)} sequences; the plan's batch is {B}")
        else:
            raise UserError("--prompt-ids: expected a JSON list of token ids, or one list per sequence")
        for i, row in enumerate(rows):
            if len(row) != T:
                raise UserError(f"--prompt-ids: sequence {i} has {len(row)} tokens; the plan's prompt is {T}")
        source = "--prompt-ids"
    else:
        generator = torch.Generator().manual_seed(getattr(args, "seed", 0) or 0)
        return torch.randint(0, vocab, (B, T), generator=generator)
    for i, row in enumerate(rows):  # the tokenizer's ids too: it may know more tokens than the model
        outside = sorted({x for x in row if not 0 <= x < vocab})
        if outside:
            raise UserError(f"{source}: sequence {i} has ids outside the model's vocabulary [0, {vocab}): {outside[:5]}")
    return torch.tensor(rows, dtype=torch.long)


def _is_id(x) -> bool:
    """A JSON integer; not a boolean, which Python counts as an int."""
    return isinstance(x, int) and not isinstance(x, bool)


def release(runtime: Runtime | None, device: torch.device) -> None:
    """Let in-flight copies finish (they may still read or write pinned memory), then unpin and free."""
    if device.type == "cuda":
        try:
            torch.cuda.synchronize(device)
        except RuntimeError:  # a failed kernel leaves the context unusable; unpinning still matters
            pass
    if runtime is not None:
        runtime.release()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_plan(plan: Plan, device: torch.device, weights, ids: torch.Tensor, *, warmup_steps: int | None = None,
             keep_logits: bool = False, lanes=None, progress: Progress | None = None,
             measure_overhead: bool = True, fingerprint: str | None = None):
    """Execute `plan` on a runtime of its own; returns (trace, runtime outputs). Releases everything."""
    progress = progress or Progress(quiet=True)
    capacity = Capacity.of(plan)
    wl = plan.workload
    steps = wl.decode_steps
    warmup = default_warmup(device, steps) if warmup_steps is None else min(warmup_steps, max(steps - 1, 0))
    runtime = None
    try:
        runtime = Runtime(capacity, device, weights, keep_logits=keep_logits, progress=progress.update)
        runtime.set_prompt(ids)
        executor = Executor(runtime, plan)
        total = wl.gen_len * wl.gpu_batches
        done = [0]

        def on_sample(op):
            done[0] += 1
            progress.update("prefill and decode", done[0], total)

        result = executor.run(lanes or make_lanes(device), on_sample=on_sample)
        overhead = None
        window = range(warmup, min(steps, warmup + OVERHEAD_STEPS))
        if measure_overhead and len(window) >= 2:
            overhead = timing_overhead(executor, window, repeats=OVERHEAD_PAIRS,
                                       on_pair=lambda done, total: progress.update("timing overhead", done, total))
        tokens = runtime.tokens.cpu()
        logits = runtime.logits.cpu() if runtime.logits is not None else None
        pinned, host = runtime.pinned_bytes, runtime.host_bytes
    except torch.cuda.OutOfMemoryError as error:
        first = str(error).splitlines()[0] if str(error) else "out of memory"
        raise UserError(f"out of GPU memory while executing the plan: {first}") from None
    except PinError as error:
        raise UserError(f"pinning host memory failed: {error}") from None
    finally:
        release(runtime, device)

    records = result.records()
    summary = summarise(plan, records, warmup)
    kv_rate = copy_rate_Bps(result, ("load_kv",), min_step=warmup)
    h2d_rate = copy_rate_Bps(result, ("load_kv", "load_act", "load_weights"), min_step=warmup)
    act_rate = copy_rate_Bps(result, ("load_act",), min_step=warmup)
    dtype = runtime.dtype
    method = ("CUDA events recorded on each operation's stream just after its waits and after its work"
              if device.type == "cuda" else "host perf_counter around each operation, run in graph order (CPU mode)")
    notes = [
        f"times: {method}; a step runs from the previous step's sample to its own (DESIGN §3)",
        f"warm-up: the first {warmup} decode step(s) are excluded from the decode figures",
        f"compute dtype {str(dtype).removeprefix('torch.')}"
        + (f" (the plan says {plan.dtype}; the CPU mode computes in fp32)" if device.type == "cpu"
           and plan.dtype != "fp32" else ""),
    ]
    if overhead:
        notes.append(f"timing overhead: decode steps {window[0]}..{window[-1]} issued again in "
                     f"{overhead['pairs']} back-to-back pairs of runs, every operation timed against only the step "
                     f"boundaries timed; median over pairs of timed / reference step time − 1 (first step of each "
                     f"run left out) = {overhead['overhead']:+.2%}")
    extra = {
        "time_per_output_token_s": summary.decode_step_s,
        "kv_copy_GBps": None if kv_rate is None else kv_rate / GB,
        "act_copy_GBps": None if act_rate is None else act_rate / GB,
        "h2d_GBps": None if h2d_rate is None else h2d_rate / GB,
        "pinned_bytes": pinned,
        "host_store_bytes": host,
        "timing_overhead": None if overhead is None else overhead["overhead"],
        "reference_step_s": None if overhead is None else overhead["reference_step_s"],
        "run_wall_s": result.wall_s,
        "warmup_steps": warmup,
        "dtype": str(dtype).removeprefix("torch."),
    }
    device_name = (f"cuda: {torch.cuda.get_device_name(device)}, torch {torch.__version__}"
                   if device.type == "cuda" else f"cpu: torch {torch.__version__}")
    trace = Trace(
        source="measured",
        plan_fingerprint=fingerprint or plan.fingerprint(),
        device=device_name,
        records=records,
        summary=summary,
        prompt_ids=ids.tolist(),
        generated_ids=tokens.t().tolist(),
        extra=extra,
        notes=notes,
    )
    return trace, {"tokens": tokens, "logits": logits}


def cmd_execute(args) -> int:
    plan = load_document(Plan, args.plan)
    check_writable(args.output, getattr(args, "calibrate", None))
    check_distinct({"the plan": args.plan, "--prompt-ids": getattr(args, "prompt_ids", None)},
                   {"-o": args.output, "--calibrate": getattr(args, "calibrate", None)})
    device = choose_device(args.device)
    if plan.hardware.device_kind != device.type:
        # the run is still a numerics check, but its timings judge no profile of the plan's kind
        mismatch = (f"{args.plan} was planned for {plan.hardware.name}, a {plan.hardware.device_kind} profile; "
                    f"this run is on {device.type}")
        if getattr(args, "calibrate", None):
            raise UserError(f"{mismatch}, so --calibrate could not use it: plan with a {device.type} profile")
        warn(f"{mismatch}: compare and calibrate will not take its timings (plan with a {device.type} profile "
             f"for that{', e.g. --hardware cpu-generic' if device.type == 'cpu' else ''})")
    folder = Path(args.checkpoint) if args.checkpoint else None
    run = plan
    if folder is not None:
        if not folder.is_dir():
            raise UserError(f"--checkpoint {folder}: not a folder")
        run = plan.model_copy(update={"model": checkpoint_spec(plan.model, folder, plan.workload.max_context)})
        weights = HFWeights.from_folder(folder)
    else:
        weights = RandomWeights(args.seed)
    # a tokenizer is needed for --prompt; otherwise it only decodes the generated text
    tokenizer = load_tokenizer(folder, needed=getattr(args, "prompt", None) is not None)
    ids = prompt_ids(args, plan, tokenizer)
    check_machine(Capacity.of(run), device)
    steps = plan.workload.decode_steps
    if steps and args.warmup_steps is not None and args.warmup_steps > steps - 1:
        warn(f"--warmup-steps {args.warmup_steps}: the plan has {steps} decode step(s); "
             f"{max(steps - 1, 0)} are left out, so that one is measured")
    with Progress(quiet=False) as progress, cpu_mode_threads(device.type):
        trace, _ = run_plan(run, device, weights, ids, warmup_steps=args.warmup_steps, progress=progress,
                            fingerprint=plan.fingerprint(), measure_overhead=not args.no_timing_overhead)
    # what `advisor calibrate measured.json` needs to find the plan and check the device
    trace.extra["plan_path"] = str(Path(args.plan).resolve())
    trace.extra["device_kind"] = device.type
    if tokenizer is not None:
        try:
            trace.generated_text = tokenizer.batch_decode(trace.generated_ids, skip_special_tokens=True)
        except Exception as error:  # the run is good; only its text is lost
            warn(f"{folder}: the tokenizer cannot decode the generated ids ({first_line(error)}); "
                 "the generated text is left out")
    try:
        write_document(args.output, trace)
    except OSError as error:
        raise UserError(f"{args.output}: cannot write: {error.strerror or error}") from None
    s = trace.summary
    decode = (f"decode step {s.decode_step_s * 1e3:.2f} ms, {s.decode_tokens_per_s:.1f} tokens/s "
              f"({s.warmup_steps_excluded} warm-up step(s) excluded)" if s.step_times_s
              else "decode step n/a (one new token: no decode step)")
    print(f"{plan.model.name}: TTFT {s.ttft_s * 1e3:.2f} ms, {decode} on {trace.device}")
    kv, overhead = trace.extra.get("kv_copy_GBps"), trace.extra.get("timing_overhead")
    noise = " (below zero: the runs compared differ by more than timing costs: noise)" if (overhead or 0) < 0 else ""
    print(f"KV copies {'n/a' if kv is None else f'{kv:.1f} GB/s'}, pinned {trace.extra['pinned_bytes'] / GB:.2f} GB, "
          f"timing overhead {_pct(overhead)}{noise}")
    if trace.generated_text:
        print(f"generated: {trace.generated_text[0]!r}")
    print(f"wrote {args.output}")
    if getattr(args, "calibrate", None):
        _calibrate(args, plan, trace)
    return 0


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def _calibrate(args, plan: Plan, trace: Trace) -> None:
    """--calibrate OUT: refit the plan's hardware profile from this run (advisor.calibrate)."""
    from advisor.calibrate import calibrate_run

    result = calibrate_run(plan, trace, args.calibrate, trace_name=str(args.output))
    for line in getattr(result, "lines", []):
        print(line)
    print(f"wrote {args.calibrate}")


if __name__ == "__main__":  # pragma: no cover
    from advisor.cli import main

    sys.exit(main(["execute", *sys.argv[1:]]))
