#!/usr/bin/env bash
# Gather everything `scripts/setup.sh` installs into one folder, for a machine with no network
# (air-gapped YMIR clusters): `WHEELHOUSE=<dir> bash scripts/setup.sh` then installs from it
# with no index. Run it on a machine with network; docs/install.md says how to use the folder.
#
#   WHEELHOUSE       the folder (default wheelhouse/ in the repo, git-ignored)
#   PLATFORM         the target's newest manylinux tag, e.g. manylinux_2_35_x86_64 for
#                    Ubuntu 22.04 (glibc 2.35); default: this machine's
#   PYTHON           the target's python: a version (3.11, the default) or an interpreter
#   TORCH_INDEX_URL  where torch comes from, e.g. https://download.pytorch.org/whl/cu129;
#                    default: this machine's pip configuration (here: the CPU build)
#   TORCH=none       leave torch out, for targets whose python already has the pinned torch
#   HOST_PYTHON      the python whose pip downloads (default python3); any version works
#
# What goes in: a wheel of every pin in requirements.txt + constraints.txt (and torch's own
# dependencies), pip and the build tools setup.sh needs, mmcv's source tarball (it has no
# wheel: setup.sh compiles it on the target, with CUDA ops there when nvcc is found), and
# ray_app-wheelhouse.txt, the manifest setup.sh checks the target against.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${WHEELHOUSE:-$ROOT/wheelhouse}"
HOST_PY="${HOST_PYTHON:-python3}"
TORCH="${TORCH:-}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"
PIP=("$HOST_PY" -m pip --disable-pip-version-check)
pin() { grep -E "^$1==" "$ROOT/requirements.txt" | cut -d= -f3; }
TORCH_PIN="$(pin torch)"
MMCV_PIN="$(pin mmcv)"

# The target python: "3.11", or an interpreter to ask (PYTHON=python3.11, as setup.sh takes it).
PYTHON="${PYTHON:-3.11}"
if [[ "$PYTHON" =~ ^[0-9]+\.[0-9]+$ ]]; then
  py_version="$PYTHON"
else
  py_version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
fi
# This machine's newest manylinux tag (pip's own copy of `packaging` knows it).
PLATFORM="${PLATFORM:-$("$HOST_PY" -c 'from pip._vendor.packaging import tags
print(next(t.platform for t in tags.sys_tags() if t.platform.startswith("manylinux_")))')}"

# pip takes a platform tag literally: a wheel tagged manylinux_2_17 (most of PyPI) does not
# match --platform manylinux_2_35. So name every older glibc tag too, and their old aliases.
platform_args=()
if [[ "$PLATFORM" =~ ^manylinux_2_([0-9]+)_(.+)$ ]]; then
  glibc="${BASH_REMATCH[1]}" arch="${BASH_REMATCH[2]}"
  for ((minor = glibc; minor >= 5; minor--)); do platform_args+=(--platform "manylinux_2_${minor}_$arch"); done
  for alias in manylinux2014 manylinux2010 manylinux1; do platform_args+=(--platform "${alias}_$arch"); done
else
  platform_args+=(--platform "$PLATFORM")
fi
target=(--only-binary=:all: "${platform_args[@]}" --python-version "$py_version" --implementation cp)

# One folder, one target: refuse to mix wheels of two platforms, pythons or torch builds.
MANIFEST="$OUT/ray_app-wheelhouse.txt"
if [[ -f "$MANIFEST" ]]; then
  was="$(grep -E '^(python|platform|torch_source)=' "$MANIFEST" | tr '\n' ' ')"
  now="python=$py_version platform=$PLATFORM torch_source=${TORCH:-${TORCH_INDEX_URL:-default}} "
  if [[ "$was" != "$now" ]]; then
    echo "wheelhouse: $OUT was made for ${was% }, not ${now% }: remove it or choose another WHEELHOUSE" >&2
    exit 1
  fi
fi
mkdir -p "$OUT"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# pip's (long) output goes to a log; the end of it is shown when a step fails.
LOG="$tmp/pip.log"
quiet() {
  if ! "$@" >> "$LOG" 2>&1; then
    local cmd="$*"
    echo "wheelhouse: failed: ${cmd:0:160}..." >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
}
echo "wheelhouse: $OUT for python $py_version on $PLATFORM (torch: ${TORCH:-${TORCH_INDEX_URL:-default}})"

# torch first and alone, so that its build (CPU, cu128, ...) is the one we chose: as a file it
# then wins over any other torch 2.13.0 the resolution below could see.
torch_req=()
if [[ "$TORCH" != none ]]; then
  torch_src=()
  if [[ -n "$TORCH_INDEX_URL" ]]; then
    # Only that index: the pip configuration's find-links/extra indexes could hold another
    # build of the same version (here, the CPU one). Empty values would be ignored, hence these.
    mkdir "$tmp/nothing"
    torch_src=(env PIP_FIND_LINKS="$tmp/nothing" PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL")
  fi
  quiet "${torch_src[@]}" "${PIP[@]}" download -q --no-deps "${target[@]}" -d "$tmp/torch" \
      ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==$TORCH_PIN"
  torch_req=("$(ls "$tmp"/torch/torch-*.whl)")
fi

# Everything else, as wheels: the direct pins, every transitive pin, pip and the build tools.
# constraints.txt doubles as a requirements list so that nothing setup.sh installs is missed.
grep -vE '^(torch|mmcv)==' "$ROOT/requirements.txt" > "$tmp/requirements.txt"
quiet "${PIP[@]}" download -q "${target[@]}" -d "$OUT" \
    -r "$tmp/requirements.txt" -r "$ROOT/constraints.txt" -c "$ROOT/constraints.txt" \
    pip "setuptools>=77,<81" wheel ninja "${torch_req[@]}"

# mmcv's source. pip prepares its metadata by running its setup.py, which needs pkg_resources
# (gone in setuptools 81): cap setuptools in that build environment.
echo 'setuptools<81' > "$tmp/build-constraints.txt"
quiet env PIP_CONSTRAINT="$tmp/build-constraints.txt" "${PIP[@]}" download -q --no-deps --no-binary :all: \
    -d "$OUT" "mmcv==$MMCV_PIN"

# The manifest: what the folder was made for; setup.sh checks python and pins against it.
torch_wheel="$(ls "$OUT"/torch-*.whl 2>/dev/null | head -n1 || true)"
torch_cuda=none
if [[ -n "$torch_wheel" ]]; then
  torch_cuda="$("$HOST_PY" - "$torch_wheel" <<'EOF'
import re, sys, zipfile
text = zipfile.ZipFile(sys.argv[1]).read("torch/version.py").decode()
m = re.search(r"^cuda\b[^=]*=\s*'([^']+)'", text, re.M)
print(m.group(1) if m else "none")
EOF
)"
fi
{
  echo "# Made by scripts/wheelhouse.sh (make wheelhouse); scripts/setup.sh checks it (WHEELHOUSE=<dir>)."
  echo "python=$py_version"
  echo "platform=$PLATFORM"
  echo "torch_source=${TORCH:-${TORCH_INDEX_URL:-default}}"
  echo "torch=$(basename "${torch_wheel:-none}")"
  echo "torch_cuda=$torch_cuda"
  echo "mmcv_sdist=mmcv-$MMCV_PIN.tar.gz"
  echo "pins=$(cat "$ROOT/requirements.txt" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)"
  echo "made=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > "$MANIFEST"
torch_note="left out (TORCH=none)"
[[ -n "$torch_wheel" ]] && torch_note="$(basename "$torch_wheel") (CUDA: $torch_cuda)"
echo "wheelhouse: $(find "$OUT" -maxdepth 1 \( -name '*.whl' -o -name '*.tar.gz' \) | wc -l) files, $(du -sh "$OUT" | cut -f1); torch $torch_note"
