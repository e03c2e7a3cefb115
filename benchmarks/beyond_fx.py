"""Models torch.fx's symbolic tracer cannot trace (issue 23): torchvision detectors and Hugging
Face ``transformers`` vision models from their default configs, pruned at a ratio with random
weights (no downloads), each in its own process.

    python -P benchmarks/beyond_fx.py --set detection \
        --out benchmarks/results/beyond_fx_detection.json
    python -P benchmarks/beyond_fx.py --set huggingface \
        --out benchmarks/results/beyond_fx_huggingface.json

Per model: fxprune's tracer (symbolic/concrete, or "regions" when the model's own forward
cannot be traced and its children are pruned), the modules kept opaque and why, each opaque
region's outcome (its children's own oracle verdicts), the oracle's verdict on the traced
part (which also compares the opaque modules' inputs: a detector's features before its RPN
and heads), MACs and params cut (fxprune.count), whether the output keeps its structure
(a detector's list of boxes/labels/scores dicts, a Hugging Face output class) and the
seconds of ``compress``. ``transformers`` is optional: the huggingface set needs it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

DETECTION = ("fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn",
             "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large", "maskrcnn_resnet50_fpn",
             "keypointrcnn_resnet50_fpn")
HUGGINGFACE = ("ResNet", "ConvNext", "ViT", "Swin", "MobileViT", "Segformer")
_HF_HEAD = {"Segformer": "SegformerForSemanticSegmentation"}


def make(name: str) -> tuple[Any, tuple]:
    import torch

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    if name in HUGGINGFACE:
        import transformers

        cfg = getattr(transformers, f"{name}Config")()
        cls = getattr(transformers, _HF_HEAD.get(name, f"{name}ForImageClassification"))
        size = getattr(cfg, "image_size", 224)
        size = size if isinstance(size, int) else 224
        return cls(cfg).eval(), (torch.randn(1, 3, size, size, generator=gen),)
    import torchvision

    model = torchvision.models.get_model(name, weights=None, weights_backbone=None).eval()
    return model, ([torch.rand(3, 320, 320, generator=gen)],)


def _structure(out: Any) -> Any:
    if isinstance(out, list):
        return [_structure(o) for o in out]
    if isinstance(out, dict):
        return [type(out).__name__, sorted(out)]
    return type(out).__name__


def child(name: str, ratio: float) -> dict[str, Any]:
    import warnings

    import torch

    import fxprune

    row: dict[str, Any] = {"model": name}
    model, inputs = make(name)
    with torch.no_grad():
        ref = model(*inputs)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = fxprune.compress(model, ratio, example_inputs=inputs)
    row["seconds"] = round(time.perf_counter() - t, 1)
    meta = getattr(pruned, "meta", None) or pruned.__dict__.get("fxprune_meta", {})
    row["returns"] = type(pruned).__name__
    row["tracer"] = "regions" if "" in (meta.get("fxprune.opaque") or {}) else \
        fxprune.trace(model, inputs).meta["fxprune.tracer"]
    row["opaque"] = {k or "<root>": v[:200] for k, v in (meta.get("fxprune.opaque") or {}).items()}
    if not row["opaque"]:
        row["opaque"] = {k: v[:200] for k, v in
                         fxprune.trace(model, inputs).meta["fxprune.opaque"].items()}
    row["regions"] = meta.get("fxprune.regions", {})
    v = meta.get("fxprune.verify")
    row["oracle"] = str(v) if v is not None else "per region (see regions)"
    c0, c1 = fxprune.count(model, inputs), fxprune.count(pruned, inputs)
    row.update(macs=c0.macs, pruned_macs=c1.macs, macs_cut=round(1 - c1.macs / c0.macs, 4),
               params=c0.params, pruned_params=c1.params,
               params_cut=round(1 - c1.params / c0.params, 4))
    with torch.no_grad():
        out = pruned(*inputs)
    row["same_structure"] = _structure(out) == _structure(ref)
    row["output"] = str(_structure(out))[:120]
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", choices=("detection", "huggingface"), default="detection")
    ap.add_argument("--models", help="comma-separated subset")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", default="beyond_fx.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.ratio)))
        return 0
    names = args.models.split(",") if args.models else \
        list(DETECTION if args.set == "detection" else HUGGINGFACE)
    rows = []
    for name in names:
        cmd = [sys.executable, "-P", __file__, "--child", name, "--ratio", str(args.ratio)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(lines[-1]) if lines else {
                "model": name, "error": (r.stderr.strip().splitlines() or ["?"])[-1][:400]}
        except subprocess.TimeoutExpired:
            row = {"model": name, "error": f"timeout after {args.timeout:.0f} s"}
        rows.append(row)
        print(json.dumps({k: row.get(k) for k in ("model", "macs_cut", "oracle", "error")}),
              flush=True)
    import torch
    import torchvision

    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    try:
        import transformers

        versions["transformers"] = transformers.__version__
    except ImportError:
        pass
    with open(args.out, "w") as f:
        json.dump({"command": "python -P benchmarks/beyond_fx.py " + " ".join(sys.argv[1:]),
                   "date": time.strftime("%Y-%m-%d %H:%M:%S"), "ratio": args.ratio,
                   "weights": "random (weights=None, weights_backbone=None / default configs)",
                   **versions, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
