#!/usr/bin/env bash
# The GPU checks of one device session, as one script: CUDA correctness tests, the training and inference
# benchmarks on CUDA, and the shipped recipe's training run timed on the GPU.
#
#   bash benchmarks/gpu_checks.sh OUT_DIR DATA_DIR
#
# DATA_DIR holds brats/<case>/<case>_{flair,t1,t1ce,t2}.nii.gz (one case is enough: the first is used).
# Needs python3 with a CUDA PyTorch and this project's dependencies (SimpleITK, scipy, tqdm, pillow; pytest).
# Writes logs to OUT_DIR and the GPU sections of docs/BENCHMARKS.md (train-cuda, inference-cuda) into the
# working tree's copy, which is also copied to OUT_DIR. Each step runs under its own time limit and a
# failing step does not stop the next: the exit status is the number of failed steps. GPU_CHECKS (default
# "pytest bench_train bench_inference recipe"; also "workers") selects the steps, e.g. to rerun some within a device budget.
#
# On this workplace's device machine (no registry; SimpleITK is not installed there; 64 MiB travel per call, the
# working tree ~30 MB of it), as run on 2026-12-04: download the SimpleITK wheel here (`pip download --no-deps
# --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d /tmp/whl SimpleITK==2.5.3`, 52.6 MB),
# `split -b 30000000` it into two git-ignored folders (part 0 in one, part 1 with its name and sha256 in the other),
# copy one case into device_data/brats/ (git-ignored, ~10 MB), then two calls back to back (the machine stays warm
# 30 s): the first carries part 0 and copies it to /root/keep; the second carries part 1 and device_data, joins
# and checks the wheel, `pip install --no-index --no-deps --target /tmp/site`, exports PYTHONPATH=/tmp/site and
# runs this script with OUT_DIR=$OUT. The device tool brings back at most 8 files: keep OUT_DIR small.
set -u
out=${1:?OUT_DIR}; data=${2:?DATA_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/CGCLesionSeg:${PYTHONPATH:-}"
failed=0
checks=" ${GPU_CHECKS:-pytest bench_train bench_inference recipe} "
want() { [[ $checks == *" $1 "* ]]; }
step() {  # step NAME SECONDS CMD...: run CMD with a limit, log to OUT_DIR/NAME.log, report its time
    local name=$1 limit=$2; shift 2
    local t0=$(date +%s)
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "$name: rc $rc, $(( $(date +%s) - t0 )) s" | tee -a "$out/steps.txt"
    [ $rc -eq 0 ] || failed=$((failed + 1))
}

{ nvidia-smi -L; python3 -c "import torch, SimpleITK, numpy, scipy; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, torch.cuda.get_device_name(0)); print('SimpleITK', SimpleITK.Version_VersionString())"; \
nproc; } >"$out/machine.txt" 2>&1

want pytest && step pytest_gpu 200 python3 -m pytest -q -p no:cacheprovider -rs Testing/unit/test_gpu.py
want bench_train && step bench_train 100 python3 benchmarks/bench_train.py --device cuda --repeats 5
want bench_inference && step bench_inference 120 python3 benchmarks/bench_inference.py --device cuda --data "$data" --repeats 5

# The shipped recipe (both rounds, the four-channel model's pseudo-rule) on one case, timed on the GPU.
if want recipe; then
case_dir=$(ls -d "$data"/brats/*/ | head -1)
mkdir -p /tmp/gpu_recipe_cases && ln -sfn "$(cd "$case_dir" && pwd)" /tmp/gpu_recipe_cases/
step recipe_train 180 python3 -m CGCTraining --cases /tmp/gpu_recipe_cases --modalities flair t1 t1ce t2 \
    --recipe shipped --pseudo-rule default-output --device cuda --workers 4 --output-dir /tmp/gpu_recipe_run \
    --progress none
# the device tool brings back at most 8 files: the recipe run's logs travel as one archive
(cd /tmp/gpu_recipe_run 2>/dev/null && find . \( -name "*.csv" -o -name "*.json" \) -print0 | \
    tar czf "$out/recipe_logs.tgz" --null -T -)
fi
# DataLoader workers against steps/s: round 1 of the shipped recipe, 150 steps, on the same case.
if want workers; then
case_dir=$(ls -d "$data"/brats/*/ | head -1)
mkdir -p /tmp/gpu_recipe_cases && ln -sfn "$(cd "$case_dir" && pwd)" /tmp/gpu_recipe_cases/
for w in ${GPU_WORKERS:-1 4 8 12}; do
    step "workers_$w" 120 python3 -m CGCTraining --cases /tmp/gpu_recipe_cases --modalities flair t1 t1ce t2 \
        --recipe shipped --self-train-rounds 0 --steps 150 --device cuda --workers "$w" \
        --output-dir "/tmp/gpu_workers_$w" --progress none
    python3 - "$w" "/tmp/gpu_workers_$w/loss_log.csv" >>"$out/workers.txt" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[2])))
a, b = rows[9], rows[-1]  # from step 10: the workers' start-up is not a step rate
print(f"workers {sys.argv[1]}: {(int(b['step']) - int(a['step'])) / (float(b['seconds']) - float(a['seconds'])):.2f} "
      f"steps/s (steps {a['step']}-{b['step']}), first step at {float(rows[0]['seconds']):.1f} s")
PY
done
cat "$out/workers.txt" >>"$out/steps.txt"
fi
cp docs/BENCHMARKS.md "$out/BENCHMARKS.md"
echo "failed steps: $failed" | tee -a "$out/steps.txt"
exit $failed
