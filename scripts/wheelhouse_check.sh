#!/usr/bin/env bash
# `make wheelhouse-check`: the install without network, end to end, on this machine.
# 1. makes (or tops up) the wheelhouse for this machine: needs the network, seconds when done before;
# 2. installs a fresh venv from it with scripts/setup.sh: no index, no pip configuration, no
#    proxy, and no network at all where a network namespace can be made (unshare -n); with
#    a fresh mmcv cache, so mmcv is compiled from the wheelhouse's source (~10-15 min on 2 cores);
# 3. imports the stack in that venv.
# Not part of `make test`: it takes minutes and the network. Nothing here touches .venv/.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export WHEELHOUSE="${WHEELHOUSE:-$ROOT/wheelhouse}"
CHECK_DIR="${CHECK_DIR:-/tmp/ray_app-wheelhouse-check}"
PYTHON="${PYTHON:-python3.11}"
if [[ "$PYTHON" =~ ^[0-9]+\.[0-9]+$ ]]; then PYTHON="python$PYTHON"; fi
export PYTHON

start=$SECONDS
bash "$ROOT/scripts/wheelhouse.sh"
made=$((SECONDS - start))

# Fresh each time: a venv or mmcv wheel left by an earlier run would skip what is checked.
rm -rf "$CHECK_DIR/venv" "$CHECK_DIR/cache"
mkdir -p "$CHECK_DIR"
# This machine's pip configuration (find-links, local indexes) could quietly make up for a
# missing wheel: PIP_CONFIG_FILE=/dev/null turns every configuration file off.
offline=(env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u PIP_FIND_LINKS
         -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT
         PIP_NO_INDEX=1 PIP_CONFIG_FILE=/dev/null
         VENV="$CHECK_DIR/venv" RAY_APP_CACHE="$CHECK_DIR/cache")
how="pip offline"
if unshare -n true 2>/dev/null; then
  offline=(unshare -n "${offline[@]}") how="no network (unshare -n)"
elif unshare -rn true 2>/dev/null; then
  offline=(unshare -rn "${offline[@]}") how="no network (unshare -rn)"
fi
echo "wheelhouse-check: installing $CHECK_DIR/venv from $WHEELHOUSE, $how"
start=$SECONDS
"${offline[@]}" bash "$ROOT/scripts/setup.sh"
installed=$((SECONDS - start))

"${offline[@]}" "$CHECK_DIR/venv/bin/python" -c "
import mmcv.ops, mmdet, mmyolo, ray.train, ray_app, torch
print('wheelhouse-check: imports fine: torch', torch.__version__, 'mmcv', mmcv.__version__, 'mmcv.ops.nms', mmcv.ops.nms.__module__)"
echo "wheelhouse-check: passed; wheelhouse $(du -sh "$WHEELHOUSE" | cut -f1) made in ${made}s," \
     "venv $(du -sh "$CHECK_DIR/venv" | cut -f1) installed in ${installed}s (mmcv compiled from source)"
