"""Check: `advisor plan --batch best` against brute force, on workloads too slow for the test suite.

For each workload, every batch from 1 to the largest that fits is planned (the brute force), and
the search of `advisor.planner_cli.best_batch_plan` is run; the table gives both answers, the ratio
of their decode tokens/s (1.0000: the search found the best) and both wall times. Run:
`python bench/best_batch_check.py` (about 35 s on a 2-core VM); results go to
bench/results/best-batch-<date>.txt.
"""

from __future__ import annotations

import datetime
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from advisor.catalog import load_hardware, load_model  # noqa: E402
from advisor.errors import UserError  # noqa: E402
from advisor.planner_cli import best_batch_plan, with_largest_batch  # noqa: E402
from advisor.scheduler import Request, plan  # noqa: E402

# (model, hardware, prompt, new tokens, schedule, other request fields)
WORKLOADS = [
    ("opt-2.7b", "l4-pcie4", 2000, 8, "row", {}),
    ("llama-2-7b", "rtx4090-pcie4", 1500, 8, "column", {}),
    ("llama-3-8b", "t4-pcie3", 1024, 8, "column", {}),
    ("opt-30b", "a100-40gb-pcie4", 1024, 16, "column", {}),
    ("llama-2-13b", "l4-pcie4", 1024, 8, "column", {"weights_on_gpu": 0.25}),
    ("opt-66b", "a100-80gb-pcie4", 1024, 8, "row", {}),
    ("opt-13b", "rtx4090-pcie4", 1024, 8, "column", {"gpu_kv_budget_bytes": 0}),
    ("opt-350m", "cpu-generic", 512, 8, "row", {}),
]


def quiet(line: str) -> None:
    pass


def main() -> int:
    lines = [f"best_batch_check {datetime.date.today()} on {platform.node()} ({platform.machine()}): "
             "brute force (every batch up to the largest that fits) against the search of --batch best",
             f"{'workload':58s} {'top':>5s} {'brute':>6s} {'search':>6s} {'ratio':>7s} {'brute s':>8s} {'search s':>8s}"]
    print(lines[0], flush=True)
    print(lines[1], flush=True)
    misses = 0
    for model_name, hardware_name, prompt, gen, schedule, extra in WORKLOADS:
        model, hw = load_model(model_name), load_hardware(hardware_name)
        base = Request(model, hw, 1, prompt, gen, schedule=schedule, **extra)
        began = time.perf_counter()
        request = with_largest_batch(base, "check", quiet)
        found = best_batch_plan(request, quiet)
        search_s = time.perf_counter() - began
        began = time.perf_counter()
        throughput = {}
        for batch in range(1, request.batch + 1):
            try:
                throughput[batch] = plan(Request(model, hw, batch, prompt, gen, schedule=schedule, **extra)
                                         ).predicted.decode_tokens_per_s
            except UserError:
                pass
        brute_s = time.perf_counter() - began
        brute = max(throughput, key=throughput.get)
        ratio = found.predicted.decode_tokens_per_s / throughput[brute]
        misses += ratio < 1 - 1e-9
        name = f"{model_name} on {hardware_name}, prompt {prompt}, gen {gen}, {schedule}" + \
            "".join(f", {k}={v}" for k, v in extra.items())
        lines.append(f"{name:58s} {request.batch:5d} {brute:6d} {found.workload.batch:6d} {ratio:7.4f} "
                     f"{brute_s:8.1f} {search_s:8.1f}")
        print(lines[-1], flush=True)
    lines.append(f"{len(WORKLOADS) - misses} of {len(WORKLOADS)} workloads: the search found the brute-force best")
    print(lines[-1])
    out = Path(__file__).resolve().parent / "results" / f"best-batch-{datetime.date.today()}.txt"
    out.write_text("\n".join(lines) + "\n")
    return 0 if misses == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
