"""The server's parts without HTTP: batching, GradCAM layers, inputs, settings, the gallery store."""
from __future__ import annotations

import asyncio
import re
import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from serving.batcher import Batcher
from serving.gallery_store import GalleryStore
from serving.gradcam import Explainer, default_target_layer
from serving.inputs import RequestError, Upload, model_input, open_image
from serving.settings import ServeSettings
from zoo.data import Preprocessing
from zoo.gallery import Gallery
from zoo.models import create_model


def test_batcher_coalesces_concurrent_calls_and_splits_answers() -> None:
    sizes: list[int] = []
    release = threading.Event()

    def model(x: np.ndarray) -> dict[str, np.ndarray]:
        release.wait(5)  # hold the first batch so the others queue behind it
        return {"double": x * 2}

    batcher = Batcher(model, max_batch_size=8, on_batch=sizes.append)

    async def main() -> list[dict[str, np.ndarray]]:
        first = asyncio.ensure_future(batcher(np.full((1, 2), 0, np.float32)))
        await asyncio.sleep(0.2)  # the model thread has taken it and waits for `release`
        rest = [asyncio.ensure_future(batcher(np.full((n, 2), i, np.float32)))
                for i, n in enumerate([2, 3, 1, 20], start=1)]
        await asyncio.sleep(0.2)
        release.set()
        return await asyncio.gather(first, *rest)

    answers = asyncio.run(main())
    batcher.close()
    for i, (n, answer) in enumerate(zip([1, 2, 3, 1, 20], answers)):
        assert answer["double"].shape == (n, 2) and (answer["double"] == 2 * i).all()
    # 2 + 3 + 1 queued behind the first call share one batch; the 20 go in chunks of 8.
    assert sizes == [1, 6, 8, 8, 4]


def test_batcher_gives_a_failure_to_every_caller_of_the_batch() -> None:
    def model(x: np.ndarray) -> dict[str, np.ndarray]:
        if (x < 0).any():
            raise ValueError("negative input")
        return {"y": x}

    batcher = Batcher(model, max_batch_size=4)

    async def main() -> tuple:
        bad = batcher(np.array([[-1.0]]))
        good = batcher(np.array([[1.0]]))
        return await asyncio.gather(bad, good, return_exceptions=True)

    first, second = asyncio.run(main())
    batcher.close()
    assert isinstance(first, ValueError)
    # The second call either shared the failing batch or ran alone and succeeded.
    assert isinstance(second, ValueError) or second["y"][0, 0] == 1.0


@pytest.mark.parametrize("name,size,layer", [
    ("resnet18", 32, "backbone.layer2"),  # layer4 is 1x1 at 32 px: a uniform map
    ("resnet18", 112, "backbone.layer4"),
    ("convnext_atto", 32, "backbone.stages.1"),
    ("mobilenetv3_small_100", 64, "backbone.blocks.3"),
    ("hybrid", 32, "backbone.cnn.stages.1"),  # the ConvNeXt branch; Swin's maps are NHWC
])
def test_gradcam_layer_has_a_map_of_at_least_4x4(name: str, size: int, layer: str) -> None:
    model = create_model(name, num_classes=3, embedding_dim=8, image_size=size).eval()
    assert default_target_layer(model, (3, size, size)).name == layer


def test_gradcam_explains_a_stage_read_out_with_that_stage() -> None:
    model = create_model("timm/vgg11_bn", num_classes=3, embedding_dim=8, in_chans=1,
                         image_size=32, stage=2, grid=2).eval()
    explainer = Explainer(model, (1, 32, 32))
    assert explainer.layer.name == "backbone.body"  # the 8x8 map the grid pools
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), np.uint8))
    result = explainer.explain(torch.randn(1, 1, 32, 32), image, "gradcam",
                               class_names=["a", "b", "c"])
    assert result.overlay.size == (256, 256) and result.target in "abc"


def test_gradcam_on_a_vision_transformer_reshapes_tokens() -> None:
    model = create_model("timm/vit_tiny_patch16_224", num_classes=3, embedding_dim=8,
                         image_size=32).eval()
    explainer = Explainer(model, (3, 32, 32))
    assert explainer.layer.name.endswith(".norm1") and explainer.layer.reshape is not None
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8))
    x = torch.randn(1, 3, 32, 32)
    for method in ("gradcam", "gradcam++"):
        result = explainer.explain(x, image, method, class_names=["a", "b", "c"])
        assert result.overlay.size == (256, 256) and result.target in "abc"
    similar = explainer.explain(x, image, "gradcam", reference=explainer.embedding(x + 0.1))
    assert similar.target == "similarity" and 0.5 < similar.score <= 1.0


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_inputs_are_checked_before_decoding() -> None:
    settings = ServeSettings(max_image_bytes=5000, max_image_pixels=64 * 64, max_images=3)
    pre = Preprocessing("image", (3, 16, 16), [0.5] * 3, [0.25] * 3, ["a", "b"])
    small = _png(np.zeros((20, 20), np.uint8))
    x, images = model_input([Upload("a.png", small)] * 2, None, pre, settings)
    assert x.shape == (2, 3, 16, 16) and x.dtype == np.uint8 and len(images) == 2
    cases = [
        ([Upload("n.png", _png(np.random.default_rng(0).integers(0, 255, (90, 90), np.uint8)))],
         413, "ZOO_MAX_IMAGE_BYTES"),
        ([Upload("w.png", _png(np.zeros((70, 70), np.uint8)))], 413, "70x70 pixels"),
        ([Upload("x.txt", b"hello")], 400, "'x.txt') is not an image"),
        ([Upload("", b"")], 400, "image 0 is empty"),
        ([Upload("a.png", small)] * 4, 413, "4 images in one request"),
        ([], 400, "no images"),
    ]
    for uploads, status, message in cases:
        with pytest.raises(RequestError, match=re.escape(message)) as err:
            model_input(uploads, None, pre, settings)
        assert err.value.status == status
    with pytest.raises(RequestError, match="not rows"):
        model_input(None, [[1.0, 2.0]], pre, settings)
    tabular = Preprocessing("tabular", (3,), [0.0] * 3, [1.0] * 3, ["a", "b"], ["f", "g", "h"])
    rows, _ = model_input(None, [[1, 2, 3]], tabular, settings)
    assert rows.dtype == np.float32 and rows.shape == (1, 3)
    with pytest.raises(RequestError, match=r"row 1 has 2 values; the model takes 3 features \(f, g"):
        model_input(None, [[1, 2, 3], [1, 2]], tabular, settings)
    with pytest.raises(RequestError, match="not images"):
        model_input([Upload("a.png", small)], None, tabular, settings)
    assert open_image(Upload("a.png", small), 0, settings).size == (20, 20)


def test_settings_come_from_the_environment_with_named_errors() -> None:
    settings = ServeSettings.from_env({"ZOO_MAX_IMAGES": "12", "ZOO_SPIN": "yes",
                                       "ZOO_MODEL_URI": "models:/x@y"})
    assert (settings.max_images, settings.spin, settings.model_uri) == (12, True, "models:/x@y")
    with pytest.raises(ValueError, match="ZOO_MAX_IMAGES='many' is not a valid int"):
        ServeSettings.from_env({"ZOO_MAX_IMAGES": "many"})
    with pytest.raises(ValueError, match="ZOO_WORKERS must be 0 \\(auto\\) or more"):
        ServeSettings.from_env({"ZOO_WORKERS": "-1"})
    assert ServeSettings(workers=3).worker_count == 3 and ServeSettings().worker_count >= 1


def test_gallery_store_sees_other_writers_and_keeps_the_seed(tmp_path) -> None:
    seed = Gallery(4, threshold=0.5, far=1e-3)
    seed.add(np.eye(4, dtype=np.float32), ["a", "b", "c", "d"])
    seed.save(tmp_path / "seed")
    one = GalleryStore(tmp_path / "state", tmp_path / "seed", 4)
    two = GalleryStore(tmp_path / "state", tmp_path / "seed", 4)  # another worker
    assert len(one.gallery) == 4 and one.gallery.threshold == 0.5
    assert one.enroll(np.array([[1, 1, 0, 0]], np.float32), "ab") == 1
    assert two.search(np.array([[1, 1, 0, 0]], np.float32), 2)[0][0].label == "ab"
    assert len(Gallery.load(tmp_path / "seed")) == 4  # the model's own gallery is untouched
    nearest = one.search(np.array([[1, 0, 0, 0]], np.float32), 3)[0]
    assert [m.label for m in nearest[:2]] == ["a", "ab"] and len({m.label for m in nearest}) == 3
    with pytest.raises(ValueError, match="holds 4-d embeddings but the model makes 8-d"):
        GalleryStore(tmp_path / "state", None, 8)


def test_keys_decide_each_route() -> None:
    from serving.auth import Keys

    keys = Keys(api="a", admin="b")
    assert keys.refusal("/livez", None) is None and keys.refusal("/metrics", None) is None
    assert keys.refusal("/embed", None)[0] == 401 and keys.refusal("/embed", "x")[0] == 401
    assert keys.refusal("/embed", "a") is None and keys.refusal("/v1/embeddings", "b") is None
    assert keys.refusal("/enroll", "a")[0] == 403 and keys.refusal("/enroll", None)[0] == 401
    assert keys.refusal("/identities/x/y", "b") is None
    closed, opened = Keys(), Keys(open_enroll=True)
    assert closed.refusal("/embed", None) is None  # no API key: the model is open
    assert closed.refusal("/enroll", "anything")[0] == 403  # no admin key: read-only
    assert "ZOO_OPEN_ENROLL" in closed.refusal("/identities", None)[1]
    assert opened.refusal("/enroll", None) is None


def test_key_settings_come_from_variables_or_files(tmp_path) -> None:
    key = tmp_path / "key"
    key.write_text("  secret\n")
    keys = ServeSettings.from_env({"ZOO_API_KEY_FILE": str(key), "ZOO_ADMIN_KEY": "other"}).keys()
    assert (keys.api, keys.admin) == ("secret", "other")
    assert "secret" not in repr(ServeSettings.from_env({"ZOO_API_KEY": "secret"}))
    for env, message in (({"ZOO_API_KEY": "a", "ZOO_API_KEY_FILE": str(key)}, "not both"),
                         ({"ZOO_ADMIN_KEY_FILE": str(tmp_path / "none")}, "cannot read"),
                         ({"ZOO_API_KEY": "same", "ZOO_ADMIN_KEY": "same"}, "the same key")):
        with pytest.raises(ValueError, match=message):
            ServeSettings.from_env(env)
