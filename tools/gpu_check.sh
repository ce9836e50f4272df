#!/usr/bin/env bash
# Run the project's distributed tests on a machine with (at least) 2 NVIDIA GPUs,
# on NCCL and CUDA instead of gloo and the CPU. Nothing else changes: the same
# worlds of 2 processes (rank r on cuda:r), the same single-process references,
# with the tolerances the tests state for CUDA kernels.
#
#   bash tools/gpu_check.sh                 # every distributed test file, then the
#                                           # DeepSpeed examples under their launchers
#   bash tools/gpu_check.sh tests/test_deepspeed.py   # only those named
#
# It uses the Python on PATH (or $PYTHON), which must have a CUDA build of
# torch and the project with its test extras, for instance:
#
#   python -m venv .venv-gpu && . .venv-gpu/bin/activate
#   pip install torch                      # a CUDA build, from the index your CUDA needs
#   pip install -e '.[test,deepspeed]'
#
# Exit status: pytest's (or the first failing example's); 2 when the machine
# has fewer than 2 GPUs.
set -euo pipefail

cd "$(dirname "$0")/.."
python=${PYTHON:-python}

gpus=$("$python" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
if [ "$gpus" -lt 2 ]; then
    echo "gpu_check: this machine has $gpus usable CUDA GPU(s); the worlds need 2" >&2
    exit 2
fi

"$python" - <<'PYTHON'
import importlib.util
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}")
for index in range(torch.cuda.device_count()):
    print(f"  cuda:{index} {torch.cuda.get_device_name(index)}")
for name in ("deepspeed", "lightning", "transformers", "accelerate"):
    if importlib.util.find_spec(name) is None:
        print(f"  {name}: not installed (its tests skip)")
    else:
        module = __import__(name)
        print(f"  {name} {getattr(module, '__version__', '?')}")
PYTHON

if [ "$#" -gt 0 ]; then
    files=("$@")
else
    # The worlds: DeepSpeed in a loop of its own; DDP and FSDP2 in a loop of your own;
    # the transformers Trainer (DDP, FSDP2, DeepSpeed ZeRO 2 and 3); Lightning (DDP,
    # FSDP2, DeepSpeedStrategy ZeRO 2 and 3) and the adapters' one-process tests.
    files=(
        tests/test_deepspeed.py
        tests/test_distributed.py
        tests/test_curriculum_sharded.py
        tests/test_trainer_distributed.py
    )
    for file in tests/test_integration_*.py; do
        files+=("$file")
    done
fi

started=$SECONDS
status=0
# DeepSpeed picks its CUDA accelerator by itself; a DS_ACCELERATOR=cpu left in
# the environment would send it to the CPU.
env -u DS_ACCELERATOR MENTOR_FN_TEST_BACKEND=nccl \
    "$python" -m pytest -p no:cacheprovider -q -rs --durations=10 "${files[@]}" || status=$?
echo "gpu_check: $(( SECONDS - started )) s on $gpus GPU(s), pytest exit status $status"

# The DeepSpeed examples as their docs launch them (each writes into a scratch folder).
if [ "$#" -eq 0 ] && [ "$status" -eq 0 ]; then
    root=$PWD
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    torchrun=("$python" -m torch.distributed.run --nproc-per-node 2)
    launches=(
        "${torchrun[*]} $root/examples/transformers_deepspeed.py"
        "${torchrun[*]} $root/examples/transformers_deepspeed.py --stage 3"
        "${torchrun[*]} $root/examples/lightning_deepspeed.py"
        "${torchrun[*]} $root/examples/lightning_deepspeed.py --stage 3"
        "${torchrun[*]} $root/examples/deepspeed_loop.py --stage 3"
    )
    if command -v deepspeed >/dev/null; then
        launches+=("deepspeed --num_gpus 2 $root/examples/transformers_deepspeed.py")
    fi
    for launch in "${launches[@]}"; do
        folder=$(mktemp -d -p "$scratch")
        echo "gpu_check: $launch"
        (cd "$folder" && env -u DS_ACCELERATOR $launch) || { status=$?; break; }
    done
    echo "gpu_check: examples done, exit status $status"
fi
exit "$status"
