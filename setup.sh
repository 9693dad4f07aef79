#!/usr/bin/env bash
# One-command setup: system libraries, then a virtual environment in .venv/ with every
# dependency pinned (setup.py pins the direct ones, constraints.txt everything they pull in).
#
#   ./setup.sh                 # PyPI-only machine: ROS 2 Kilted core from PyPI wheels
#   ./setup.sh --apt-ros       # ROS 2 from apt already sourced: reuse it, skip the ROS wheels
#   ./setup.sh --gpu           # add TensorRT (needs NVIDIA's index and a GPU)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# franky-sim (a MuJoCo server speaking the libfranka protocol) tests the franky driver.
extras="dev,franky-sim"
use_ros_wheels=1
for arg in "$@"; do
  case "$arg" in
    --apt-ros) use_ros_wheels=0 ;;
    --gpu) extras="$extras,gpu" ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (see ./setup.sh --help)" >&2; exit 2 ;;
  esac
done
[ "$use_ros_wheels" = 1 ] && extras="$extras,ros"

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup.sh: needs Python 3.11 (the pinned torch and ROS wheels are cp311); set PYTHON=..." >&2
  exit 1
fi

# System libraries the wheels load at run time: libusb for pyrealsense2; EGL + Mesa's
# software rasteriser for MuJoCo's offscreen rendering on a machine without a GPU.
missing=()
ldconfig -p | grep -q 'libusb-1.0.so.0' || missing+=(libusb-1.0-0)
ldconfig -p | grep -q 'libEGL.so.1' || missing+=(libegl1)
ldconfig -p | grep -q 'libEGL_mesa.so.0' || missing+=(libegl-mesa0)
compgen -G '/usr/lib/*/dri/swrast_dri.so' >/dev/null || missing+=(libgl1-mesa-dri)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
    echo "setup.sh: install these Debian/Ubuntu packages first: ${missing[*]}" >&2; exit 1
  fi
  echo "==> apt-get install ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

venv_args=()
[ "$use_ros_wheels" = 0 ] && venv_args+=(--system-site-packages)  # sees the apt rclpy
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$python" -m venv "${venv_args[@]}" .venv
fi
echo "==> installing onedp_control[$extras] into .venv (pinned)"
# This machine's pip config names local mirror folders that may be absent: drop that noise only.
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt \
  -e ".[$extras]" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
.venv/bin/onedp --help >/dev/null
echo "==> ready: .venv/bin/onedp"
