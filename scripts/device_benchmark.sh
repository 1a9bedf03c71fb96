#!/usr/bin/env bash
# benchmarks/throughput.py on a lent GPU machine (the session tool `device`). That machine's python3
# (3.12) has torch, numpy, matplotlib and tqdm but no simulator, and it cannot download anything, so
# the simulators travel as wheels in .whl/ (ignored by git; `carry` takes them along).
#
#   here, once:  bash scripts/device_benchmark.sh prepare      # about 38 MB of wheels into .whl/
#   there:       run(command="bash scripts/device_benchmark.sh run", carry=[".whl"], timeout_s=600)
#                -> $OUT/throughput_cuda.json and $OUT/throughput_cuda.log come back
#
# The whole working tree travels too (64 MiB in all), so dm_control's wheel is trimmed of assets the
# suite's cheetah never loads (the locomotion walkers and soccer, the dog's meshes, its tests).
# `prepare` takes the versions of .venv (make install) and PYVER (default 3.12, the device's Python).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
SIMULATORS='mujoco|dm[-_]control|dm[-_]env|dm[-_]tree|labmaze|glfw|pyopengl|gymnasium|farama[-_]notifications|shimmy'

prepare() {
    local pyver=${PYVER:-3.12} platforms=() n
    for n in 17 24 27 28; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
    mkdir -p "$WHEELS"
    [[ $WHEELS = /* ]] || grep -qx "/$WHEELS/" .git/info/exclude 2>/dev/null || echo "/$WHEELS/" >>.git/info/exclude
    # shellcheck disable=SC2046  # one argument per pinned requirement
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
        "${platforms[@]}" --platform manylinux2014_x86_64 -d "$WHEELS" \
        $(.venv/bin/python -m pip freeze | grep -iE "^($SIMULATORS)==")
    trim_dm_control "$WHEELS"/dm_control-*.whl
    du -ch "$WHEELS"/*.whl | tail -1
}

trim_dm_control() {  # in place; pip installs a wheel without checking that RECORD lists every file
    python3 - "$1" <<'EOF'
import sys, zipfile, shutil
path, unused = sys.argv[1], ("dm_control/locomotion/soccer/", "dm_control/locomotion/walkers/assets/",
                             "dm_control/suite/dog_assets/", "dm_control/mujoco/testing/", "dm_control/blender/")
with zipfile.ZipFile(path) as src, zipfile.ZipFile(path + ".tmp", "w", zipfile.ZIP_DEFLATED) as dst:
    for item in src.infolist():
        if not item.filename.startswith(unused):
            dst.writestr(item, src.read(item))
shutil.move(path + ".tmp", path)
EOF
}

run() {  # extra arguments go to throughput.py; DEVICE=cpu tries this step on a machine without a GPU
    python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/site MUJOCO_GL=egl PYTHONUNBUFFERED=1
    local out=${OUT:-benchmarks/results}
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    local name=throughput_${DEVICE:-cuda}
    python3 benchmarks/throughput.py --device "${DEVICE:-cuda}" --skip memory --out "$out/$name.json" "$@" 2>&1 |
        tee "$out/$name.log"
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    *) echo "usage: $0 prepare|run  (prepare here, run on the device machine; see the top of this file)" >&2; exit 2 ;;
esac
