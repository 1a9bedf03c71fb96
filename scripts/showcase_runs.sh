#!/usr/bin/env bash
# The control showcase's long runs (issue 16): dmc/cartpole-swingup, 100k env steps, the evaluation protocol
# of benchmarks/learning.py (10 episodes every 2,500 steps), one torch thread each, checkpoints every 5,000
# steps. Each run resumes if its directory holds a checkpoint and is skipped when complete, so rerunning this
# script after any interruption continues where it stopped.
#
#   bash scripts/showcase_runs.sh RUNS_ROOT [JOBS]      # JOBS runs at a time (default 1)
#   bash scripts/showcase_runs.sh --print RUNS_ROOT     # only print the commands
#
# Then: python benchmarks/learning.py --env dmc/cartpole-swingup --algos qsm,qsm-paper,sac,td3 --seeds 0,1 \
#         --runs-root RUNS_ROOT --report-only --threshold 750 --eval-every 2500 --eval-episodes 10
#       python scripts/figure4.py --runs-root RUNS_ROOT
set -euo pipefail
print=0; [ "${1:-}" = --print ] && { print=1; shift; }
root=${1:?usage: showcase_runs.sh [--print] RUNS_ROOT [JOBS]}; jobs=${2:-1}
python=${PYTHON:-python}
commands=()
for spec in "qsm 0" "qsm 1" "sac 0" "sac 1" "td3 0" "qsm-paper 0"; do
  set -- $spec; label=$1; seed=$2; algo=${label%-paper}
  extra=(); [ "$label" = qsm-paper ] && extra=(--preset paper)
  dir="$root/dmc/cartpole-swingup/$label/seed$seed"
  if [ -f "$dir/checkpoint.pt" ] && grep -q '^100000,eval' "$dir/metrics.csv" 2>/dev/null; then continue; fi  # complete
  resume=(); [ -f "$dir/checkpoint.pt" ] && resume=(--resume)
  commands+=("$python -m qsm_tutorial --algo $algo --env dmc/cartpole-swingup --seed $seed --total-steps 100000 \
--run-dir $dir --eval-every 2500 --eval-episodes 10 --checkpoint-every 5000 --threads 1 --no-progress ${extra[*]} ${resume[*]}")
done
if [ $print = 1 ]; then printf '%s\n' "${commands[@]}"; exit 0; fi
export MUJOCO_GL=${MUJOCO_GL:-egl} OMP_NUM_THREADS=1
printf '%s\n' "${commands[@]}" | xargs -P "$jobs" -I{} sh -c '{}'
