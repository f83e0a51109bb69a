#!/usr/bin/env bash
# Where do the step-time spikes seen on the H100 come from? (one run of the calibration
# benchmark, 2026-11-26: 1 step in 6 was 10-45% slower than its neighbours). Executes two of that
# benchmark's plans (OPT-6.7B, batch 16, prompt 1024, 2 chunks, 16 decode steps) with full
# per-operation traces, once more with Python's garbage collector off, then gpu_check's cases 3
# and 4 (the timing-overhead figures). Results under $OUT (8 files at most).
set -u
OUT=${OUT:-/tmp/gpu-noise}
mkdir -p "$OUT"
exec > >(tee "$OUT/noise.log") 2>&1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,clocks_throttle_reasons.active --format=csv
work=$(mktemp -d)
for split in 256 717; do
  python3 -m advisor plan --model opt-6.7b --hardware h100-pcie5 --batch 16 --prompt-len 1024 --gen-len 17 \
      --split $split --chunks 2 --gpu-kv-budget 0 -o $work/plan-$split.json > /dev/null
  timeout 60 python3 -m advisor execute $work/plan-$split.json -o "$OUT/noise-$split.json" --device cuda
done
timeout 60 python3 -c "
import gc, runpy, sys
gc.disable()
sys.argv = ['advisor', 'execute', '$work/plan-256.json', '-o', '$OUT/noise-256-nogc.json', '--device', 'cuda']
runpy.run_module('advisor', run_name='__main__', alter_sys=True)
"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,clocks_throttle_reasons.active --format=csv
timeout 150 python3 bench/gpu_check.py --out "$OUT" --cases 3,4 --budget-s 120
