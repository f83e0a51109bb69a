"""Where did each decode step's time go? Per step of a measured trace (`advisor execute -o`): the
summed time of each operation kind and each lane's busy time. Used to find that the H100
machine's step-time spikes are PCIe copies running slower while the GPU's kernels keep their
times (bench/results/gpu-noise-2026-11-26.txt).

    python bench/step_breakdown.py measured.json [more.json ...]
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from advisor.documents import Trace, load_document  # noqa: E402
from advisor.opgraph import PREFILL, parse_op_id  # noqa: E402

LANES = ("h2d", "gpu", "d2h")


def breakdown(trace: Trace) -> list[str]:
    by_kind: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    by_lane: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for record in trace.records:
        step, _layer, _batch, kind, _chunk = parse_op_id(record.id)
        if step == PREFILL:
            continue
        by_kind[step][kind] += record.end_s - record.start_s
        by_lane[step][record.lane] += record.end_s - record.start_s
    kinds = sorted({k for step in by_kind.values() for k in step})
    steps = trace.summary.step_times_s
    lines = [f"{'step':>4s} {'ms':>7s} " + " ".join(f"{k[:10]:>10s}" for k in kinds) + "  | busy ms: "
             + " ".join(f"{lane:>6s}" for lane in LANES)]
    for step in sorted(by_kind):
        total = f"{steps[step] * 1e3:7.1f}" if step < len(steps) else f"{'':7s}"
        lines.append(f"{step:4d} {total} " + " ".join(f"{by_kind[step][k] * 1e3:10.1f}" for k in kinds)
                     + "  |          " + " ".join(f"{by_lane[step][lane] * 1e3:6.1f}" for lane in LANES))
    return lines


def main(argv: list[str] | None = None) -> int:
    paths = (argv if argv is not None else sys.argv[1:])
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    for path in paths:
        trace = load_document(Trace, path)
        print(f"== {path}: {trace.device}")
        print("\n".join(breakdown(trace)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
