"""The CPU model actor's unit of work in torch and in ONNX Runtime: which runtime should serve it.

The CPU model actor runs one batch per thread, each on one torch thread, two threads on 2
cores (``infer/model.py:Detector``). This measures that unit: a batch of --batch images
through the network and the box decoding (``ray_app.export.decode.DecodedDetector``, what
the exported file computes), with one intra-op thread, in 1 thread and in 2 threads side by
side. It compares torch (eager, channels-last, BatchNorm folded, as the actor runs it) with
ONNX Runtime on the exported graph. The model is untrained, since speed does not depend on
the weights. NMS and the test pipeline are left out: they are the same work either way.

    .venv/bin/python bench/runtime_bench.py     # writes bench/results/runtime.json
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save, untrained_detector  # noqa: E402


def images_per_s(run, threads: int, batch: int, repeats: int) -> float:
    """Images per second with ``threads`` threads each calling ``run`` ``repeats`` times."""
    for _ in range(2):
        run()

    def work() -> None:
        for _ in range(repeats):
            run()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return threads * repeats * batch / (time.perf_counter() - started)


def measure(model_name: str, size: int, batch: int, repeats: int) -> dict:
    import numpy as np
    import onnxruntime
    import torch

    from ray_app.export.decode import DecodedDetector
    from ray_app.export.onnx_format import export_onnx

    torch.set_num_threads(1)  # as the CPU model actor
    model, _ = untrained_detector(model_name, size)
    detector = DecodedDetector(model)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(export_onnx(detector, (size, size), 11, {}), options,
                                           providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).uniform(0, 255, (batch, 3, size, size)).astype(np.float32)
    eager = detector.to(memory_format=torch.channels_last)
    tensor = torch.from_numpy(images).contiguous(memory_format=torch.channels_last)

    def torch_batch() -> None:
        with torch.no_grad():
            eager(tensor)

    def onnx_batch() -> None:
        session.run(None, {"images": images})

    row = {"model": model_name, "size": size, "batch": batch}
    for name, run in (("torch", torch_batch), ("onnxruntime", onnx_batch)):
        for threads in (1, 2):
            row[f"{name}_{threads}_threads"] = round(images_per_s(run, threads, batch, repeats), 1)
    row["onnxruntime_over_torch_2_threads"] = round(row["onnxruntime_2_threads"] / row["torch_2_threads"], 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["yolov8_n", "yolov5_n"])
    parser.add_argument("--sizes", nargs="*", type=int, default=[160, 256, 640])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    rows = []
    for model_name in args.models:
        for size in args.sizes:
            rows.append(measure(model_name, size, args.batch, max(2, args.repeats * 160 * 160 // (size * size))))
            print(rows[-1], flush=True)
    path = save("runtime", {"command": "bench/runtime_bench.py " + " ".join(sys.argv[1:]), "rows": rows})
    print(f"{'model':10} {'size':>5} {'torch 1t':>9} {'torch 2t':>9} {'ORT 1t':>8} {'ORT 2t':>8} {'ORT/torch':>9}  (images/s)")
    for r in rows:
        print(f"{r['model']:10} {r['size']:>5} {r['torch_1_threads']:>9} {r['torch_2_threads']:>9} "
              f"{r['onnxruntime_1_threads']:>8} {r['onnxruntime_2_threads']:>8} {r['onnxruntime_over_torch_2_threads']:>9}")
    print("written", path)


if __name__ == "__main__":
    main()
