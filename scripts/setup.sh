#!/usr/bin/env bash
# Build .venv/ with the pinned stack. Idempotent: a second run only checks pins.
#
# The one expensive step is mmcv 2.0.1 with its compiled ops (about 9 minutes on
# 2 cores): PyPI ships only its source, and its setup.py asks for -std=c++14,
# which the torch 2.13 headers reject. We patch that to c++17, build a wheel once
# and keep it in $RAY_APP_CACHE (default ~/.cache/ray_app), outside the repo, so
# every later `make setup` on the machine reuses it.
#
# Optional settings (none set: the online install from PyPI, as always):
#   WHEELHOUSE=<dir>       install with no network from a folder made by `make wheelhouse`
#                          (docs/install.md); mmcv is compiled from the source in it.
#   TORCH_INDEX_URL=<url>  take torch from that index, e.g. https://download.pytorch.org/whl/cu129
#                          for a CUDA 12 image (PyPI's torch 2.13.0 is built for CUDA 13.0).
#   SYSTEM_TORCH=<version> reuse the torch that $PYTHON already has when it is this version
#                          (the venv then sees $PYTHON's packages). With WHEELHOUSE set, a
#                          torch at the pinned version is reused without asking; "no" never.
#   FORCE_CUDA=1           compile mmcv's CUDA ops; the default when nvcc is found and torch
#                          is a CUDA build. nvcc and torch must agree on CUDA's major version.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
# `make wheelhouse PYTHON=3.11` names a version; take the same form here.
if [[ "$PYTHON" =~ ^[0-9]+\.[0-9]+$ ]]; then PYTHON="python$PYTHON"; fi
CACHE="${RAY_APP_CACHE:-$HOME/.cache/ray_app}"
WHEELS="$CACHE/wheels"
STAMP="$VENV/.ray_app-setup-stamp"
WHEELHOUSE="${WHEELHOUSE:-}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"
SYSTEM_TORCH="${SYSTEM_TORCH:-}"
pin() { grep -E "^$1==" "$ROOT/requirements.txt" | cut -d= -f3; }
MMCV_VERSION="$(pin mmcv)"
TORCH_VERSION="$(pin torch)"

# Hash of what decides the environment: when unchanged, nothing to do. Where torch comes
# from is part of it (a CPU and a CUDA torch are the same pin); the wheelhouse is not (same pins).
want="$( { cat "$ROOT/requirements.txt" "$ROOT/constraints.txt" "$ROOT/pyproject.toml" "$0"
           echo "torch from: ${TORCH_INDEX_URL} ${SYSTEM_TORCH}"; } | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "setup: .venv is up to date"
  exit 0
fi

mkdir -p "$WHEELS"
LOG="$CACHE/setup.log"
: > "$LOG"
# Run a step with its (long, noisy) output in $LOG; show the end of it if the step fails.
quiet() {
  if ! "$@" >> "$LOG" 2>&1; then
    echo "setup: failed: $*" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}
die() { echo "setup: $*" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Where packages come from: PyPI (and this machine's pip configuration), or only the wheelhouse.
SOURCE=()
manifest() { grep -E "^$1=" "$WHEELHOUSE/ray_app-wheelhouse.txt" | cut -d= -f2-; }
if [[ -n "$WHEELHOUSE" ]]; then
  [[ -d "$WHEELHOUSE" ]] || die "WHEELHOUSE=$WHEELHOUSE is not a folder"
  WHEELHOUSE="$(cd "$WHEELHOUSE" && pwd)"
  [[ -f "$WHEELHOUSE/ray_app-wheelhouse.txt" ]] || die "$WHEELHOUSE has no ray_app-wheelhouse.txt: make it with 'make wheelhouse'"
  pins="$(cat "$ROOT/requirements.txt" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)"
  [[ "$(manifest pins)" == "$pins" ]] ||
    die "$WHEELHOUSE was made for other pins than requirements.txt/constraints.txt: make it again (make wheelhouse)"
  have="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  [[ "$have" == "$(manifest python)" ]] ||
    die "$WHEELHOUSE was made for python $(manifest python), $PYTHON is $have: make it with PYTHON=$have or set PYTHON"
  SOURCE=(--no-index --find-links "$WHEELHOUSE")
  echo "setup: installing from $WHEELHOUSE with no index (made for python $(manifest python), $(manifest platform))"
fi

# Reuse a torch the machine already has (a GPU host's image): only when asked, or offline.
reuse_torch=0
if [[ "$SYSTEM_TORCH" != no && ( -n "$SYSTEM_TORCH" || -n "$WHEELHOUSE" ) ]]; then
  system_torch="$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
  if [[ -n "$system_torch" && "${system_torch%%+*}" == "${SYSTEM_TORCH:-$TORCH_VERSION}" ]]; then
    reuse_torch=1
  elif [[ -n "$SYSTEM_TORCH" ]]; then
    die "SYSTEM_TORCH=$SYSTEM_TORCH but $PYTHON has torch ${system_torch:-(none)}: set PYTHON to the python that has it, or unset SYSTEM_TORCH"
  fi
fi
if [[ -n "$WHEELHOUSE" && "$(manifest torch)" == none && "$reuse_torch" == 0 ]]; then
  die "$WHEELHOUSE has no torch (TORCH=none) and $PYTHON has no torch $TORCH_VERSION: set SYSTEM_TORCH=<its version> or make the wheelhouse with torch"
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup: creating $VENV with $PYTHON"
  if [[ "$reuse_torch" == 1 ]]; then
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
elif [[ "$reuse_torch" == 1 ]] && ! grep -qE '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg"; then
  # A venv's access to $PYTHON's packages is fixed when it is made.
  die "$VENV was made without $PYTHON's packages, so it cannot use its torch $system_torch: remove $VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
quiet "${PIP[@]}" install -q "${SOURCE[@]}" --upgrade pip
# Build tools for mmcv (setup.py needs pkg_resources, removed in setuptools 81; torch needs >=77).
quiet "${PIP[@]}" install -q "${SOURCE[@]}" "setuptools>=77,<81" wheel ninja

# torch first, alone: the CPU build comes from the local wheel store; any other
# torch pin would pull several GB of CUDA packages.
requirements="$ROOT/requirements.txt"
if [[ "$reuse_torch" == 1 ]]; then
  echo "setup: using $PYTHON's torch $system_torch (venv made with --system-site-packages; torch not installed)"
  # Keep pip from installing the pin over it.
  grep -vE '^torch==' "$ROOT/requirements.txt" > "$tmp/requirements.txt"
  requirements="$tmp/requirements.txt"
elif [[ -n "$WHEELHOUSE" ]]; then
  quiet "${PIP[@]}" install -q "${SOURCE[@]}" "torch==$TORCH_VERSION"
elif [[ -n "$TORCH_INDEX_URL" ]]; then
  echo "setup: torch $TORCH_VERSION from $TORCH_INDEX_URL"
  # Only that index: this machine's pip configuration (find-links, extra indexes) could hold
  # another build of the same version. Empty values would be ignored, hence these.
  mkdir "$tmp/nothing"
  quiet env PIP_FIND_LINKS="$tmp/nothing" PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL" \
      "${PIP[@]}" install -q --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"
else
  quiet "${PIP[@]}" install -q "torch==$TORCH_VERSION"
fi

# mmcv's ops are compiled for CUDA when nvcc is there and torch is a CUDA build. Look for
# nvcc where torch's extension builder will: $CUDA_HOME or $CUDA_PATH, PATH, /usr/local/cuda.
# (-W ignore: torch warns that numpy is not there yet.)
torch_cuda="$("$VENV/bin/python" -W ignore -c 'import torch; print(torch.version.cuda or "")')"
cuda_home="${CUDA_HOME:-${CUDA_PATH:-}}"
if [[ -n "$cuda_home" ]]; then
  nvcc="$cuda_home/bin/nvcc"
else
  nvcc="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
fi
[[ -x "$nvcc" ]] || nvcc=""
if [[ -n "$nvcc" && -n "$torch_cuda" && -z "${FORCE_CUDA:-}" ]]; then export FORCE_CUDA=1; fi
if [[ -n "$nvcc" || "${FORCE_CUDA:-}" == 1 ]]; then
  # Stop now, not after a 10-minute build, when nvcc and torch disagree on CUDA (one line).
  "$VENV/bin/python" -W ignore "$ROOT/scripts/check_cuda.py" "$([[ -n "$nvcc" ]] && "$nvcc" --version || true)" || exit 1
fi
# A CUDA build of mmcv is cached apart from a CPU one: the wheels have the same name.
if [[ "${FORCE_CUDA:-}" == 1 ]]; then WHEELS="$CACHE/wheels-cuda$torch_cuda"; mkdir -p "$WHEELS"; fi

mmcv_wheel="$(ls "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
if [[ -z "$mmcv_wheel" ]]; then
  echo "setup: building mmcv $MMCV_VERSION with ops (once per machine, ~10 min on 2 cores)"
  build="$tmp/mmcv"
  mkdir -p "$build"
  if [[ -n "$WHEELHOUSE" ]]; then
    cp "$WHEELHOUSE/mmcv-$MMCV_VERSION.tar.gz" "$build/" || die "$WHEELHOUSE has no mmcv-$MMCV_VERSION.tar.gz"
  else
    quiet "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation \
        -d "$build" "mmcv==$MMCV_VERSION"
  fi
  tar -xzf "$build"/mmcv-"$MMCV_VERSION".tar.gz -C "$build"
  sed -i 's/-std=c++14/-std=c++17/g' "$build/mmcv-$MMCV_VERSION/setup.py"
  MMCV_WITH_OPS=1 MAX_JOBS="$(nproc)" quiet "${PIP[@]}" wheel -q --no-deps --no-build-isolation \
      "${SOURCE[@]}" -w "$build/dist" "$build/mmcv-$MMCV_VERSION"
  cp "$build"/dist/mmcv-*.whl "$WHEELS/"
  mmcv_wheel="$(ls "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl | head -n1)"
fi
echo "setup: installing the pinned stack into $VENV"
quiet "${PIP[@]}" install -q "${SOURCE[@]}" --find-links "$WHEELS" "$mmcv_wheel"

quiet "${PIP[@]}" install -q "${SOURCE[@]}" --find-links "$WHEELS" -r "$requirements" -c "$ROOT/constraints.txt"
quiet "${PIP[@]}" install -q "${SOURCE[@]}" --no-deps -e "$ROOT"
"$VENV/bin/python" -c "import mmcv.ops, mmdet.models, mmyolo, ray.train, ray.data, ray_app; print('setup: stack imports fine')"
echo "$want" > "$STAMP"
