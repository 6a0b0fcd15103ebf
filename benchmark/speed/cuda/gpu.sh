#!/usr/bin/env bash
# OffPAC's GPU measurements in one run, under 10 minutes on an H100: the CUDA tests, then the CUDA speed tables
# (gradient steps/s of train(64) at batch 256 and 1024; env steps/s of learn() on HalfCheetah-v5 with the zoo's
# SAC settings), each of OffPAC (captured), OffPAC (eager), SB3's SAC and SBX's SAC side by side.
#
#   bash benchmark/speed/cuda/gpu.sh wheels    # on a machine with the package registries: the packages a GPU
#                                              # machine with torch and JAX lacks, as wheels in .whl/
#   bash benchmark/speed/cuda/gpu.sh run OUT   # on the GPU machine, from the repository's root (.whl/ beside it):
#                                              # OUT/tests.txt, OUT/compare.md, OUT/compare.json
#
# The reports go to benchmark/speed/cuda/ when committed. The pins are the versions the CPU runs used.
set -uo pipefail
cd "$(dirname "$0")/../../.."

PACKAGES=(
    stable-baselines3==2.9.2 sb3-contrib==2.9.2 gymnasium==1.4.0 farama-notifications==0.0.6 rl-zoo3==2.9.2
    sb3-team-hf-integration==3.2 wasabi==1.1.3 shimmy==2.0.1 optuna==5.1.0 alembic==1.20.1 mako==1.4.3 sqlalchemy==2.1.9
    colorlog==6.12.0 pytablewriter==1.2.1 dataproperty==1.1.1 mbstrdecoder==1.1.5 pathvalidate==3.3.1 tabledata==1.3.5
    tcolorpy==0.1.7 typepy==1.3.5 chardet==6.0.0.post1 sbx-rl==0.28.0 tfp-nightly==0.26.0.dev20261027 gast==0.7.0
    dm-tree==0.1.10 decorator==5.3.2 mujoco==4.0.1 mujoco-core==4.0.1 glfw==2.11.0 pyopengl==3.1.10
)

case "${1:-}" in
wheels)
    mkdir -p .whl
    for package in "${PACKAGES[@]}"; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$package" || exit 1
    done
    du -sh .whl
    ;;
run)
    out="${2:?the output folder}"
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 MUJOCO_GL=egl
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/tests.txt"
    python3 -c "import torch, jax; print('torch', torch.__version__, 'jax', jax.__version__, jax.devices())" | tee -a "$out/tests.txt"
    # the CUDA tests of OffPAC (captured and eager updates) and of the speed suite
    timeout 240 python3 -m pytest -q -p no:cacheprovider -x tests/test_offpac.py -k "cuda" 2>&1 | tee -a "$out/tests.txt"
    timeout 330 python3 -m sb3_pgext.suite.compare --device cuda --cases sac-updates halfcheetah-sac --repeats 5 \
        --steps 1000 --out "$out" 2>&1 | tail -n 40
    ;;
*)
    echo "usage: $0 wheels | run OUT" >&2
    exit 2
    ;;
esac
