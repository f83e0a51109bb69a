"""`advisor plan`: solve for a plan, write it, and print what it decided and why."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import replace

from advisor.catalog import load_hardware, load_model
from advisor.documents import Plan, check_distinct, check_writable, write_document
from advisor.errors import UserError
from advisor.scheduler import Request, check_request, fits_somehow, largest_batch_that_fits, plan


def build_request(model, hardware, *, batch: int, prompt_len: int, gen_len: int, schedule=None, objective=None,
                  gpu_batches=None, weights_on_gpu=None, gpu_kv_budget_gb=None, split=None, chunks=None,
                  cost_model: str = "pipelined", dtype=None) -> Request:
    """The scheduler's request for `advisor plan`'s options (the TUI and `advisor tune` build their
    requests the same way)."""
    return Request(
        model=model, hardware=hardware, batch=batch, prompt_len=prompt_len, gen_len=gen_len,
        schedule=schedule, objective=objective, gpu_batches=gpu_batches, weights_on_gpu=weights_on_gpu,
        gpu_kv_budget_bytes=budget_bytes(gpu_kv_budget_gb), split=split, chunks=chunks, cost_model=cost_model,
        dtype=dtype,
    )


def budget_bytes(gb: float | None) -> int | None:
    """The GPU KV budget (--gpu-kv-budget, the TUI's field) in bytes; refused, rather than crash,
    when it is not a number of bytes: nan, negative, infinite or too large for a float once in bytes."""
    if gb is None:
        return None
    nbytes = float(gb) * 1e9
    if math.isnan(nbytes):
        raise UserError(f"GPU KV budget: {gb} is not a number")
    if nbytes < 0:
        raise UserError(f"GPU KV budget: {gb:g} GB must be ≥ 0")
    if not math.isfinite(nbytes):
        raise UserError(f"GPU KV budget: {gb:g} GB is too large (give at most {sys.float_info.max / 1e9:.3g} GB)")
    return int(nbytes)


MAX_BATCH = 4096  # where `--batch max` and `--batch best` stop looking


def request_from_args(args) -> Request:
    """The request for the options; `--batch max` (and `best`, until `best_batch_plan` narrows it)
    becomes the largest batch that fits, all else equal."""
    searching = args.batch in ("max", "best")
    request = build_request(
        load_model(args.model), load_hardware(args.hardware), batch=MAX_BATCH if searching else args.batch,
        prompt_len=args.prompt_len, gen_len=args.gen_len, schedule=args.schedule, objective=args.objective,
        gpu_batches=args.gpu_batches, weights_on_gpu=args.weights_on_gpu, gpu_kv_budget_gb=args.gpu_kv_budget,
        split=args.split, chunks=args.chunks, cost_model=args.cost_model, dtype=args.dtype,
    )
    return with_largest_batch(request, f"--batch {args.batch}", _to_stderr) if searching else request


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def with_largest_batch(request: Request, asked: str, report: Callable[[str], None]) -> Request:
    """The request with the largest batch up to MAX_BATCH that fits, all else equal."""
    request = request.resolved()
    unit = request.gpu_batches or 1
    cap = replace(request, batch=MAX_BATCH // unit * unit)
    check_request(cap)  # a prompt too long for the model fails every batch alike: say so at once
    if fits_somehow(cap):
        report(f"batch: {cap.batch} fits; the search stops there")
        return cap
    largest = largest_batch_that_fits(cap)
    if largest is None:
        raise UserError(f"{asked}: no batch fits, all else equal: plan a small batch for the reasons")
    report(f"batch: the largest that fits GPU and host memory, all else equal, is {largest}")
    return replace(request, batch=largest)


def batch_sizes_up_to(top: int, unit: int) -> list[int]:
    """The batches `--batch best` plans first: unit × 1, 2, 3, 4, 6, 8, 12, … up to `top`, and `top`."""
    factors = sorted({m << k for k in range(13) for m in (1, 3)})
    return sorted({unit * f for f in factors if unit * f <= top} | {top})


REFINE_ROUNDS, REFINE_BATCHES = 3, 16


def best_batch_plan(request: Request, report: Callable[[str], None] = _to_stderr,
                    stop: Callable[[], bool] = lambda: False) -> Plan | None:
    """Of the batches up to the request's (the largest that fits), the plan with the most decode
    tokens per second; each one tried is reported (a line each). Throughput is not monotone in the
    batch: a small batch may keep more layers' KV on the GPU than a large one.

    First a coarse pass (`batch_sizes_up_to`), then up to REFINE_ROUNDS passes between the best's
    nearest tried neighbours, each planning at most REFINE_BATCHES of the batches there, the most
    divisible by powers of two first (in the column schedule they can be split into the most GPU
    batch counts, so they plan best), nearest to the best next. `stop()` true ends the search
    early (None)."""
    if request.gen_len < 2:
        raise UserError("--batch best compares decode throughput: it needs --gen-len 2 or more")
    unit = request.gpu_batches or 1
    plans: dict[int, Plan | None] = {}
    first_error: list[str] = []

    def try_batches(batches) -> bool:
        for batch in batches:
            if stop():
                return False
            try:
                plans[batch] = plan(replace(request, batch=batch))
            except UserError as error:
                plans[batch] = None
                if not first_error:
                    first_error.extend(error.lines[:1])
                report(f"  batch {batch:5d}: does not plan ({_shortened(error.lines[0], 80)})")
                continue
            pred = plans[batch].predicted
            report(f"  batch {batch:5d}: {pred.decode_tokens_per_s:10.1f} tokens/s, step {_ms(pred.decode_step_s)}")
        return True

    def best_so_far() -> Plan | None:
        planned = [p for p in plans.values() if p is not None]
        return max(planned, key=lambda p: p.predicted.decode_tokens_per_s, default=None)

    if not try_batches(batch_sizes_up_to(request.batch, unit)):
        return None
    for _ in range(REFINE_ROUNDS):
        best = best_so_far()
        if best is None:
            break
        b = best.workload.batch
        low = max((t for t in plans if t < b), default=0)
        high = min((t for t in plans if t > b), default=b)
        between = [m for m in range(low + unit, high, unit) if m not in plans]
        if not between:
            break
        between.sort(key=lambda m: (-_twos(m // unit), abs(m - b)))
        if not try_batches(sorted(between[:REFINE_BATCHES])):
            return None
    best = best_so_far()
    if best is None:
        raise UserError(f"--batch best: no batch plans: {first_error[0] if first_error else 'nothing fits'}")
    report(f"batch: best → {best.workload.batch}, the most decode tokens/s of the {len(plans)} planned")
    return best


def _twos(n: int) -> int:
    """How many times 2 divides n (n > 0)."""
    return (n & -n).bit_length() - 1


def _shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.2f} ms"


def describe(p: Plan) -> list[str]:
    """The plan's decisions and predicted figures, one per line."""
    wl, pred = p.workload, p.predicted
    splits = sorted(set(p.splits))
    if not splits:
        split_text = "no decode steps"
    elif len(splits) == 1:
        split_text = f"{splits[0]} tokens recomputed per layer (of {wl.prompt_len}..{wl.max_context - 1})"
    else:
        split_text = f"{p.splits[0]} → {p.splits[-1]} tokens, re-planned over {len(splits)} segments as the context grows"
    lines = [
        f"model {p.model.name} on {p.hardware.name}: batch {wl.batch} ({wl.gpu_batches} GPU batch(es) of "
        f"{wl.gpu_batch_size}), prompt {wl.prompt_len}, {wl.gen_len} new tokens, {p.dtype}, "
        f"{p.schedule} schedule ({p.objective}), {p.cost_model} cost model",
        f"offloading: {'yes' if p.offload else 'no'}; KV resident on the GPU for {p.resident_kv_layers if p.offload else p.model.num_layers}"
        f"/{p.model.num_layers} layers; weights on the GPU for {p.weights_gpu_layers}/{p.model.num_layers} layers",
        f"split: {split_text}; {p.chunks} activation chunk(s) per layer",
    ]
    if pred:
        # the CPU mode copies between two regions of host memory and pins nothing
        cpu = p.hardware.device_kind == "cpu"
        link, store = ("copies (host memory to host memory)", "store") if cpu else ("PCIe", "pinned")
        rate = pred.decode_tokens_per_s
        rate_text = f"{rate:.1f}" if rate >= 1 else f"{rate:.3g}"  # a very slow plan is not "0.0"
        decode = (f"decode step {_ms(pred.decode_step_s)}, {rate_text} tokens/s" if wl.decode_steps
                  else "decode step n/a (one new token: no decode step)")
        lines += [
            f"{link} per decode step: {pred.pcie_bytes_per_step / 1e9:.3f} GB",
            f"predicted TTFT {_ms(pred.ttft_s)}, {decode}",
            f"memory: {'device' if cpu else 'GPU'} {pred.gpu_memory_bytes / 1e9:.2f} GB of {p.hardware.gpu_memory_bytes / 1e9:.2f}; "
            f"host {store} {pred.host_pinned_bytes / 1e9:.2f} GB of {p.hardware.host_memory_bytes / 1e9:.2f}",
        ]
        if pred.baseline_step_s is not None:
            lines.append(f"full-transfer baseline (split 0, same residency and chunking): "
                         f"{_ms(pred.baseline_step_s)} per step → speedup {pred.speedup_vs_full_transfer:.3f}×")
        if not wl.decode_steps:
            lines.append("no decode steps (--gen-len 1): no step time to compare with full transfer or a resident cache")
        elif pred.resident_step_s is not None and p.offload:
            lines.append(f"GPU-resident cache (fits): {_ms(pred.resident_step_s)} per step → this plan runs at "
                         f"{pred.speedup_vs_resident:.3f}× its speed")
        elif p.offload:
            lines.append("GPU-resident cache: does not fit on this GPU")
    lines += [f"note: {note}" for note in p.notes]
    return lines


def cmd_plan(args) -> int:
    check_distinct({"--model": args.model, "--hardware": args.hardware}, {"-o": args.output})
    check_writable(args.output)  # before `--batch best` plans for a minute
    request = request_from_args(args)
    result = best_batch_plan(request) if args.batch == "best" else plan(request)
    try:
        write_document(args.output, result)
    except OSError as error:
        raise UserError(f"{args.output}: cannot write: {error.strerror or error}") from None
    if args.json:
        print(json.dumps({"workload": result.workload.model_dump(), "splits": result.splits, "chunks": result.chunks,
                          "predicted": result.predicted.model_dump() if result.predicted else None,
                          "notes": result.notes}, indent=1))
    else:
        for line in describe(result):
            print(line)
        print(f"wrote {args.output}")
    return 0
