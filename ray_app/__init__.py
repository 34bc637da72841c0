"""ray_app: a YMIR executor for mmyolo detectors, running on Ray.

Folders, one concern each:
- ``protocol/``: what YMIR reads and writes (env, hyperparameters, monitor, results).
- ``data/``:     YMIR datasets to COCO, and a synthetic sample workspace.
- ``train/``:    training with Ray Train wrapping the mmengine Runner.
- ``infer/``:    inference with Ray Data and a pool of model actors.
- ``mining/``:   active-learning scores, one module per algorithm.
"""

__version__ = "0.1.0"
