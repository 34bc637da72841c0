#!/bin/bash
# The GPU figures of docs/performance.md ("GPU", 2026-11-26) were made with this script on a
# lent machine that has CUDA, nvcc and its own torch but no network and none of the rest of
# the stack. Not for users (they install from a wheelhouse: docs/install.md): it installs the
# wheels of .whl/ beside the machine's torch with pip --target, compiles mmcv's CUDA ops for
# that GPU (all of them: 323 s on 16 cores for sm_90; now NMS alone first, bench/mmcv_nms_only.py),
# then runs bench/gpu_check.py, all output in $OUT.
#
# .whl/ (git-ignored) is made here, where pip reaches an index, by bench/gpu_wheelhouse.sh: the
# cp312 wheels of the pinned stack that the lent image lacks (Ray's trimmed to fit the 64 MiB
# that may travel), setuptools<81 (mmcv's setup.py needs pkg_resources) and mmcv-2.0.1.tar.gz.
# Run as: bash bench/gpu_machine.sh (ARCH=9.0 by default), with .whl carried.
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
# mmcv with NMS as its only CUDA op first (bench/mmcv_nms_only.py: 1 CUDA kernel file of 58, the
# full build took 323 s of the lease); the full build if that fails, or if NMS does not run on
# the GPU, or another op does not say it has no CUDA kernel.
NMS_CHECK='import torch, mmcv.ops as ops
b = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32).cuda()
keep = ops.nms(b, torch.tensor([0.9, 0.8, 0.7]).cuda(), 0.5)[1].tolist()
assert keep == [0, 2], keep
try:
    ops.sigmoid_focal_loss(torch.rand(2, 3).cuda(), torch.tensor([0, 1]).cuda(), 2.0, 0.25)
    print("the trimmed build has focal loss on the GPU: it is the full build")
except RuntimeError as error:
    assert "has no CUDA kernel in this build" in str(error), error
print("mmcv: NMS on the GPU", keep)'
build_mmcv() {  # $1: nms-only or full
  stamp "mmcv-build $1"
  cd /tmp && rm -rf mmcv-2.0.1 && tar xzf $REPO/.whl/mmcv-2.0.1.tar.gz && sed -i 's/-std=c++14/-std=c++17/g' mmcv-2.0.1/setup.py && cd mmcv-2.0.1
  if [ "$1" = nms-only ]; then python3 $REPO/bench/mmcv_nms_only.py trim . || return 1; fi
  MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${ARCH:-9.0} MAX_JOBS=16 timeout 360 python3 setup.py build_ext --inplace > $OUT/mmcv-build-$1.log 2>&1
  rc=$?; stamp "mmcv-build $1 rc=$rc"; [ $rc = 0 ] || { tail -30 $OUT/mmcv-build-$1.log; return 1; }
  PYTHONPATH=/tmp/mmcv-2.0.1:$PYTHONPATH python3 -c "$NMS_CHECK" 2>&1 | tail -3 | tee -a $OUT/steps.txt
  return ${PIPESTATUS[0]}
}
build_mmcv nms-only || build_mmcv full || exit 1
export PYTHONPATH=/tmp/mmcv-2.0.1:$PYTHONPATH
python3 -m compileall -q -j 0 /tmp/mmcv-2.0.1/mmcv >> $OUT/compileall.log 2>&1
wait $BYTECODE; stamp "bytecode compiled (compileall rc=$?: a file or two of Python 2 in a package is no matter)"
cd $REPO
python3 -c "import mmcv.ops, mmdet.models, mmyolo, ray.train, ray.data, ray_app; print('the stack imports')" 2>&1 | tail -3
stamp gpu-check
left=$(( 575 - $(el) ))
timeout $left python3 bench/gpu_check.py --out $OUT/gpu.json --deadline-s $(( left - 75 )) > $OUT/gpu_check.log 2>&1
stamp "gpu-check rc=$?"
grep -v "Warning\|warn(\|_VF\|^\s*$" $OUT/gpu_check.log | grep -A40 "training, " | head -40
grep "^\[" $OUT/gpu_check.log | cut -c1-300
