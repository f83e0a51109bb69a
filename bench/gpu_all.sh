#!/usr/bin/env bash
# All of the GPU work of the backend and calibration issues in one command (the device machine is
# lent for minutes; each part has its own time limit so that the others still report):
#
#   1. smoke: `advisor plan` → `advisor execute --device cuda --calibrate` → `advisor compare` on
#      tiny-opt, the command-line path a user takes (seconds);
#   2. bench/bench_calibration_gpu.py: profile, sweep at two batch sizes, calibrate on one, judge
#      the other (issue: close the loop);
#   3. bench/gpu_check.py: cases 1-4 and 2b (issue: backend); it writes its report after every case
#      and on SIGTERM;
#   4. the full (not --quick) `advisor profile` of the card, timed (target ≤ 60 s), last so that it
#      only uses time the others left.
#
# Run on the H100 machine from the repository root, after the prelude of ../shared/gpu/prelude.txt:
#   bash bench/gpu_all.sh            (results under $OUT, at most 8 files: the device tool's limit)
set -u
OUT=${OUT:-/tmp/gpu-all}
mkdir -p "$OUT"
exec > >(tee "$OUT/session.log") 2>&1
echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
free -g | head -2

echo "== 1. smoke: plan, execute --device cuda --calibrate, compare (tiny-opt)"
work=$(mktemp -d)
timeout 60 bash -c "
  set -e
  python3 -m advisor plan --model tiny-opt --hardware h100-pcie5 --batch 4 --prompt-len 64 --gen-len 9 \
      --split 32 --gpu-kv-budget 0 -o $work/plan.json
  python3 -m advisor execute $work/plan.json -o $work/measured.json --device cuda --calibrate $work/calibrated.json
  python3 -m advisor compare $work/plan.json $work/measured.json
" || echo "smoke FAILED (rc $?)"

echo "== 2. calibration benchmark"
timeout 170 python3 bench/bench_calibration_gpu.py --out "$OUT" || echo "calibration benchmark FAILED (rc $?)"

echo "== 3. gpu_check"
timeout 300 python3 bench/gpu_check.py --out "$OUT" --budget-s 220 || echo "gpu_check FAILED (rc $?)"

echo "== 4. full profile"
left=$((580 - SECONDS))  # the device tool stops a command at 600 s: keep within it whatever came before
if [ "$left" -lt 30 ]; then echo "full profile skipped: only ${left} s left of the call's 600"; left=0; fi
began=$(date +%s.%N)
[ "$left" -gt 0 ] && { timeout $((left < 120 ? left : 120)) python3 -m advisor profile --device cuda -o "$OUT/profiled-full.json" \
    || echo "full profile FAILED or cut short (rc $?)"; }
echo "full profile took $(python3 -c "print(f'{$(date +%s.%N) - $began:.1f}')") s (command included)"
echo "== done $(date -u +%FT%TZ)"
