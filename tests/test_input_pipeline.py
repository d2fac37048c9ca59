"""The training input: 8-bit batches made on the device, lazy folders decoded by workers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.engine.input_pipeline import EpochInput
from zoo.data import LazyImages, StoredImages, load_data, split_data
from zoo.data.sources import memory_budget_bytes


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes of 12 JPEGs of different sizes and colours."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for c, colour in enumerate(((200, 40, 40), (40, 200, 40), (40, 40, 200))):
        folder = root / f"class{c}"
        folder.mkdir()
        for i in range(12):
            h, w = (int(v) for v in rng.integers(40, 90, size=2))
            pixels = np.clip(rng.normal(colour, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


def test_workers_give_the_batches_of_the_training_process(photo_folder: Path) -> None:
    stored = split_data(load_data(str(photo_folder), image_size=24), seed=0).train
    lazy = split_data(load_data(str(photo_folder), image_size=24, memory_budget=1), seed=0).train
    assert isinstance(stored.x, StoredImages) and isinstance(lazy.x, LazyImages)
    order = torch.randperm(len(lazy), generator=torch.Generator().manual_seed(3))
    index_batches = list(order.split(5))
    cpu = torch.device("cpu")
    reference = [(idx, xb) for idx, xb in EpochInput(stored.x, index_batches, cpu)]
    for x, workers in ((lazy.x, 0), (lazy.x, 2), (stored.x, 2)):
        epoch = EpochInput(x, index_batches, cpu, workers)
        got = list(epoch)
        assert len(got) == len(reference) == len(epoch)
        for (idx, xb), (ref_idx, ref_xb) in zip(got, reference):
            assert torch.equal(idx, ref_idx)
            assert torch.equal(xb, ref_xb)  # decoded in a worker, bit for bit the same
        assert epoch.wait_s >= 0.0


def test_the_preload_budget_is_a_machine_setting(monkeypatch: pytest.MonkeyPatch,
                                                 photo_folder: Path) -> None:
    monkeypatch.setenv("ZOO_PRELOAD_MB", "0.01")  # 10,485 bytes: not 36 images at 3x24x24
    assert memory_budget_bytes() == 10_485
    assert isinstance(load_data(str(photo_folder), image_size=24).x, LazyImages)
    monkeypatch.setenv("ZOO_PRELOAD_MB", "1")
    assert isinstance(load_data(str(photo_folder), image_size=24).x, StoredImages)
    monkeypatch.setenv("ZOO_PRELOAD_MB", "lots")
    with pytest.raises(ValueError, match="ZOO_PRELOAD_MB='lots' is not a size in MiB"):
        memory_budget_bytes()


def test_photo_crops_are_fresh_each_epoch_and_the_same_under_a_seed(photo_folder: Path) -> None:
    from zoo.data.photo import PhotoImages, photo_view

    train = split_data(load_data(str(photo_folder), image_size=24), seed=0).train
    photos = photo_view(train.x, hflip=True)
    assert isinstance(photos, PhotoImages) and photos.paths == train.x.paths
    assert photos.mean == train.x.mean and photos.shape == train.x.shape
    batches = list(torch.arange(len(train)).split(8))
    cpu = torch.device("cpu")

    def epoch(seed: int, workers: int) -> list[torch.Tensor]:
        return [xb for _, xb in EpochInput(photos, batches, cpu, workers, seed=seed)]

    first, again, other = epoch(7, 2), epoch(7, 2), epoch(8, 2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # the same seed, the same crops
    assert not all(torch.equal(a, b) for a, b in zip(first, other))  # a new epoch, new crops
    assert first[0].shape == (8, 3, 24, 24) and first[0].dtype == torch.float32
    assert not torch.equal(first[0], train.x[batches[0]])  # cropped, not the resized image
    with pytest.raises(ValueError, match="augment=photo crops each training image from its file"):
        photo_view(split_data(load_data("digits", image_size=16), seed=0).train.x, hflip=False)


def test_a_run_with_photo_augmentation(photo_folder: Path, tracking_uri: str) -> None:
    import mlflow

    from training.config import TrainConfig
    from training.pipeline.run import train

    cfg = TrainConfig.of(model="resnet18", loss="arcface", data=str(photo_folder), epochs=1,
                         batch_size=8, image_size=24, embedding_dim=16, augment="photo",
                         hflip=True, loader_workers=1, plots=False, experiment="photo")
    train(cfg)
    (run,) = mlflow.search_runs(experiment_names=["photo"], output_format="list")
    assert run.info.status == "FINISHED" and run.data.params["augment"] == "photo"
    assert run.data.metrics["data_wait_s"] >= 0 and "test_precision_at_1" in run.data.metrics
