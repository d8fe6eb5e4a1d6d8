#!/usr/bin/env bash
# Issue 8's GPU figures and the CUDA checks, in one go on a machine with CUDA (no dataset needed:
# synthetic batches through the real loader; `train` uses the embedded fmnist-mini). Writes
# everything under DIR (default ./gpu_figures), each part's log as it goes:
#   env.txt                          GPU, driver, torch, cuDNN
#   targets_*.md                     issue 8's four GPU targets first, for a device budget of minutes:
#                                    all steps eager and captured (fp32), CE compiled next to plain CE
#                                    (bf16, the fastest CE so far), and 4 runs fused into one network
#                                    (the packing ratio); its limits add up to 6 minutes
#   cudatests.txt                    the CUDA tests: captured == eager after 8 steps
#                                    (tests/test_capture.py), the linearised JVP == forward-mode AD
#                                    (tests/test_meta.py), the loader on CUDA (tests/test_data_loader.py)
#   timing_fp32.md / timing_bf16.md  eager and captured ms per iteration, ResNet-32, batch 128
#                                    (targets: CE <= 3 ms, MW-Net <= 20 ms, CurveNet SL=3 <= 10 ms)
#   tuning_*.md                      CE, MW-Net, CurveNet SL=3 without cuDNN's algorithm search, and
#                                    in the contiguous memory format (what the defaults buy)
#   probe_b16.md                     the CE-style step at batch 16 (CurveNet's probe phase)
#   compile_*.md                     CE with the classifier under torch.compile (fused kernels) next to
#                                    plain CE, fp32 and bf16 (what fusion buys against CE <= 3 ms), and
#                                    CE on one fixed batch (what the loader's gather, crop/flip and
#                                    normalisation cost the captured step)
#   compilerun_*.txt                 `bench run --compile` (CE-style steps' forward compiled, checked
#                                    first) against plain, CE, ResNet-32 on synthetic CIFAR-10-shaped
#                                    data, 5 epochs: the store's env (compiled or why not) and minutes
#   deterministic.txt / _fp32.md     `--deterministic`: two CUDA runs each of CE, MW-Net, CurveNet and
#                                    Co-teaching give the same bits (tests/test_deterministic.py), and
#                                    the steps' ms under deterministic kernels (its cost, against timing_fp32.md)
#   pack4.md                         4 processes at once on the GPU vs alone (target: ratio <= 2)
#   pack4_mps.md                     the same under NVIDIA MPS (kernels of the 4 processes overlap)
#   pack4_streams.md                 4 copies in one process in lockstep, one CUDA stream each
#                                    (what lockstep packing of a cell's seeds would gain; no MPS)
#   pack*_fused*.md                  4 runs fused into one network (grouped convolutions; bench/fused.py),
#                                    fp32 and bf16, 8 fused in fp32, 4 probe steps (batch 16) fused, and
#                                    the contiguous (rows layout) variant (no MPS)
#   fuserun_*.txt                    `bench run --fuse 4` against runs alone: CE and MW-Net, 4 seeds,
#                                    ResNet-32 on synthetic CIFAR-10-shaped data, 2 epochs; the tables
#                                    of minutes per run (a fused run's: its group's / 4), so the
#                                    packing target (4 runs' epoch <= 2x one run's) is 4 x fused / alone <= 2
#   train.txt                        the README's main job on CUDA (captured steps), timed
#   suite.txt                        the whole test suite on the CUDA machine (device auto = cuda)
#   benchmarks.txt / benchmarks.json pytest-benchmark, eager/captured x fp32/bf16
# Usage: bash scripts/gpu_figures.sh [DIR] [PART ...]
#   PART: env targets cudatests timing tuning probe compile compilerun deterministic pack packstreams packfused fuserun mps
#         train suite benchmarks
#   (default: all but targets, in that order; on a lent machine with a budget of minutes, run
#   `env targets` first). Each part runs under its own time limit (seconds: $LIMIT_<part>,
#   defaults below), so a hang costs that part alone; on a lent machine that limits one command to
#   10 minutes, split the parts over two commands.
# The interpreter is $PYTHON, else python3 (on the lent machines the one that holds torch).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_figures}
shift || true
all_parts="env targets cudatests timing tuning probe compile compilerun deterministic pack packstreams packfused fuserun mps train suite benchmarks"
parts=${*:-${all_parts/ targets/}}  # targets repeats parts of timing, compile and packfused
for part in $parts; do  # every part known before any runs
  case " $all_parts " in *" $part "*) ;; *) echo "unknown part $part ($all_parts)" >&2; exit 2 ;; esac
done
mkdir -p "$out"
worst=0  # the script's exit status: the worst part's
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device here')" || exit 1

limit() {  # limit PART DEFAULT: the part's time limit
  local var="LIMIT_$1"
  echo "${!var:-$2}"
}
run_part() {  # run_part PART LOG COMMAND...: the command under the part's limit, its output in LOG
  local part=$1 log=$2 seconds
  shift 2
  seconds=$(limit "$part" "$LIMIT")
  local t0=$SECONDS
  local what="$*"
  echo "== $part: ${what:0:300} (limit ${seconds}s)" | tee -a "$out/parts.log"
  timeout -k 10 "$seconds" "$@" > "$log" 2>&1
  local rc=$?
  if [ "$rc" -gt "$worst" ]; then worst=$rc; fi
  echo "== $part: rc $rc in $((SECONDS - t0)) s" | tee -a "$out/parts.log"
  tail -n 25 "$log"
  # on the lent machine, what is done so far comes back even if the whole command is cut short
  # (DIR must not be $OUT itself: the archive would hold itself)
  if [ -n "${OUT:-}" ] && [ "$(realpath "$out")" != "$(realpath "$OUT")" ]; then
    # written aside, then renamed: a kill while writing leaves the last whole archive
    tar czf "$OUT/gpu_figures.tgz.part" -C "$(dirname "$out")" "$(basename "$out")" \
      && mv -f "$OUT/gpu_figures.tgz.part" "$OUT/gpu_figures.tgz"
  fi
}

synth_cifar10() {  # /tmp/synth_cifar10.npz: random pixels in CIFAR-10's shapes (no dataset needed)
  [ -e /tmp/synth_cifar10.npz ] || "$python" -c "import numpy as np; r = np.random.default_rng(0); \
np.savez('/tmp/synth_cifar10.npz', x_train=r.integers(0, 256, (50000, 32, 32, 3), dtype=np.uint8), \
y_train=np.arange(50000) % 10, x_test=r.integers(0, 256, (10000, 32, 32, 3), dtype=np.uint8), \
y_test=np.arange(10000) % 10)"
}

for part in $parts; do
  case $part in
    env)
      LIMIT=30 run_part env "$out/env.txt" bash -c "nvidia-smi; \"$python\" -c 'import torch, sys; \
print(sys.version); print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version()); \
print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))'; nproc" ;;
    targets)  # issue 8's GPU targets, the most wanted figures first (a 15-minute device budget)
      LIMIT=90 run_part targets "$out/targets_timing_fp32.md" "$python" -m bench timing --device cuda
      LIMIT=180 run_part targets "$out/targets_compile_bf16.md" "$python" -m bench timing --device cuda \
          --steps ce,ce_compiled --precision bf16
      LIMIT=90 run_part targets "$out/targets_pack4_fused.md" "$python" -m bench timing --device cuda --pack 4 \
          --pack-mode fused --steps ce,mwnet,curvenet_sl3 ;;
    cudatests)
      LIMIT=360 run_part cudatests "$out/cudatests.txt" "$python" -m pytest -q -p no:cacheprovider \
          tests/test_capture.py tests/test_meta.py tests/test_data_loader.py tests/test_timing.py \
          tests/test_compiled.py -k cuda -rA ;;
    timing)
      LIMIT=90 run_part timing "$out/timing_fp32.md" "$python" -m bench timing --device cuda
      LIMIT=90 run_part timing "$out/timing_bf16.md" "$python" -m bench timing --device cuda --precision bf16 ;;
    tuning)  # without cuDNN's algorithm search, and in the contiguous memory format, on the targets' steps
      for flags in "--no-cudnn-benchmark" "--no-cudnn-benchmark --precision bf16" \
                   "--memory-format contiguous" "--memory-format contiguous --precision bf16"; do
        name=$(echo "$flags" | tr -d ' -')  # since 8faaaf1 cuDNN's search is on unless --no-cudnn-benchmark
        # shellcheck disable=SC2086
        LIMIT=50 run_part tuning "$out/tuning_$name.md" "$python" -m bench timing --device cuda --steps ce,mwnet,curvenet_sl3 $flags
      done ;;
    probe)
      LIMIT=45 run_part probe "$out/probe_b16.md" "$python" -m bench timing --device cuda --batch-size 16 --steps ce ;;
    compile)  # the first call compiles (forward and backward): about a minute
      LIMIT=240 run_part compile "$out/compile_fp32.md" "$python" -m bench timing --device cuda \
          --steps ce,ce_compiled,ce_fixed_batch
      LIMIT=240 run_part compile "$out/compile_bf16.md" "$python" -m bench timing --device cuda \
          --steps ce,ce_compiled,ce_fixed_batch --precision bf16 ;;
    compilerun)  # real CE runs with and without --compile (the first compiles take about a minute)
      synth_cifar10
      for flag in plain --compile; do
        LIMIT=300 run_part compilerun "$out/compilerun_${flag#--}.txt" bash -c "\"$python\" -m bench run \
--device cuda --dataset npz:/tmp/synth_cifar10.npz --model resnet32 --imbalance 1 --noise none --methods ce --epochs 5 \
${flag/plain/} --quiet --store /tmp/compile_${flag#--}.sqlite --cache-dir /tmp/compile_cache_${flag#--} && \
\"$python\" -m bench table --store /tmp/compile_${flag#--}.sqlite --metric minutes && \
\"$python\" -c \"import sqlite3; print([r[0] for r in sqlite3.connect('/tmp/compile_${flag#--}.sqlite').execute(\
'select env_json from runs')])\""
      done ;;
    deterministic)  # the same bits twice on CUDA, and what deterministic kernels cost
      LIMIT=300 run_part deterministic "$out/deterministic.txt" "$python" -m pytest -q -p no:cacheprovider \
          tests/test_deterministic.py -rA
      LIMIT=60 run_part deterministic "$out/deterministic_fp32.md" "$python" -m bench timing --device cuda \
          --steps ce,mwnet,curvenet_sl3 --deterministic ;;
    pack)
      LIMIT=120 run_part pack "$out/pack4.md" "$python" -m bench timing --device cuda --pack 4 --steps ce,mwnet,curvenet_sl3 ;;
    packstreams)
      LIMIT=90 run_part packstreams "$out/pack4_streams.md" "$python" -m bench timing --device cuda --pack 4 \
          --pack-mode streams --steps ce,mwnet,curvenet_sl3 ;;
    packfused)
      LIMIT=90 run_part packfused "$out/pack4_fused.md" "$python" -m bench timing --device cuda --pack 4 \
          --pack-mode fused --steps ce,mwnet,curvenet_sl3
      LIMIT=90 run_part packfused "$out/pack4_fused_bf16.md" "$python" -m bench timing --device cuda --pack 4 \
          --pack-mode fused --steps ce,mwnet,curvenet_sl3 --precision bf16
      LIMIT=90 run_part packfused "$out/pack8_fused.md" "$python" -m bench timing --device cuda --pack 8 \
          --pack-mode fused --steps ce,mwnet,curvenet_sl3
      LIMIT=60 run_part packfused "$out/pack4_fused_probe_b16.md" "$python" -m bench timing --device cuda --pack 4 \
          --pack-mode fused --steps ce --batch-size 16
      LIMIT=90 run_part packfused "$out/pack4_fused_contiguous.md" "$python" -m bench timing --device cuda --pack 4 \
          --pack-mode fused --steps ce,mwnet,curvenet_sl3 --memory-format contiguous ;;
    fuserun)  # real runs: 4 seeds fused into one network vs one at a time (the data: random pixels, CIFAR's shapes)
      synth_cifar10
      for fuse in 1 4; do
        LIMIT=240 run_part fuserun "$out/fuserun_$fuse.txt" bash -c "\"$python\" -m bench run --device cuda \
--dataset npz:/tmp/synth_cifar10.npz --model resnet32 --imbalance 1 --noise none --meta-per-class 100 \
--methods ce,mwnet --seeds 0,1,2,3 \
--epochs 2 --fuse $fuse --quiet --store /tmp/fuse$fuse.sqlite --cache-dir /tmp/fuse_cache$fuse && \
\"$python\" -m bench table --store /tmp/fuse$fuse.sqlite --metric minutes"
      done ;;
    mps)
      # MPS lets the kernels of several processes run on the GPU at once (without it they take turns)
      export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
      mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
      already=$([ -e "$CUDA_MPS_PIPE_DIRECTORY/control" ] && echo yes)  # a daemon of our own is stopped after
      if [ -n "$already" ] || nvidia-cuda-mps-control -d; then
        LIMIT=90 run_part mps "$out/pack4_mps.md" "$python" -m bench timing --device cuda --pack 4 --steps ce,mwnet,curvenet_sl3
        if [ -z "$already" ]; then echo quit | nvidia-cuda-mps-control; fi
      else
        echo "== mps: nvidia-cuda-mps-control -d failed" | tee -a "$out/parts.log"
      fi
      unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY ;;
    train)
      LIMIT=120 run_part train "$out/train.txt" bash -c "time \"$python\" -m bench run --methods curvenet,mwnet \
--device cuda --store /tmp/train.sqlite --cache-dir /tmp/train_cache" ;;
    suite)
      # 14 pytest-xdist workers of one thread each (16 threads each oversubscribe the cores 12-fold
      # and push long tests past --timeout); $SUITE_IDS: a file of test ids to run instead of all
      ids=()
      if [ -n "${SUITE_IDS:-}" ]; then mapfile -t ids < "$SUITE_IDS"; fi
      OMP_NUM_THREADS=1 LIMIT=180 run_part suite "$out/suite.txt" "$python" -m pytest -v --tb=short -rfE \
          -p no:cacheprovider --ignore=tests/benchmarks --timeout 300 -n 14 ${ids[@]+"${ids[@]}"} ;;
    benchmarks)
      LIMIT=150 run_part benchmarks "$out/benchmarks.txt" "$python" -m pytest -q -p no:cacheprovider tests/benchmarks \
          -k cuda --benchmark-enable --benchmark-only --benchmark-json "$out/benchmarks.json" ;;
  esac
done
exit "$worst"
