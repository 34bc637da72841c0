"""A detector as one traceable function of raw pixels: what an exported model computes.

Every detection head of the zoo (yolov5, yolov6, yolov7, yolov8, yolox, rtmdet, ppyoloe+)
decodes with the one ``YOLOv5Head.predict_by_feat`` it inherits: flatten each level's maps,
decode the box of every prior with the head's own prior generator and box coder, take the
sigmoid of the class logits, multiply by the objectness where the head has one. Then, per
image, it filters by score, runs NMS and rescales to the original image: data-dependent
steps that depend on the deployment's own thresholds. :class:`DecodedDetector` computes the
first part, for a whole batch, with the model's own modules; the second is left to the
runtime that serves the export (as mmyolo's easydeploy does without its NMS plugins, and
the sister yolov5 executor's ``export.py``). The model's input normalisation is part of it:
the exported graph takes the pixels the test pipeline gives.

``tests/test_export.py`` checks, for every family, that its outputs are what
``predict_by_feat`` keeps before NMS.
"""

from __future__ import annotations

import torch
from torch import nn

from ray_app.protocol.errors import ErrorCode, YmirError


def check_decodable(model: nn.Module) -> None:
    """300004 unless the model's head decodes as :class:`DecodedDetector` does (a head of
    another kind, e.g. from a foreign config, would be exported wrongly without a word)."""
    from mmyolo.models.dense_heads import YOLOv5Head

    head = getattr(model, "bbox_head", None)
    if getattr(type(head), "predict_by_feat", None) is not YOLOv5Head.predict_by_feat:
        raise YmirError(ErrorCode.MODEL, f"the head {type(head).__name__} decodes its boxes in its own way: only "
                                         "heads that use YOLOv5Head's decoding (every model_name of the zoo) "
                                         "can be exported")


class DecodedDetector(nn.Module):
    """``images (B, 3, H, W)``, float pixels 0-255 in the channel order the test pipeline
    loads (BGR) -> ``boxes (B, N, 4)`` x1, y1, x2, y2 in input pixels and ``scores (B, N, C)``
    in [0, 1], objectness folded in: one row per prior of every level, before any threshold
    or NMS. ``model`` is an mmyolo detector in eval mode."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        check_decodable(model)
        self.model = model
        preprocessor = model.data_preprocessor
        self.swap_channels = bool(getattr(preprocessor, "_channel_conversion", False))
        self.normalize = bool(getattr(preprocessor, "_enable_normalize", False))
        if self.normalize:
            self.register_buffer("mean", preprocessor.mean.detach().clone().float(), persistent=False)
            self.register_buffer("std", preprocessor.std.detach().clone().float(), persistent=False)
        # in eval mode from the start: the exporter puts a module back in the mode it found it
        # in, and heads in training mode give other outputs (yolov8's: the DFL distributions)
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.swap_channels:
            images = images[:, [2, 1, 0]]
        if self.normalize:
            images = (images - self.mean) / self.std
        head = self.model.bbox_head
        outs = head(self.model.extract_feat(images))
        class_maps, box_maps = outs[0], outs[1]
        objectness = outs[2] if len(outs) > 2 else None
        batch = images.shape[0]
        sizes = [m.shape[2:] for m in class_maps]
        priors = torch.cat(head.prior_generator.grid_priors(sizes, dtype=images.dtype, device=images.device))
        strides = torch.cat([priors.new_full((size.numel() * head.num_base_priors,), stride)
                             for size, stride in zip(sizes, head.featmap_strides)])
        scores = torch.cat([m.permute(0, 2, 3, 1).reshape(batch, -1, head.num_classes) for m in class_maps],
                           dim=1).sigmoid()
        deltas = torch.cat([m.permute(0, 2, 3, 1).reshape(batch, -1, 4) for m in box_maps], dim=1)
        boxes = head.bbox_coder.decode(priors[None], deltas, strides)
        if objectness is not None:
            scores = scores * torch.cat([m.permute(0, 2, 3, 1).reshape(batch, -1) for m in objectness],
                                        dim=1).sigmoid()[..., None]
        return boxes, scores
