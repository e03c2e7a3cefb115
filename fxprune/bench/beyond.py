"""The models of ``--set detection`` and ``--set huggingface``: what torch.fx's symbolic tracer
cannot trace (issue 23), built with random weights and no download.

* ``detection``: torchvision detectors (``weights=None, weights_backbone=None``) fed one
  3x320x320 image (a list of one image, as torchvision detectors take) and, where
  ``ultralytics`` is installed, its YOLO models from their yaml configs fed a 1x3x320x320
  batch (:data:`ULTRALYTICS_SET`).
* ``huggingface``: ``transformers`` vision models from their default configs
  (``<Name>Config()``, ``<Name>ForImageClassification`` or the head in :data:`HF_HEAD`) fed one
  batch at the config's ``image_size``, BatchNorm statistics set on a random batch
  (:func:`calibrate_bn`).

MACs of a detector are counted on its **dense part** (:class:`DenseDetector`): the backbone
with its FPN and the dense head (RetinaNet, FCOS and SSD's ``head``, the R-CNNs' ``rpn.head``)
on the fixed image tensor (an ultralytics model is counted whole: its forward decodes boxes
but runs no NMS). What follows depends on the random weights' scores (how many boxes
survive NMS into the ROI heads), so it is neither counted nor comparable between two models.
"""

from __future__ import annotations

__all__ = ["DETECTION_SET", "ULTRALYTICS_SET", "HUGGINGFACE_SET", "HF_HEAD", "make_beyond",
           "known_beyond", "DenseDetector", "counted", "calibrate_bn", "structure", "head_modules"]

from typing import Any

import torch
import torch.nn as nn

#: The six torchvision detectors of issue 23.
DETECTION_SET: tuple[str, ...] = (
    "fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn", "fcos_resnet50_fpn",
    "ssdlite320_mobilenet_v3_large", "maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn")

#: Ultralytics models of ``--set detection`` where ``ultralytics`` is installed (AGPL-3.0: never a
#: dependency of fxprune), built from the package's yaml configs: name -> model class.
ULTRALYTICS_SET: dict[str, str] = {"yolov8n": "DetectionModel", "yolov8n-seg": "SegmentationModel",
                                   "yolov8n-pose": "PoseModel", "yolo11n": "DetectionModel"}

#: Hugging Face ``transformers`` model names (``<Name>Config``) of ``--set huggingface``.
HUGGINGFACE_SET: tuple[str, ...] = ("ResNet", "ConvNext", "ViT", "Swin", "MobileViT",
                                    "Segformer")

#: Heads other than ``<Name>ForImageClassification``.
HF_HEAD: dict[str, str] = {"Segformer": "SegformerForSemanticSegmentation"}

#: The image side of every detector's input.
DETECTION_SIDE = 320


def known_beyond(source: str) -> set[str]:
    """The model names ``source`` (``detection`` or ``huggingface``) can build here."""
    if source == "detection":
        import importlib.util

        import torchvision

        names = set(torchvision.models.list_models(module=torchvision.models.detection))
        if importlib.util.find_spec("ultralytics") is not None:
            names |= set(ULTRALYTICS_SET)
        return names
    try:
        import transformers
    except ImportError:
        return set()
    return {n for n in HUGGINGFACE_SET if hasattr(transformers, f"{n}Config")}


def make_beyond(name: str, source: str) -> tuple[nn.Module, tuple[Any, ...]]:
    """A randomly initialised model in eval mode and its one random input."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    if source == "huggingface":
        import transformers

        cfg = getattr(transformers, f"{name}Config")()
        cls = getattr(transformers, HF_HEAD.get(name, f"{name}ForImageClassification"))
        size = getattr(cfg, "image_size", 224)
        size = size if isinstance(size, int) else 224
        model = calibrate_bn(cls(cfg), torch.randn(2, 3, size, size, generator=gen))
        return model, (torch.randn(1, 3, size, size, generator=gen),)
    if name in ULTRALYTICS_SET:
        from ultralytics.nn import tasks

        yolo = getattr(tasks, ULTRALYTICS_SET[name])(f"{name}.yaml", verbose=False).eval()
        return yolo, (torch.rand(1, 3, DETECTION_SIDE, DETECTION_SIDE, generator=gen),)
    import torchvision

    model = torchvision.models.get_model(name, weights=None, weights_backbone=None).eval()
    side = DETECTION_SIDE
    return model, ([torch.rand(3, side, side, generator=gen)],)


def calibrate_bn(model: nn.Module, batch: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics to those of ``batch`` (one forward in train
    mode, cumulative average); returns the model in eval mode. Hugging Face initialises convs
    with std 0.02: with the default running variance 1, activations shrink ~20x per conv and
    MobileViT's logits end at 1e-41, which makes the oracle's check vacuous."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        with torch.no_grad():
            model(batch)
        for m in bns:
            m.momentum = 0.1
    return model.eval()


class DenseDetector(nn.Module):
    """A detector's backbone (with FPN) and dense head on a batched image tensor: the part of
    a detector whose cost does not depend on how many boxes survive NMS."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.backbone = detector.backbone
        rpn = getattr(detector, "rpn", None)
        self.head = rpn.head if rpn is not None else detector.head

    def forward(self, x: torch.Tensor) -> Any:
        feats = self.backbone(x)
        feats = list(feats.values()) if isinstance(feats, dict) else [feats]
        return self.head(feats)


def counted(model: nn.Module, inputs: tuple[Any, ...], source: str
            ) -> tuple[nn.Module, tuple[Any, ...]]:
    """The module and inputs whose MACs the benchmark counts: a detector's
    :class:`DenseDetector` on the stacked images, any other model itself."""
    if source != "detection" or not hasattr(model, "backbone"):
        return model, inputs  # an ultralytics model: no NMS inside its forward
    images = inputs[0] if isinstance(inputs[0], (list, tuple)) else [inputs[0]]
    return DenseDetector(model), (torch.stack(list(images)),)


def head_modules(model: nn.Module, source: str) -> list[nn.Module]:
    """What Torch-Pruning must not prune: a detector's heads, a Hugging Face model's
    ``classifier`` (SegFormer's ``decode_head.classifier``)."""
    if source == "detection" and not hasattr(model, "backbone"):  # ultralytics: Detect head
        return [model.model[-1]]
    if source == "detection":
        names = ("head", "rpn", "roi_heads")
        return [getattr(model, n) for n in names if isinstance(getattr(model, n, None),
                                                                nn.Module)]
    for path in ("classifier", "decode_head.classifier"):
        try:
            m = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(m, nn.Module) and any(True for _ in m.parameters()):
            return [m]
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]


def structure(out: Any) -> Any:
    """An output's structure: list/tuple lengths, dict keys and class names, tensor ranks (a
    detector's boxes: their count depends on the scores, so only the rank)."""
    if isinstance(out, (list, tuple)) and not hasattr(out, "keys"):
        return [type(out).__name__, [structure(o) for o in out]]
    if hasattr(out, "keys"):
        return [type(out).__name__, sorted((k, structure(out[k])) for k in out)]
    if isinstance(out, torch.Tensor):
        return f"Tensor[{out.dim()}]"
    return type(out).__name__
