"""Where the time of one batch goes, stage by stage, as one CPU model-actor thread runs it.

Trains yolov8_n one epoch on generated data (as ``infer_bench.py`` does), then runs the
actor's steps on batches of ``--batch`` generated 256 px candidates in this process, with
one thread (each thread of a CPU model actor runs so), and times each step:
read (file bytes), decode + test pipeline (PIL, letterbox; and each step of the pipeline
alone: the model's resize, letterbox, packing), data preprocessor (stack, normalise),
network (backbone, neck, head), boxes (decoding, score threshold, NMS) and the result rows
(JSON). Medians over ``--batches`` batches after two warm-up batches; a
torch profiler table of the torch network's top operators is kept beside them. The network
runs as ``--cpu-runtime`` says (the actor's ``Detector.network``; default torch).

    .venv/bin/python bench/profile_batch.py [--batch 8] [--batches 40] [--cpu-runtime onnxruntime]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import save  # noqa: E402
from bench.scaling_bench import train_model  # noqa: E402
from ray_app.data.sample import make_dataset  # noqa: E402

SIZE = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--size", type=int, default=SIZE, help="the candidates' size in px")
    parser.add_argument("--input", type=int, default=0, help="the model's input size (default: --size)")
    parser.add_argument("--cpu-runtime", default="torch", choices=["torch", "onnxruntime"],
                        help="what runs the network, as the template's cpu_runtime (onnxruntime: profile_onnxruntime.json)")
    args = parser.parse_args()
    import numpy as np
    import torch

    from ray_app.infer.actors import Preprocess, detection_row
    from ray_app.infer.images import decode_bgr, read_batch
    from ray_app.infer.model import Detector, inference_pipeline, load_stage

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        work = Path(tmp)
        n = args.batch * (args.batches + 2)
        size = args.input or args.size
        data = make_dataset(work / "data", n_train=32, n_val=8, n_candidates=n, image_size=args.size, seed=11)
        models, best, files = train_model(work, data, size)
        params = SimpleNamespace(model_params_path=[f"{best}/{f}" for f in files],
                                 class_names=data.class_names, img_size=size, conf_threshold=0.2, iou_threshold=0.65,
                                 cfg_options="")
        bundle = load_stage(params, str(models))
        preprocess = Preprocess(inference_pipeline(bundle.cfg), size)
        detector = Detector(bundle, "cpu", args.cpu_runtime)
        model = detector.model
        head = model.bbox_head
        paths = data.candidate_index.read_text().split()
        times: dict[str, list[float]] = {k: [] for k in ("read", "decode", "decode_and_pipeline", "data_preprocessor",
                                                          "network", "boxes_and_nms", "result_rows")}

        steps: dict[str, list[float]] = {}  # each step of the test pipeline alone, ms per batch

        def timed(name: str, fn, *a, **kw):
            start = time.perf_counter()
            out = fn(*a, **kw)
            times[name].append(1000 * (time.perf_counter() - start))
            return out

        with torch.no_grad():
            for i in range(0, len(paths), args.batch):
                batch = timed("read", read_batch, {"path": np.array(paths[i:i + args.batch], dtype=object)})
                # alone, for its share; then each step of the test pipeline on its own
                state = [dict(img=image, img_id=k) for k, image in
                         enumerate(timed("decode", lambda encoded: [decode_bgr(e) for e in encoded], batch["data"]))]
                for transform in preprocess.pipeline.transforms:
                    start = time.perf_counter()
                    state = [transform(sample) for sample in state]
                    steps.setdefault(type(transform).__name__, []).append(1000 * (time.perf_counter() - start))
                samples = timed("decode_and_pipeline", preprocess.samples, batch["data"], list(batch["error"]))
                data_in = timed("data_preprocessor", model.data_preprocessor,
                                {"inputs": [s["inputs"] for s in samples],
                                 "data_samples": [s["data_samples"] for s in samples]}, False)
                inputs = data_in["inputs"].contiguous(memory_format=detector.memory_format)  # as Detector.forward
                outs = timed("network", lambda x: detector.network(x, False)[0], inputs)
                results = timed("boxes_and_nms", head.predict_by_feat, *outs, rescale=True,
                                batch_img_metas=[s.metainfo for s in data_in["data_samples"]])
                timed("result_rows", lambda rs: [detection_row(r.bboxes, r.scores, r.labels) for r in rs], results)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                head(model.extract_feat(inputs))
        ops = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8)

    medians = {k: round(statistics.median(v[2:]), 2) for k, v in times.items()}
    step_medians = {k: round(statistics.median(v[2:]), 2) for k, v in steps.items()}
    total = sum(v for k, v in medians.items() if k != "decode")  # decode_and_pipeline holds it
    print(f"one batch of {args.batch} images ({args.size} px, input {size}, yolov8_n), the network in {args.cpu_runtime}, "
          f"1 thread, median of {args.batches}:")
    for name, ms in medians.items():
        print(f"  {name:22} {ms:8.2f} ms  {100 * ms / total:5.1f} %")
    print(f"  {'total':22} {total:8.2f} ms  = {1000 * args.batch / total:.1f} images/s on one core")
    print("  the test pipeline, step by step (within decode_and_pipeline):")
    for name, ms in step_medians.items():
        print(f"    {name:20} {ms:8.2f} ms  {100 * ms / total:5.1f} %")
    print(f"  the network's share of a batch, {100 * medians['network'] / total:.1f} %, is the most a model actor's "
          "steady rate can reach of the forward limit, with Ray costing nothing")
    print(ops)
    name = "profile" if args.cpu_runtime == "torch" else f"profile_{args.cpu_runtime}"
    name += f"_{args.size}px_input{size}" if (args.size, size) != (SIZE, SIZE) else ""
    path = save(name, {"cpu_runtime": args.cpu_runtime, "batch": args.batch, "batches": args.batches, "image_size": args.size, "img_size": size, "model": "yolov8_n",
                            "torch_threads": 1, "median_ms": medians, "pipeline_steps_ms": step_medians,
                            "total_ms": round(total, 2), "network_share": round(medians["network"] / total, 3),
                            "images_per_s_one_core": round(1000 * args.batch / total, 1), "network_top_ops": ops})
    print(f"full results: {path}")


if __name__ == "__main__":
    main()
