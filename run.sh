#!/usr/bin/env bash
# One entry point for a fresh machine: creates/refreshes .venv with the pinned stack, then
#   ./run.sh demo [lavender demo flags]   runs the main job on an embedded local Ray, tiny models
#   ./run.sh test [pytest flags]          runs the test suite (2 processes; -n 0: one)
#   ./run.sh setup                        only (re)installs
#   ./run.sh lavender ...                 any `lavender` subcommand inside the venv
# Set-up is idempotent: a second run with unchanged requirements.lock/pyproject.toml takes ~1 s.
set -euo pipefail
cd "$(dirname "$0")"

VENV=${LAVENDER_VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.setup-stamp"
# Torch is installed first and on its own: the pin takes the CPU wheel; GPU users install their
# CUDA build into the venv first and set LAVENDER_KEEP_TORCH=1 (see README).
TORCH_SPEC=${LAVENDER_TORCH_SPEC:-torch==2.13.0}

export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0   # keep Ray on loopback
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
export DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1      # prebuild DeepSpeed's CPU comm op once at install
export PIP_DISABLE_PIP_VERSION_CHECK=1

setup() {
  local want
  want=$(cat requirements.lock pyproject.toml run.sh | sha256sum | cut -c1-16)
  if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    return 0
  fi
  echo "==> setting up $VENV (first run: a few minutes)" >&2
  [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
  # pip bootstraps uv (the lock's pin), which installs the rest: ~50 s instead of ~70 s with pip.
  local pip=("$VENV/bin/python" -m pip install -q)
  "${pip[@]}" --upgrade pip setuptools wheel "$(grep -E '^uv==' requirements.lock)"
  # --compile-bytecode, as pip does: without it every process (PYTHONDONTWRITEBYTECODE=1 here)
  # would compile the stack it imports each time it starts: a test suite twice as slow
  local uv=("$VENV/bin/uv" pip install -q --compile-bytecode --python "$VENV/bin/python")
  if [[ -n "${PIP_FIND_LINKS:-}" && -z "${UV_FIND_LINKS:-}" ]]; then
    export UV_FIND_LINKS=$PIP_FIND_LINKS      # uv reads no pip settings
  fi
  export UV_NATIVE_TLS=${UV_NATIVE_TLS:-1}    # the system's certificates, as pip uses them
  if [[ "${LAVENDER_KEEP_TORCH:-0}" != 1 ]]; then
    "${uv[@]}" "$TORCH_SPEC"
  fi
  # DeepSpeed's setup.py imports torch: build it against the torch above, not an isolated one;
  # with pip, which keeps the built wheel in its cache (uv rebuilds it every time: ~75 s).
  "${pip[@]}" --no-build-isolation "$(grep -E '^deepspeed==' requirements.lock)"
  "${uv[@]}" -r requirements.lock
  # Test data (real tokenizer files); --no-deps: clip-anytorch would pull torchvision + CUDA torch.
  "${uv[@]}" --no-deps clip-anytorch==2.6.0 quicktok-v1==0.4.0
  "${uv[@]}" --no-deps -e .
  echo "$want" > "$STAMP"
}

cmd=${1:-help}
[[ $# -gt 0 ]] && shift
case "$cmd" in
  setup) setup ;;
  demo) setup; exec "$VENV/bin/lavender" demo "$@" ;;
  # two test processes, a module each at a time (its fixtures built once), the longest modules
  # first (tests/conftest.py: LONGEST_MODULES, kept by --no-loadscope-reorder); the end-to-end tests
  # wait on Ray and subprocesses a quarter of the time; more would crowd the 2 pinned cores
  test) setup; exec "$VENV/bin/python" -m pytest -n "${LAVENDER_TEST_PROCESSES:-2}" \
          --dist loadfile --no-loadscope-reorder "$@" ;;
  lavender) setup; exec "$VENV/bin/lavender" "$@" ;;
  *) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; [[ "$cmd" == help ]] ;;
esac
