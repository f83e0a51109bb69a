"""Benchmark: does calibration make the simulator predict held-out runs on the H100? (issue: close the loop)

One command, at most 5 minutes on the H100:

    PYTHONUNBUFFERED=1 python bench/bench_calibration_gpu.py

1. profile the machine (`advisor profile --quick`);
2. execute a sweep of splits (0, 25, 50, 70, 90% of the prompt; 2 activation chunks) at two batch
   sizes (8 and 16) on OPT-6.7B shapes with random weights, the whole KV cache offloaded to pinned
   host memory and the weights on the GPU, through the backend's runtime and executor (one
   runtime per batch size, so the stores are pinned once); 6 decode steps after 2 warm-up steps;
3. calibrate the profile on the batch-8 runs only, then simulate the batch-16 plans (held out)
   and compare each decode step's simulated time with its measured one — and the other way round.

Target: held-out simulated step time within 5% of measured at the median, 10% at p95. Method:
CUDA events on each operation's stream (the backend); step time as `advisor.tracesummary`
defines it; errors |simulated − measured| / measured over every measured step after the warm-up
of every held-out plan. Results go to bench/results/ and, when $OUT is set, to $OUT.

`--tiny` runs the same procedure in the CPU mode on tiny-opt in a few seconds (the test suite
runs it so the script cannot rot without a GPU); its figures say nothing about the H100.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from advisor.calibrate import calibrate, make_run  # noqa: E402
from advisor.catalog import load_model  # noqa: E402
from advisor.compare import compare_traces  # noqa: E402
from advisor.documents import Workload, write_document  # noqa: E402
from advisor.plans import make_plan  # noqa: E402
from advisor.profile import KiB, MiB, Settings, describe, measure  # noqa: E402
from advisor.tune import execute_plans  # noqa: E402
from simulator import simulate_plan  # noqa: E402

SPLIT_FRACTIONS = (0.0, 0.25, 0.5, 0.7, 0.9)
TARGET_MEDIAN_PCT, TARGET_P95_PCT = 5.0, 10.0

CONFIGS = {
    "gpu": dict(device="cuda", model="opt-6.7b", batches=(8, 16), prompt=1024, steps=6, warmup=2, chunks=2),
    "tiny": dict(device="cpu", model="tiny-opt", batches=(4, 8), prompt=48, steps=4, warmup=1, chunks=2),
}


def tiny_profile_settings() -> Settings:
    return Settings(copy_sizes=[64 * KiB, 256 * KiB, MiB, 4 * MiB], gemm_hidden=[64], gemm_m=[1, 16, 256, 4096],
                    repeats=3, warmups=1, attention=(4, 4, 256, 16), elementwise_bytes=4 * MiB, launch_ops=300)


def sweep(model, hw, batch: int, cfg: dict):
    wl = Workload(batch=batch, prompt_len=cfg["prompt"], gen_len=cfg["steps"] + cfg["warmup"] + 1)
    return [make_plan(model, hw, wl, splits=int(round(f * cfg["prompt"])), chunks=cfg["chunks"],
                      weights_gpu_layers=model.num_layers, resident_kv_layers=0) for f in SPLIT_FRACTIONS]


def step_errors(plans, traces, hw) -> tuple[list[float], list[float]]:
    """(|simulated − measured| / measured per counted decode step, per-operation median errors)."""
    errors, per_op = [], []
    for plan, trace in zip(plans, traces):
        candidate = plan.model_copy(update={"hardware": hw})
        predicted = simulate_plan(candidate)
        warmup = trace.summary.warmup_steps_excluded
        for sim, meas in list(zip(predicted.summary.step_times_s, trace.summary.step_times_s))[warmup:]:
            errors.append(abs(sim - meas) / meas * 100)
        per_op.append(compare_traces(candidate, trace, predicted).overall.median_error_pct)
    return errors, per_op


def pct(values, q):
    return float(np.percentile(values, q)) if values else float("nan")


def judge(label, plans, traces, hw) -> dict:
    errors, per_op = step_errors(plans, traces, hw)
    return {"label": label, "median_pct": pct(errors, 50), "p95_pct": pct(errors, 95), "steps": len(errors),
            "per_op_median_pct": float(statistics.median(per_op)) if per_op else None}


def run(cfg: dict, log) -> dict:
    began = time.perf_counter()
    device = cfg["device"]
    model = load_model(cfg["model"])
    hw = measure(device, quick=True, settings=tiny_profile_settings() if device == "cpu" else None,
                 name=f"{platform.node() or 'bench'}-{device}", progress=False)
    log(f"profile ({time.perf_counter() - began:.1f} s):")
    for line in describe(hw)[:6]:
        log(f"  {line}")


    measured = {}
    for batch in cfg["batches"]:
        plans = sweep(model, hw, batch, cfg)
        skipped = {}
        traces = execute_plans(plans, device, cfg["warmup"], on_skip=lambda p, why: skipped.__setitem__(p.splits[0], why))
        kept = [(p, t) for p, t in zip(plans, traces) if t is not None]
        for split, why in skipped.items():
            log(f"  batch {batch}, split {split}: skipped: {why}")
        measured[batch] = kept
        log(f"batch {batch}: executed {len(kept)} plan(s) ({time.perf_counter() - began:.1f} s)")
        for p, t in kept:
            counted = t.summary.step_times_s[t.summary.warmup_steps_excluded:]
            log(f"  split {p.splits[0]:5d}: measured step {statistics.median(counted) * 1e3:9.3f} ms median "
                f"over {len(counted)} steps")

    a, b = cfg["batches"]
    results = []
    for train, test in ((a, b), (b, a)):
        train_runs = [make_run(f"batch{train}-split{p.splits[0]}", p, t, hw) for p, t in measured[train]]
        if not train_runs or not measured[test]:
            continue
        calibrated = calibrate(hw, train_runs).profile
        plans, traces = zip(*measured[test])
        results.append({"calibrated_on": train, "judged_on": test,
                        "profile_only": judge("profile only", plans, traces, hw),
                        "calibrated": judge("calibrated", plans, traces, calibrated),
                        "profile": calibrated.model_dump(mode="json")})
    return {"config": cfg, "profile": hw.model_dump(mode="json"), "results": results,
            "elapsed_s": time.perf_counter() - began,
            "measured": {str(batch): [{"split": p.splits[0], "step_times_s": t.summary.step_times_s,
                                       "warmup": t.summary.warmup_steps_excluded} for p, t in runs]
                         for batch, runs in measured.items()}}


def table(report: dict) -> list[str]:
    cfg = report["config"]
    lines = [f"held-out decode step time, simulated vs measured ({cfg['model']} shapes, prompt {cfg['prompt']}, "
             f"splits {', '.join(f'{int(f * 100)}%' for f in SPLIT_FRACTIONS)} of the prompt, "
             f"{cfg['chunks']} chunks, {cfg['steps']} steps after {cfg['warmup']} warm-up)",
             f"{'calibrated on':>14s} {'judged on':>10s} {'profile':>13s} {'median':>8s} {'p95':>8s} "
             f"{'per-op median':>14s}"]
    for r in report["results"]:
        for key in ("profile_only", "calibrated"):
            j = r[key]
            lines.append(f"{'batch ' + str(r['calibrated_on']) if key == 'calibrated' else '-':>14s} "
                         f"{'batch ' + str(r['judged_on']):>10s} {j['label']:>13s} {j['median_pct']:7.2f}% "
                         f"{j['p95_pct']:7.2f}% {j['per_op_median_pct']:13.2f}%")
    if report["results"]:
        main = report["results"][0]["calibrated"]
        ok = main["median_pct"] <= TARGET_MEDIAN_PCT and main["p95_pct"] <= TARGET_P95_PCT
        lines.append(f"target (calibrated on batch {report['results'][0]['calibrated_on']}, held out batch "
                     f"{report['results'][0]['judged_on']}): median ≤ {TARGET_MEDIAN_PCT}%, p95 ≤ {TARGET_P95_PCT}%: "
                     f"{'met' if ok else 'NOT met'}")
    lines.append(f"total {report['elapsed_s']:.1f} s")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU mode on tiny-opt (seconds; for the tests)")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="also write the results here (default $OUT)")
    parser.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    cfg = CONFIGS["tiny" if args.tiny else "gpu"]
    if cfg["device"] == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device here: run with --tiny for the CPU mode", file=sys.stderr)
            return 2
    lines = []

    def log(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    import torch

    where = (torch.cuda.get_device_name(0) if cfg["device"] == "cuda" else platform.processor() or platform.machine())
    log(f"bench_calibration_gpu {datetime.date.today()} on {platform.node()} ({where}), torch {torch.__version__}"
        f"{' — CPU mode (--tiny): not an H100 result' if args.tiny else ''}")
    report = run(cfg, log)
    for line in table(report):
        log(line)
    stem = f"calibration-{'cpu-tiny' if args.tiny else 'gpu'}-{datetime.date.today()}"
    folders = [Path(args.results_dir)] + ([Path(args.out)] if args.out else [])
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.txt").write_text("\n".join(lines) + "\n")
        (folder / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    if args.out:
        from advisor.documents import HardwareProfile

        write_document(Path(args.out) / "profiled.json", HardwareProfile.model_validate(report["profile"]))
    print(f"wrote {', '.join(str(f / (stem + '.txt')) for f in folders)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
