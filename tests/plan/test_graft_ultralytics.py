"""compress(..., keep_class=True) on real ultralytics models built from their yaml configs (no
weights download): the pruned model, of ultralytics' own class, runs inside the YOLO wrapper:
predict, train (a custom trainer whose ``get_model`` returns it) and ONNX export. Skipped
where ultralytics is not installed (it is AGPL-3.0 and never a dependency of fxprune)."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import fxprune

os.environ.setdefault("YOLO_OFFLINE", "1")  # nothing is downloaded
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="fxprune-yolo-"))
ultralytics = pytest.importorskip("ultralytics")

X = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(0))
CONFIGS = ["yolov8n.yaml", "yolov8n-seg.yaml", "yolov8n-pose.yaml", "yolo11n.yaml"]


def _dataset(root: Path, task: str) -> Path:
    """Four 64x64 images per split with one box (a polygon for segment, 17 keypoints for
    pose) in YOLO label format, and the data yaml."""
    from PIL import Image

    rng = np.random.default_rng(0)
    line = {"segment": "0 0.25 0.25 0.75 0.25 0.75 0.625 0.25 0.625",
            "pose": "0 0.5 0.45 0.5 0.375 " + " ".join("0.5 0.5 2" for _ in range(17))
            }.get(task, "0 0.5 0.45 0.5 0.375")
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(4):
            img = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
            img[16:40, 16:48] = (255, 0, 0)
            Image.fromarray(img).save(root / "images" / split / f"{i}.jpg")
            (root / "labels" / split / f"{i}.txt").write_text(line + "\n")
    n = 1 if task == "pose" else 80
    names = "\n".join(f"  {i}: c{i}" for i in range(n))
    extra = "kpt_shape: [17, 3]\n" if task == "pose" else ""
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\n{extra}names:\n"
                    f"{names}\n")
    return data


@pytest.mark.parametrize("cfg", CONFIGS)
def test_pruned_yolo_predicts_trains_and_exports(cfg: str, tmp_path: Path) -> None:
    yolo = ultralytics.YOLO(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = fxprune.compress(yolo.model, 0.5, example_inputs=X, keep_class=True)
    assert type(small) is type(yolo.model)
    assert small.fxprune_meta["fxprune.verify"]["kind"] == "exact"
    cut = 1 - fxprune.count(small, X).macs / fxprune.count(yolo.model, X).macs
    assert cut >= 0.5, cut
    widths = {k: v.shape for k, v in small.state_dict().items()}

    yolo.model = small
    img = (np.random.default_rng(0).random((320, 320, 3)) * 255).astype(np.uint8)
    assert len(yolo.predict(img, imgsz=320, device="cpu", verbose=False)) == 1

    class PrunedTrainer(yolo._smart_load("trainer")):  # how ultralytics takes a custom model
        def get_model(self, cfg=None, weights=None, verbose=True):  # noqa: ANN001, ANN202
            return small

    yolo.train(trainer=PrunedTrainer, data=str(_dataset(tmp_path / "data", yolo.task)),
               epochs=1, imgsz=64, batch=2, device="cpu", workers=0, plots=False, amp=False,
               val=False, project=str(tmp_path / "runs"), name="t", exist_ok=True,
               verbose=False)
    assert type(yolo.model) is type(small)
    assert {k: v.shape for k, v in yolo.model.state_dict().items()} == widths  # still pruned

    pytest.importorskip("onnx")
    out = yolo.export(format="onnx", simplify=False, imgsz=320, device="cpu")
    assert Path(out).is_file()
