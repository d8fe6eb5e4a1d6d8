#!/usr/bin/env bash
# Issue 8's GPU figures in one go, on a machine with CUDA (no dataset needed: synthetic batches
# through the real loader). Writes everything under DIR (default ./gpu_figures):
#   timing_fp32.md / timing_bf16.md  eager and captured ms per iteration, ResNet-32, batch 128
#                                    (targets: CE <= 3 ms, MW-Net <= 20 ms, CurveNet SL=3 <= 10 ms)
#   probe_b16.md                     the CE-style step at batch 16 (CurveNet's probe phase)
#   pack4.md                         4 processes at once on the GPU vs alone (target: ratio <= 2)
#   equivalence.txt                  captured == eager after 8 steps (tests/test_capture.py); the
#                                    linearised JVP == forward-mode AD on CUDA (tests/test_meta.py)
#   benchmarks.txt / benchmarks.json pytest-benchmark, eager/captured x fp32/bf16
# Usage: bash scripts/gpu_figures.sh [DIR] [PART ...]
#   PART: timing, probe, pack, equivalence, benchmarks (default: all, in that order). Each part
#   is a separate command on a lent GPU machine that limits one command to 10 minutes, e.g.
#   `bash scripts/gpu_figures.sh out equivalence timing` then `... out probe pack benchmarks`.
# The interpreter is $PYTHON, else python3 (on the lent machines the one that holds torch).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_figures}
shift || true
parts=${*:-timing probe pack equivalence benchmarks}
mkdir -p "$out"
python=${PYTHON:-python3}
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device here')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" || true
for part in $parts; do
  case $part in
    timing)
      "$python" -m bench timing --device cuda > "$out/timing_fp32.md"
      "$python" -m bench timing --device cuda --precision bf16 > "$out/timing_bf16.md" ;;
    probe) "$python" -m bench timing --device cuda --batch-size 16 --steps ce > "$out/probe_b16.md" ;;
    pack) "$python" -m bench timing --device cuda --pack 4 --steps ce,mwnet,curvenet_sl3 > "$out/pack4.md" ;;
    equivalence)
      "$python" -m pytest -q -p no:cacheprovider tests/test_capture.py tests/test_meta.py -k cuda \
          > "$out/equivalence.txt" 2>&1 || true ;;
    benchmarks)
      "$python" -m pytest -q -p no:cacheprovider tests/benchmarks -k cuda --benchmark-enable --benchmark-only \
          --benchmark-json "$out/benchmarks.json" > "$out/benchmarks.txt" 2>&1 || true ;;
    *) echo "unknown part $part (timing, probe, pack, equivalence, benchmarks)" >&2; exit 2 ;;
  esac
done
tail -n 3 "$out"/*.md "$out"/*.txt 2>/dev/null || true
