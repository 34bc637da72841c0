"""What the ONNX export of the best stage costs, and what its file runs at on the CPU.

For the smallest model of every family (or --models) at --size, untrained
(``common.untrained_detector``: speed and size do not depend on the weights): the export and its
check as training runs them (``ray_app.export.task.export_stage``: the export, then ONNX
Runtime against torch on 2 images), the file's size, then the median latency of one image
through the exported graph, in torch (the executor's own layout: channels-last) and in ONNX
Runtime, both on every core of the machine, --runs times each after 2 warm-up runs.

    .venv/bin/python bench/export_bench.py      # writes bench/results/export.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save, untrained_detector  # noqa: E402


def median_ms(run, runs: int) -> float:
    for _ in range(2):
        run()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def measure(model_name: str, size: int, runs: int) -> dict:
    import numpy as np
    import onnxruntime
    import torch

    from ray_app.export.decode import DecodedDetector
    from ray_app.export.formats import FORMATS
    from ray_app.export.task import export_stage

    model, bundle = untrained_detector(model_name, size)
    detector = DecodedDetector(model)
    started = time.perf_counter()
    data, box_error, score_error = export_stage(FORMATS["onnx"], detector, bundle, "epoch_1", opset=11)
    export_s = time.perf_counter() - started
    image = np.random.default_rng(0).uniform(0, 255, (1, 3, size, size)).astype(np.float32)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    fast = detector.to(memory_format=torch.channels_last)
    tensor = torch.from_numpy(image).contiguous(memory_format=torch.channels_last)

    def torch_run():
        with torch.no_grad():
            fast(tensor)

    return {"model": model_name, "size": size, "export_and_check_s": round(export_s, 2),
            "file_mb": round(len(data) / 1e6, 1), "max_box_error_px": box_error, "max_score_error": score_error,
            "torch_ms": round(median_ms(torch_run, runs), 1),
            "onnxruntime_ms": round(median_ms(lambda: session.run(None, {"images": image}), runs), 1)}


def main() -> None:
    from ray_app.model_config.zoo import FAMILIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=[f.smallest for f in FAMILIES.values()])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    rows = []
    for name in args.models:
        rows.append(measure(name, args.size, args.runs))
        print(rows[-1], flush=True)
    path = save("export", {"command": "bench/export_bench.py " + " ".join(sys.argv[1:]), "rows": rows})
    print(f"{'model':16} {'export+check s':>14} {'MB':>6} {'torch ms':>9} {'ORT ms':>8}")
    for r in rows:
        print(f"{r['model']:16} {r['export_and_check_s']:>14} {r['file_mb']:>6} {r['torch_ms']:>9} "
              f"{r['onnxruntime_ms']:>8}")
    print("written", path)


if __name__ == "__main__":
    main()
