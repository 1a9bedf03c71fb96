#!/usr/bin/env bash
# The checks that need a CUDA GPU, prepared as one call of a lent GPU machine (the device tool):
# tests/test_cuda.py (the CUDA-graph-compiled update against the CPU's, checkpoints across devices),
# then benchmarks/throughput.py's updates and stacked seeds on the GPU (its compute bound, compiled
# and eager QSM, SAC, TD3). Logs and the JSON land in $OUT (on the device machine, what comes back).
#
#   bash benchmarks/gpu_check.sh wheels     # here, once: what the GPU image lacks, as wheels in .whl/
#   bash benchmarks/gpu_check.sh            # there: run(command="bash benchmarks/gpu_check.sh",
#                                           #             carry=[".whl"], timeout_s=570)
#
# The GPU image has Python 3.12 with torch, numpy, pytest, tqdm and imageio, but not gymnasium,
# mujoco or dm_control; dm_control's wheel (56 MB) alone would fill most of the 64 MiB a call
# carries. So only gymnasium travels, and nothing here runs a simulator: test_cuda trains on a
# bandit, and throughput's loop, memory and multiseed-loop parts (dmc/cheetah-run) are skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=(gymnasium farama-notifications)

if [[ ${1:-} == wheels ]]; then
    # The versions this checkout's .venv tests with, built for the GPU machine's Python.
    [[ -x .venv/bin/python ]] || { echo "gpu_check wheels: needs this checkout's .venv: run make install first"; exit 1; }
    versions=$(.venv/bin/python -c 'import importlib.metadata as m, sys; print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' "${WHEELS[@]}") || exit 1
    rm -rf .whl
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "${GPU_PYTHON:-3.12}" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $versions || exit 1
    du -sh .whl
    exit 0
fi

OUT=${OUT:-_build/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site .whl/*.whl ||
        { echo "gpu_check: installing .whl/ failed; make the wheels with: bash benchmarks/gpu_check.sh wheels"; exit 1; }
    export PYTHONPATH="/tmp/gpu_check_site:$PYTHONPATH"
fi
$PY -c 'import sys, torch; torch.cuda.is_available() or sys.exit("gpu_check: torch sees no CUDA GPU here; run this on the GPU machine"); print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name())' 2>&1 |
    tee "$OUT/machine.txt" || exit 1

failed=()
timeout 200 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log" || failed+=(test_cuda)
timeout 330 $PY benchmarks/throughput.py --device cuda --quick --skip loop,memory,multiseed-loop --out "$OUT/throughput_cuda.json" 2>&1 |
    tee "$OUT/throughput_cuda.log" || failed+=(throughput)
if ((${#failed[@]})); then
    echo "gpu_check: FAILED: ${failed[*]} (logs in $OUT)"
    exit 1
fi
echo "gpu_check: passed (logs and throughput_cuda.json in $OUT)"
