#!/bin/bash
# .whl/ for bench/gpu_machine.sh: the wheels a lent GPU machine lacks, for its Python 3.12, at
# the versions pinned in requirements.txt and constraints.txt, plus mmcv's source. Run here,
# where pip reaches an index, before the first device call; .whl/ is git-ignored and travels
# as `carry` (64 MiB with the working tree: this comes to about 63 MB, the tree 1 MB).
#
# CARRY names what the lent image ("cuda": torch, numpy, opencv-python-headless, scipy,
# scikit-learn, pandas, pyarrow, matplotlib, onnx, onnxruntime, grpcio, protobuf, tensorboard,
# pyyaml, pillow, ... as the device library's KINDS.md lists them) does not have. Left out on
# purpose: torch and its CUDA libraries (the machine's own), virtualenv, distlib and
# python-discovery (Ray's runtime environments only). Ray's wheel loses ray/jars (Java),
# ray/rllib and the dashboard's source maps, none of which the executor loads.
#
#   bash bench/gpu_wheelhouse.sh      # then: run(carry=[".whl"], command="bash bench/gpu_machine.sh")
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY="addict aiohttp-cors albumentations annotated-types colorful google-api-core google-auth
googleapis-common-protos jsonschema jsonschema-specifications referencing rpds-py mmdet mmengine
mmyolo opencensus opencensus-context opentelemetry-api opentelemetry-exporter-prometheus
opentelemetry-proto opentelemetry-sdk opentelemetry-semantic-conventions platformdirs prettytable
proto-plus pyasn1 pyasn1_modules pycocotools pydantic pydantic_core qudida ray smart_open
tensorboardX termcolor terminaltables typing-inspection wcwidth yapf ymir-exc shapely cryptography
cffi pycparser"
pin() {  # the pinned version of $1 (names compared as pip does: case and -/_ alike)
  local want; want=$(echo "$1" | tr 'A-Z_' 'a-z-')
  grep -hv '^#' requirements.txt constraints.txt | sed 's/\[.*\]//' |
    awk -F'==' -v w="$want" '{n=tolower($1); gsub("_", "-", n)} n==w {print $2; exit}'
}
specs=()
for name in $CARRY; do
  version=$(pin "$name"); [ -n "$version" ] || { echo "gpu_wheelhouse: no pin for $name" >&2; exit 1; }
  specs+=("$name==$version")
done
specs+=("setuptools==80.9.0")  # mmcv's setup.py needs pkg_resources, gone in setuptools 81
rm -rf .whl && mkdir .whl
PY=${PYTHON:-.venv/bin/python}
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${specs[@]}"
$PY -m pip download -q --no-deps --no-binary :all: --no-build-isolation -d .whl "mmcv==$(pin mmcv)"
zip -q -d .whl/ray-*.whl 'ray/jars/*' 'ray/rllib/*' 'ray/dashboard/client/build/static/js/*.map'
size=$(( $(du -sb .whl | cut -f1) + $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) ))
echo "gpu_wheelhouse: $(ls .whl | wc -l) files in .whl/; with the tracked tree $size bytes of the 67108864 that may travel"
[ "$size" -lt 67108864 ] || { echo "gpu_wheelhouse: too large to carry" >&2; exit 1; }
