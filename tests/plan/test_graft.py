"""fxprune.graft and compress(..., keep_class=True): the pruned model as a copy of the user's
own class, on the YOLO-like replica (tests/yolo_replica.py) and the Hugging Face-style one."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from concrete_replicas import C2fNet, ClassifierOutput, HFModel, lively
from yolo_replica import YoloLike

import fxprune
from fxprune.plan.graft import GraftError

X = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _snapshot(model: torch.nn.Module) -> tuple[dict, dict]:
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {n: m.training for n, m in model.named_modules()})


@pytest.fixture(scope="module")
def kept() -> tuple[YoloLike, torch.nn.Module, list]:
    """(the user's model, compress(keep_class=True)'s result, the warnings)."""
    torch.manual_seed(0)
    model = lively(YoloLike()).train()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        small = fxprune.compress(model, 0.5, example_inputs=X, keep_class=True)
    return model, small, [str(w.message) for w in seen]


def test_keep_class_returns_the_users_class_with_its_attributes(kept) -> None:
    model, small, _ = kept
    assert type(small) is YoloLike
    assert small.names == model.names and small.yaml == model.yaml and small.args == model.args
    assert torch.equal(small.stride, model.stride) and small.save == model.save
    assert torch.equal(small.model[-1].stride, model.stride)
    assert [(m.i, m.f, m.type) for m in small.model] == [(m.i, m.f, m.type) for m in model.model]
    assert small.training == model.training  # the user's flags, not the trace's eval mode
    report = small.fxprune_meta["fxprune.verify"]
    assert report["kind"] == "exact" and report["ok"], report


def test_keep_class_cuts_half_the_macs_and_keeps_chunks_equal(kept) -> None:
    model, small, _ = kept
    before = fxprune.count(copy.deepcopy(model).eval(), X).macs
    after = fxprune.count(copy.deepcopy(small).eval(), X).macs
    assert 1 - after / before >= 0.5
    for i in (2, 4, 8):  # C2f: cv1's output chunks into two equal pieces, self.c follows
        block = small.model[i]
        assert block.cv1.conv.out_channels == 2 * block.c
        assert block.m[0].cv1.conv.in_channels == block.c
        assert small.fxprune_meta["fxprune.width_attrs"][f"model.{i}.c"][1] == block.c


def test_forward_split_reads_the_updated_width(kept) -> None:
    _, small, _ = kept
    block = copy.deepcopy(small.model[4]).eval()
    x = torch.rand(1, block.cv1.conv.in_channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block.forward_split(x), block(x))


def test_attention_reading_its_widths_is_kept_with_a_reason(kept) -> None:
    _, small, messages = kept
    why = small.fxprune_meta["fxprune.kept"]
    assert list(why) == ["model.5.attn"]
    assert why["model.5.attn"].startswith("Attention: ")
    assert small.model[5].attn.qkv.conv.out_channels == 128  # kept whole
    assert sum("keep_class" in m for m in messages) == 1  # warned once


def test_the_result_pickles_without_fxprune_classes(kept) -> None:
    """A checkpoint of the result (ultralytics pickles the model into best.pt) loads where
    fxprune is not installed: its metadata is plain data."""
    _, small, _ = kept
    seen: set[str] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module: str, name: str):  # noqa: ANN201
            seen.add(module)
            return super().find_class(module, name)

    Recorder(io.BytesIO(pickle.dumps(small))).load()
    assert not [m for m in seen if m.split(".")[0] == "fxprune"], seen
    assert "fxprune.example_inputs" not in small.fxprune_meta


def test_train_mode_returns_the_original_structure_and_backward_works(kept) -> None:
    model, small, _ = kept
    ref = copy.deepcopy(model).train()(X)
    train = copy.deepcopy(small).train()
    out = train(X)
    assert isinstance(out, list) and len(out) == len(ref)
    assert [o.shape for o in out] == [r.shape for r in ref]  # the raw maps keep their widths
    sum(o.square().mean() for o in out).backward()
    assert all(p.grad is not None for p in train.parameters())
    boxes, maps = train.eval()(X)  # eval: decoded boxes, as the original's
    assert boxes.shape == copy.deepcopy(model).eval()(X)[0].shape


def test_the_users_model_is_untouched() -> None:
    model = lively(YoloLike(attention=False)).train()
    model.model[3].eval()  # mixed flags survive too
    state, flags = _snapshot(model)
    small = fxprune.compress(model, 0.5, example_inputs=X, keep_class=True)
    pruned = fxprune.compress(model, 0.5, example_inputs=X, ignore=["model.2", "model.4",
                                                                   "model.8"])
    grafted = fxprune.graft(model, pruned)
    after_state, after_flags = _snapshot(model)
    assert after_flags == flags
    assert all(torch.equal(state[k], after_state[k]) for k in state)
    assert small.model[3].training is False and grafted.model[3].training is False
    assert not any(p is q for p in grafted.parameters() for q in pruned.parameters())


def test_graft_equals_the_pruned_graph_module() -> None:
    model = lively(YoloLike(attention=False))
    pruned = fxprune.compress(model, 0.5, example_inputs=X, ignore=["model.2", "model.4",
                                                                   "model.8"])
    grafted = fxprune.graft(model, pruned)  # example inputs: the ones compress recorded
    assert type(grafted) is YoloLike
    with torch.no_grad():
        torch.testing.assert_close(grafted.eval()(X), pruned.eval()(X))
    assert fxprune.count(grafted, X).macs == fxprune.count(pruned, X).macs


def test_graft_names_the_c2f_whose_chunk_no_longer_splits() -> None:
    model = lively(YoloLike(attention=False))
    pruned = fxprune.compress(model, 0.5, example_inputs=X)
    with pytest.raises(fxprune.InputError, match=r"'model\.\d' \(C2f\).*ignore=\['model\.\d'\]"
                       ) as e:
        fxprune.graft(model, pruned)
    assert isinstance(e.value, GraftError) and e.value.cls == "C2f"
    net = lively(C2fNet())
    with pytest.raises(fxprune.InputError, match=r"'block' \(C2f\)"):
        fxprune.graft(net, fxprune.compress(net, 0.5, example_inputs=X))


def test_graft_rejects_a_model_the_pruned_one_was_not_made_from() -> None:
    pruned = fxprune.compress(lively(C2fNet()), 0.5, example_inputs=X, ignore=["block"])
    with pytest.raises(fxprune.InputError, match="no layer of the HFModel"):
        fxprune.graft(HFModel(), pruned)


def test_hugging_face_style_model_keeps_its_class() -> None:
    model = lively(HFModel())
    x = torch.rand(2, 3, 32, 32)
    small = fxprune.compress(model, 0.5, example_inputs=x, keep_class=True)
    assert type(small) is HFModel and small.config is not model.config
    out = small(x)
    assert isinstance(out, ClassifierOutput) and out.logits.shape == (2, 5)
    assert small.fxprune_meta["fxprune.verify"]["kind"] == "exact"
    assert small.fxprune_meta["fxprune.kept"] == {}
    assert small.layers[0].scale.shape[0] == small.layers[0].proj.out_channels


def test_a_saved_pruned_model_grafts_back_into_a_fresh_instance(tmp_path) -> None:
    """The reload route for a class whose code reads no width: fxprune.save the GraphModule
    (no code runs on load), then graft it into a new, dense instance of the class."""
    model = lively(HFModel())
    x = torch.rand(2, 3, 32, 32)
    pruned = fxprune.compress(model, 0.5, example_inputs=x)
    fxprune.save(pruned, tmp_path / "small.pt")
    again = fxprune.graft(HFModel(), fxprune.load(tmp_path / "small.pt"), example_inputs=x)
    assert type(again) is HFModel
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x).logits, pruned.eval()(x).logits)
    kept = fxprune.compress(model, 0.5, example_inputs=x, keep_class=True)
    with pytest.raises(fxprune.InputError, match="keep_class=True.*graft"):
        fxprune.save(kept, tmp_path / "kept.pt")


def test_onnx_export_of_the_grafted_model(kept, tmp_path) -> None:
    pytest.importorskip("onnx")
    _, small, _ = kept
    model = copy.deepcopy(small).eval()
    path = tmp_path / "grafted.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (X,), str(path), dynamo=False)
    ort = pytest.importorskip("onnxruntime")
    got = ort.InferenceSession(str(path)).run(None, {ort.InferenceSession(str(path))
                                                     .get_inputs()[0].name: X.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got[0]), model(X)[0], rtol=1e-4,
                                   atol=1e-4)


@pytest.mark.parametrize("arch", ["vit", "convnext"])
def test_transformers_models_keep_their_class(arch: str) -> None:
    """ViT's attention views by ``self.head_dim`` (set to the pruned width); ConvNeXt's
    LayerNorm subclass is traced through (its ``normalized_shape`` follows, by nn.LayerNorm's
    rule)."""
    transformers = pytest.importorskip("transformers")
    if arch == "vit":
        cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=64,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, num_labels=5)
        model = transformers.ViTForImageClassification(cfg).eval()
    else:
        cfg = transformers.ConvNextConfig(image_size=32, hidden_sizes=[16, 32, 64, 128],
                                          depths=[1, 1, 1, 1], num_labels=5)
        model = transformers.ConvNextForImageClassification(cfg).eval()
    x = torch.rand(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a vacuous check: Hugging Face's std-0.02 weights
        small = fxprune.compress(model, 0.5, example_inputs=x, keep_class=True)
        plain = fxprune.compress(model, 0.5, example_inputs=x)
    assert type(small) is type(model) and small.fxprune_meta["fxprune.kept"] == {}
    assert fxprune.count(small, x).macs == fxprune.count(plain, x).macs
    assert small.fxprune_meta["fxprune.verify"]["ok"]
    if arch == "vit":
        attn = small.vit.layers[0].attention if hasattr(small.vit, "layers") else None
        if attn is not None:
            assert attn.head_dim == attn.q_proj.out_features // attn.num_attention_heads


def test_keep_class_with_opaque_modules() -> None:
    """An opaque module's children pruned on their own (TwoStage's RPN) are grafted by name;
    a model whose own forward is opaque (Detector) is already a copy of its class."""
    from concrete_replicas import Detector, TwoStage

    model = lively(TwoStage())
    x = torch.rand(1, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = fxprune.compress(model, 0.5, example_inputs=x, keep_class=True)
    assert type(small) is TwoStage and small.fxprune_meta["fxprune.regions"] == {
        "rpn.head": "pruned (exact)"}
    assert small.rpn.head[0].out_channels < 32
    det = lively(Detector()).train()
    images = [torch.rand(3, 32, 32), torch.rand(3, 32, 32)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = fxprune.compress(det, 0.5, example_inputs=(images,), keep_class=True)
    assert type(small) is Detector and small.training and det.training
    assert small.fxprune_meta["fxprune.kept"] == {}
