#!/bin/bash
# The GPU figures of docs/performance.md ("GPU", 2026-11-26) were made with this script on a
# lent machine that has CUDA, nvcc and its own torch but no network and none of the rest of
# the stack. Not for users (they install from a wheelhouse: docs/install.md): it installs the
# wheels of .whl/ beside the machine's torch with pip --target, compiles mmcv's CUDA ops for
# that GPU (323 s on 16 cores for sm_90), then runs bench/gpu_check.py, all output in $OUT.
#
# .whl/ (git-ignored) was made on a machine with network: the cp312 manylinux wheels of
# requirements.txt + constraints.txt less torch, the nvidia packages and what the lent machine
# already has; ray's wheel with ray/jars and ray/rllib taken out (to fit the 64 MiB that may
# travel); setuptools<81 (mmcv's setup.py needs pkg_resources); mmcv-2.0.1.tar.gz. E.g.
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --platform manylinux_2_28_x86_64 -d .whl -r requirements.txt -c constraints.txt
# then remove what the machine has. Run as: bash bench/gpu_machine.sh (ARCH=9.0 by default).
# The lent GPU machine: install the carried wheels beside its own torch, build mmcv's CUDA ops
# for this GPU, then bench/gpu_check.py. Everything it measures lands in $OUT.
REPO=$PWD; T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
stamp() { echo "[$(el) s] $*" | tee -a $OUT/steps.txt; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc;
  python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])";
  nvcc --version | tail -2; } 2>&1 | tee $OUT/machine.txt
stamp install
python3 -m pip install -q --no-index --no-deps --no-cache-dir --target /tmp/site .whl/*.whl > $OUT/install.log 2>&1 || { tail -20 $OUT/install.log; exit 1; }
export PYTHONPATH=/tmp/site:$REPO PYTHONUNBUFFERED=1
# Bytecode for the carried stack, beside the mmcv build (pip's --no-compile keeps the install
# quick): else the first process to import a module compiles it, and the entry's Ray workers,
# which start side by side, each compile what they import; the 2026-11-26 start-up figures
# carry that bias. A user's image is installed with bytecode (pip's default).
python3 -m compileall -q -j 0 /tmp/site > $OUT/compileall.log 2>&1 &
BYTECODE=$!
stamp mmcv-build
cd /tmp && tar xzf $REPO/.whl/mmcv-2.0.1.tar.gz && sed -i 's/-std=c++14/-std=c++17/g' mmcv-2.0.1/setup.py && cd mmcv-2.0.1
MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${ARCH:-9.0} MAX_JOBS=16 timeout 360 python3 setup.py build_ext --inplace > $OUT/mmcv-build.log 2>&1
rc=$?; stamp "mmcv-build rc=$rc"; [ $rc = 0 ] || { tail -30 $OUT/mmcv-build.log; exit 1; }
export PYTHONPATH=/tmp/mmcv-2.0.1:$PYTHONPATH
python3 -m compileall -q -j 0 /tmp/mmcv-2.0.1/mmcv >> $OUT/compileall.log 2>&1
wait $BYTECODE; stamp "bytecode compiled (compileall rc=$?: a file or two of Python 2 in a package is no matter)"
cd $REPO
python3 -c "import mmcv.ops, mmdet.models, mmyolo, ray.train, ray.data, ray_app; import torch; from mmcv.ops import nms; print('nms on cuda', nms(torch.rand(4,4).cuda()*10+torch.tensor([0,0,10,10]).cuda(), torch.rand(4).cuda(), 0.5)[1])" 2>&1 | tail -3
stamp gpu-check
left=$(( 575 - $(el) ))
timeout $left python3 bench/gpu_check.py --out $OUT/gpu.json --deadline-s $(( left - 75 )) > $OUT/gpu_check.log 2>&1
stamp "gpu-check rc=$?"
grep -v "Warning\|warn(\|_VF\|^\s*$" $OUT/gpu_check.log | grep -A40 "training, " | head -40
grep "^\[" $OUT/gpu_check.log | cut -c1-300
