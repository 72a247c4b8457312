#!/usr/bin/env bash
# The GPU benchmarks of the SD-targets and training-step issues in one short call (H100/H200).
#
#   bench/device_check.sh --fetch   here, with the package registry: download into .whl/ (git-
#                                   ignored, ~30 MiB) the pinned wheels the GPU image lacks or has
#                                   in other versions (its python3 3.12 has torch, pyarrow, PIL)
#   bench/device_check.sh           there: install .whl/ into /tmp/site, then run
#                                   train_step.py --real-size (Llama-3.2-11B-Vision, random
#                                   weights, LoRA, bf16), sd_extract.py --real-size (SD 1.4:
#                                   ddim and null-text images/s, compile + channels_last on/off,
#                                   fp16 vs fp32 null-text maps), and `lavender plan` of the
#                                   paper's preset on an H200, whose train-worker
#                                   memory to set beside train_step's measured peak (the bench's
#                                   batch is not the plan's worst case: compare per token)
#
# With the `device` tool: run(command="bash bench/device_check.sh", carry=[".whl"],
# timeout_s=600). Each benchmark has its own time limit so one hang cannot eat the call; their
# outputs land in $OUT (or /tmp/device-check) as train_step.txt and sd_extract.txt.
set -uo pipefail
cd "$(dirname "$0")/.."

# Distributions the benchmarks import that the GPU image lacks (pydantic, simplemma, diffusers)
# or has in other versions than requirements.lock pins (transformers, peft, tokenizers, hub).
PACKAGES=(transformers tokenizers peft diffusers huggingface_hub safetensors pydantic
  pydantic_core annotated-types typing-inspection typing_extensions simplemma PyYAML regex)

if [[ "${1:-}" == --fetch ]]; then
  pins=()
  for name in "${PACKAGES[@]}"; do
    pin=$(grep -iE "^${name//[-_]/[-_]}==" requirements.lock) || {
      echo "requirements.lock pins no $name" >&2
      exit 1
    }
    pins+=("$pin")
  done
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  rm -rf .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${pins[@]}" || exit 1
  du -sh .whl
  exit 0
fi

ls .whl/*.whl > /dev/null 2>&1 || {
  echo "no wheels in .whl/: run 'bench/device_check.sh --fetch' here first, then carry .whl" >&2
  exit 2
}
out=${OUT:-/tmp/device-check}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
status=0
timeout 300 python3 bench/train_step.py --real-size --steps 5 --warmup 2 2>&1 \
  | grep -v Warning | tee "$out/train_step.txt" || status=1
timeout 300 python3 bench/sd_extract.py --real-size 2>&1 \
  | grep -v Warning | tee "$out/sd_extract.txt" || status=1
LAVENDER_PLAN_CACHE=/tmp/plan-cache timeout 300 python3 -m lavender_ray.cli plan \
  --preset llama32_11b_lora --set train.accelerator=H200 2>&1 \
  | grep -v Warning | tee "$out/plan.txt" || status=1
exit $status
