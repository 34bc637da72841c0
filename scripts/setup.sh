#!/usr/bin/env bash
# Build .venv/ with the pinned stack. Idempotent: a second run only checks pins.
#
# The one expensive step is mmcv 2.0.1 with its compiled ops (about 9 minutes on
# 2 cores): PyPI ships only its source, and its setup.py asks for -std=c++14,
# which the torch 2.13 headers reject. We patch that to c++17, build a wheel once
# and keep it in $RAY_APP_CACHE (default ~/.cache/ray_app), outside the repo, so
# every later `make setup` on the machine reuses it.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
CACHE="${RAY_APP_CACHE:-$HOME/.cache/ray_app}"
WHEELS="$CACHE/wheels"
STAMP="$VENV/.ray_app-setup-stamp"
MMCV_VERSION="$(grep -E '^mmcv==' "$ROOT/requirements.txt" | cut -d= -f3)"

# Hash of what decides the environment: when unchanged, nothing to do.
want="$(cat "$ROOT/requirements.txt" "$ROOT/constraints.txt" "$ROOT/pyproject.toml" "$0" | sha256sum | cut -d' ' -f1)"
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
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup: creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
quiet "${PIP[@]}" install -q --upgrade pip
# Build tools for mmcv (setup.py needs pkg_resources, removed in setuptools 81; torch needs >=77).
quiet "${PIP[@]}" install -q "setuptools>=77,<81" wheel ninja
# torch first, alone: the CPU build comes from the local wheel store; any other
# torch pin would pull several GB of CUDA packages.
quiet "${PIP[@]}" install -q "$(grep -E '^torch==' "$ROOT/requirements.txt")"

mmcv_wheel="$(ls "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
if [[ -z "$mmcv_wheel" ]]; then
  echo "setup: building mmcv $MMCV_VERSION with ops (once per machine, ~10 min on 2 cores)"
  build="$(mktemp -d)"
  trap 'rm -rf "$build"' EXIT
  quiet "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation \
      -d "$build" "mmcv==$MMCV_VERSION"
  tar -xzf "$build"/mmcv-"$MMCV_VERSION".tar.gz -C "$build"
  sed -i 's/-std=c++14/-std=c++17/g' "$build/mmcv-$MMCV_VERSION/setup.py"
  MMCV_WITH_OPS=1 MAX_JOBS="$(nproc)" quiet "${PIP[@]}" wheel -q --no-deps --no-build-isolation \
      -w "$build/dist" "$build/mmcv-$MMCV_VERSION"
  cp "$build"/dist/mmcv-*.whl "$WHEELS/"
  mmcv_wheel="$(ls "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl | head -n1)"
fi
echo "setup: installing the pinned stack into $VENV"
quiet "${PIP[@]}" install -q --find-links "$WHEELS" "$mmcv_wheel"

quiet "${PIP[@]}" install -q --find-links "$WHEELS" -r "$ROOT/requirements.txt" -c "$ROOT/constraints.txt"
quiet "${PIP[@]}" install -q --no-deps -e "$ROOT"
"$VENV/bin/python" -c "import mmcv.ops, mmdet.models, mmyolo, ray.train, ray.data, ray_app; print('setup: stack imports fine')"
echo "$want" > "$STAMP"
