#!/bin/bash
# Every GPU figure the GPU-speed work needs, in one device call (at most 9 minutes of parts on one GPU).
#
# On the CPU machine, once:   bash ../shared/gpu/wheels.sh && bash bench/gpu_rows.sh --prepare
#   (bench/_gpu/ntu: the ntu-like videos gpu_check reads; PyAV, which writes them, is not on the GPU machine)
# Then one `run` with carry [".whl", "bench/_gpu"] and the command:   bash bench/gpu_rows.sh
# (or name the parts to run, e.g. `bash bench/gpu_rows.sh gpu_check search_step`, to split it in two calls).
#
# Each part runs under its own time limit and writes its whole output to $OUT/<part>.txt:
#   gpu_check        every CUDA path, PASS / FAIL / SKIP per check (bench/gpu_check.py)
#   search_step      the NTU search step eager, naive, compiled, compiled with CUDA graphs; operators per step
#   backbone_speed   each video backbone per precision and layout; extraction against the forward bound
#   search_scale     one NTU-sized search epoch on the GPU, projected to the whole search
set -u
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
  rm -rf bench/_gpu/ntu && .venv/bin/bmnas data synth ntu-like bench/_gpu/ntu --samples 16 --classes 4 --seed 3
  exit
fi
python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation . || echo "bmnas not installed: torchrun_two_gpus will fail"
out=${OUT:-bench/_gpu/out}
mkdir -p "$out"
export BMNAS_GPU_NTU="$PWD/bench/_gpu/ntu" PYTHONPATH="$PWD"
parts=" $* "
part() {
  local name=$1 limit=$2
  shift 2
  if [ "$parts" != "  " ] && [[ "$parts" != *" $name "* ]]; then return; fi
  echo "== $name (at most ${limit}s)"
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1
  echo "exit $?" >> "$out/$name.txt"
  grep -v "^USDT\|Warning\|warn(" "$out/$name.txt" | tail -30
}
part gpu_check 180 python3 bench/gpu_check.py
part search_step 150 python3 bench/search_step.py --device cuda --compile --cudagraphs --ops --steps 20
part backbone_speed 90 python3 bench/backbone_speed.py --device cuda --extract 256
part search_scale 120 python3 bench/search_scale.py --device cuda
