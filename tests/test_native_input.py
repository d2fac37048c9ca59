"""A model family's own input (``zoo.native``): what ``image_size``, ``channels`` and ``faces``
become when a run leaves them unset, what a set value does, and what the run logs."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from training.config import TrainConfig
from zoo import names


def test_dlib_resnet_unset_input_is_its_own_chip(tmp_path: Path) -> None:
    cfg = TrainConfig.of(model="dlib_resnet", pretrained="true", epochs=0, data=str(tmp_path))
    assert (cfg.data.image_size, cfg.data.channels, cfg.data.faces) == (150, 3, "align")
    # what the run logs as its parameters is what it used
    params = cfg.to_params()
    assert (params["image_size"], params["channels"], params["faces"]) == ("150", "3", "align")
    # the README's command: digits are no folder of photos, so no face stage there
    digits = TrainConfig.from_dict({"model": "dlib_resnet", "pretrained": "true", "epochs": "0",
                                    "image_size": "auto"})  # as MLproject passes it
    assert (digits.data.image_size, digits.data.channels, digits.data.faces) == (150, 3, "none")


@pytest.mark.parametrize("model", ["iresnet50", "iresnet100"])
def test_iresnet_unset_input_is_112_rgb(model: str) -> None:
    cfg = TrainConfig.of(model=model)
    assert (cfg.data.image_size, cfg.data.channels, cfg.data.faces) == (112, 3, "none")


def test_other_models_keep_the_generic_input() -> None:
    cfg = TrainConfig.of()
    assert (cfg.data.image_size, cfg.data.channels, cfg.data.faces) == (32, 3, "none")


def test_a_value_set_wins_with_the_familys_warning(caplog: pytest.LogCaptureFixture,
                                                   tmp_path: Path) -> None:
    cfg = TrainConfig.of(model="dlib_resnet", image_size=120, faces="none", data=str(tmp_path))
    assert (cfg.data.image_size, cfg.data.channels, cfg.data.faces) == (120, 3, "none")
    assert cfg.data.auto_input == ("channels",)
    from zoo.models.dlib_resnet import resolve_weights
    from zoo.models.pretrained import PretrainedError

    with caplog.at_level(logging.WARNING), pytest.raises(PretrainedError, match="no such file"):
        resolve_weights(str(tmp_path / "none.dat"), image_size=cfg.data.image_size)
    assert "trained on 150 px chips; image_size=120" in caplog.text


def test_unset_input_follows_each_model_of_a_sweep() -> None:
    base = TrainConfig.of(model="resnet18")
    child = base.replace(model="dlib_resnet", pretrained="true")
    assert child.data.image_size == 150
    assert child.replace(model="resnet18", pretrained=None).data.image_size == 32
    fixed = TrainConfig.of(model="resnet18", image_size=64)
    assert fixed.replace(model="dlib_resnet").data.image_size == 64  # set: it stays


def test_a_run_logged_under_mlflow_run_reads_back_what_it_used() -> None:
    """``mlflow run`` logs ``auto``; the run tags what it became, and a resume reads that."""
    cfg = TrainConfig.from_run({"model": "dlib_resnet", "image_size": "auto"},
                               {names.resolved_tag("image_size"): "150"})
    assert cfg.data.image_size == 150
