"""The model sets of ``fxprune bench prunability`` and how a child process builds one model.

A set belongs to a *source*: ``timm`` (``--set default``, ``--set ci``) or ``torchvision``
(``--set torchvision``), ``detection`` (``--set detection``: torchvision detectors) or
``huggingface`` (``--set huggingface``: ``transformers`` vision models from their configs; both
in :mod:`fxprune.bench.beyond`). ``--models`` names models of the same source (timm unless
``--set torchvision``). Every model is created with random weights in eval mode and fed one
random batch: timm's ``pretrained_cfg["input_size"]``, torchvision's 3x224x224. Weights a
library initialises to all zeros (torchvision ViT's classifier) are drawn at random instead
(:func:`unzero`): with a zero head every output is 0 and the oracle's check proves nothing.
"""

from __future__ import annotations

__all__ = ["DETECTION_SET", "HUGGINGFACE_SET", "DEFAULT_SET", "CI_SMALL", "TORCHVISION_SET",
           "SETS", "source_of", "known_models",
           "model_set", "family_of", "make_model", "unzero", "classifiers"]

from typing import Any

from fxprune.bench.beyond import (
    DETECTION_SET,
    HUGGINGFACE_SET,
    ULTRALYTICS_SET,
    known_beyond,
    make_beyond,
)

#: One or two small-ish members of each timm CNN family (checked against timm.list_models()).
DEFAULT_SET: tuple[str, ...] = (
    "gernet_s", "mobileone_s0",                       # byobnet
    "botnet26t_256", "halonet26t",                    # byoanet
    "convmixer_1024_20_ks9_p14",                      # convmixer
    "convnext_atto",                                  # convnext
    "cspresnet50", "cs3darknet_s",                    # cspnet
    "densenet121",                                    # densenet
    "dla34", "dla46x_c",                              # dla
    "dpn68",                                          # dpn
    "edgenext_xx_small",                              # edgenext
    "efficientformer_l1",                             # efficientformer
    "efficientformerv2_s0",                           # efficientformer_v2
    "efficientnet_b0", "mobilenetv2_050", "mnasnet_small", "mixnet_s", "tinynet_e",
    "fbnetc_100",                                     # efficientnet (incl. variants)
    "fasternet_t0",                                   # fasternet
    "fastvit_t8",                                     # fastvit
    "ghostnet_100", "ghostnetv2_100",                 # ghostnet
    "hardcorenas_a",                                  # hardcorenas
    "hgnet_tiny", "hgnetv2_b0",                       # hgnet
    "hrnet_w18_small",                                # hrnet
    "inception_next_atto",                            # inception_next
    "inception_resnet_v2",                            # inception_resnet_v2
    "inception_v3",                                   # inception_v3
    "inception_v4",                                   # inception_v4
    "lcnetv2_small",                                  # lcnetv2
    "mambaout_femto",                                 # mambaout
    "poolformer_s12", "convformer_s18",               # metaformer
    "mobilenetv3_small_100", "lcnet_050",             # mobilenetv3
    "mobilenetv5_300m",                               # mobilenetv5
    "mobilevit_xxs", "mobilevitv2_050",               # mobilevit
    "nasnetalarge",                                   # nasnet
    "nf_regnet_b0", "nf_resnet26",                    # nfnet
    "pnasnet5large",                                  # pnasnet
    "rdnet_tiny",                                     # rdnet
    "regnetx_002", "regnety_002",                     # regnet
    "repghostnet_050",                                # repghost
    "repvit_m1",                                      # repvit
    "res2net50_26w_4s", "res2next50",                 # res2net
    "resnest14d",                                     # resnest
    "resnet18", "resnet50",                           # resnet
    "resnetv2_50", "resnetv2_50x1_bit",               # resnetv2
    "rexnet_100",                                     # rexnet
    "selecsls42b",                                    # selecsls
    "legacy_seresnet18",                              # senet
    "skresnet18",                                     # sknet
    "starnet_s050",                                   # starnet
    "tresnet_m",                                      # tresnet
    "vgg11_bn",                                       # vgg
    "ese_vovnet19b_dw",                               # vovnet
    "legacy_xception",                                # xception
)

#: Five small families added to timm's ``test_*`` models in ``--set ci``.
CI_SMALL: tuple[str, ...] = ("resnet10t", "regnetx_002", "mobilenetv3_small_050",
                             "ghostnet_050", "dla46_c")

#: One ImageNet classifier per torchvision family (``--set torchvision``), CNNs and the
#: transformers whose attention fxprune keeps or prunes.
TORCHVISION_SET: tuple[str, ...] = (
    "resnet50", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_800mf", "convnext_tiny",
    "vit_b_16", "swin_t", "maxvit_t", "densenet121", "shufflenet_v2_x1_0", "squeezenet1_0",
)

#: ``--set`` name -> its source.
SETS: dict[str, str] = {"default": "timm", "ci": "timm", "torchvision": "torchvision",
                        "detection": "detection", "huggingface": "huggingface"}

#: The input of every torchvision model (timm models use their ``pretrained_cfg``).
TORCHVISION_INPUT: tuple[int, ...] = (3, 224, 224)


def source_of(set_name: str | None) -> str:
    """The source (``timm`` or ``torchvision``) of a ``--set`` name (None: timm)."""
    if set_name is None:
        return "timm"
    if set_name not in SETS:
        raise ValueError(f"unknown model set {set_name!r} (choose one of {', '.join(SETS)})")
    return SETS[set_name]


def known_models(source: str) -> set[str]:
    """Every model name ``source`` can build."""
    if source in ("detection", "huggingface"):
        return known_beyond(source)
    if source == "torchvision":
        import torchvision

        return set(torchvision.models.list_models(module=torchvision.models))
    import timm

    return set(timm.list_models())


def model_set(name: str) -> list[str]:
    """The models of ``--set default``, ``ci`` or ``torchvision`` (only names the installed
    library knows)."""
    known = known_models(source_of(name))
    if name == "default":
        return [m for m in DEFAULT_SET if m in known]
    if name == "torchvision":
        return [m for m in TORCHVISION_SET if m in known]
    if name in ("detection", "huggingface"):
        names = (*DETECTION_SET, *ULTRALYTICS_SET) if name == "detection" else HUGGINGFACE_SET
        return [m for m in names if m in known]
    import timm

    return sorted(timm.list_models("test_*")) + [m for m in CI_SMALL if m in known]


def family_of(name: str, source: str = "timm") -> str:
    """The module a model is defined in (its family), e.g. ``efficientnet``."""
    if source == "huggingface":
        return "transformers"
    if name in ULTRALYTICS_SET:
        return "ultralytics"
    try:
        if source in ("torchvision", "detection"):
            import torchvision

            module = torchvision.models.get_model_builder(name).__module__
        else:
            import timm

            module = timm.models.model_entrypoint(name).__module__
        return module.rsplit(".", 1)[-1]
    except Exception:  # noqa: BLE001 - unknown to the installed library
        return "?"


def make_model(name: str, source: str = "timm") -> tuple[Any, tuple[Any, ...]]:
    """A randomly initialised model in eval mode and its one random input batch."""
    import torch

    if source in ("detection", "huggingface"):
        return make_beyond(name, source)
    torch.manual_seed(0)
    if source == "torchvision":
        import torchvision

        model = torchvision.models.get_model(name, weights=None)
        size: tuple[int, ...] = TORCHVISION_INPUT
    else:
        import timm

        model = timm.create_model(name, pretrained=False)
        size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    model.eval()
    x = torch.randn((1, *size), generator=torch.Generator().manual_seed(0))
    return model, (x,)


def unzero(model: Any, std: float = 0.02) -> list[str]:
    """Draw every all-zero parameter of two or more dims (a weight, a token) from a normal
    distribution (seeded); returns their names."""
    import torch

    gen = torch.Generator().manual_seed(1)
    names = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and p.numel() and not bool(p.any()):
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
                names.append(name)
    return names


def classifiers(model: Any) -> list[Any]:
    """The classifier modules Torch-Pruning must not prune: timm's ``get_classifier()``, else
    the last Linear, else (SqueezeNet's head is a conv) the last Conv2d."""
    import torch.nn as nn

    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    items = list(head) if isinstance(head, (tuple, list)) else [head]
    mods = [m for m in items if isinstance(m, nn.Module)]
    for kind in (nn.Linear, nn.Conv2d):
        if mods:
            break
        mods = [m for m in model.modules() if isinstance(m, kind)][-1:]
    return mods
