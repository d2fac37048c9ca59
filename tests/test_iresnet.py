"""insightface's iresnet50/100: a checkpoint saved under arcface_torch's own key names loads
with ``pretrained=<file>`` (every tensor, checked), and anything else is refused by name."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.config import TrainConfig
from training.pipeline.transfer import resolve_start
from zoo import names
from zoo.models import create_model
from zoo.models.iresnet import LICENCE
from zoo.models.pretrained import PretrainedError


def _arcface_torch_checkpoint(path: Path, depth: str = "iresnet50", ddp: bool = False) -> dict:
    """A ``backbone.pth`` as arcface_torch saves it: the network's own key names (``conv1``,
    ``layer3.13.prelu``, ``fc``, ``features``), random weights and statistics."""
    torch.manual_seed(0)
    model = create_model(depth, 0, 512, image_size=112)
    for module in model.modules():  # statistics a trained network would have
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    state = {k.split(".", 1)[1]: v.clone() for k, v in model.state_dict().items()}
    if ddp:
        state = {f"module.{k}": v for k, v in state.items()}
    torch.save(state, path)
    return state


def test_an_arcface_torch_checkpoint_loads_under_its_own_names(tmp_path: Path) -> None:
    state = _arcface_torch_checkpoint(tmp_path / "backbone.pth")
    assert {"conv1.weight", "prelu.weight", "layer3.13.bn3.running_var",
            "layer1.0.downsample.0.weight", "fc.weight", "features.running_mean"} <= set(state)
    cfg = TrainConfig.of(model="iresnet50", pretrained=str(tmp_path / "backbone.pth"),
                         image_size=112, channels=3, embedding_dim=512)
    start = resolve_start(cfg)
    assert (cfg.data.mean, cfg.data.std) == ("0.5,0.5,0.5", "0.5,0.5,0.5")  # arcface_torch's
    assert start.weights.report.fraction == 1.0 and not start.weights.report.missing
    assert start.tags()[names.PRETRAINED_LICENCE_TAG] == LICENCE

    model = create_model("iresnet50", 3, 512, image_size=112, weights=start.weights).eval()
    loaded = model.state_dict()
    for key, tensor in state.items():
        zoo_key = f"neck.{key}" if key.startswith(("fc.", "features.")) else f"backbone.{key}"
        assert torch.equal(loaded[zoo_key], tensor), key
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():  # arcface_torch's forward: body, fc, features
        expected = model.neck.features(model.neck.fc(model.backbone(x)))
        assert torch.allclose(model(x)["embedding"], torch.nn.functional.normalize(expected))
    assert model.record.lineage.licence == LICENCE


def test_wrong_checkpoints_and_settings_are_refused_by_name(tmp_path: Path) -> None:
    _arcface_torch_checkpoint(tmp_path / "ddp.pth", ddp=True)  # DDP's module. prefix is fine
    create_model("iresnet50", 0, 512, image_size=112,
                 weights=resolve_start(TrainConfig.of(
                     model="iresnet50", pretrained=str(tmp_path / "ddp.pth"), image_size=112,
                     channels=3, embedding_dim=512)).weights)
    with pytest.raises(PretrainedError, match="embedding_dim=128.*of another shape"):
        resolve_start(TrainConfig.of(model="iresnet50", pretrained=str(tmp_path / "ddp.pth"),
                                     image_size=112, channels=3, embedding_dim=128))
    with pytest.raises(PretrainedError, match="not an arcface_torch iresnet100.*missing"):
        resolve_start(TrainConfig.of(model="iresnet100", pretrained=str(tmp_path / "ddp.pth"),
                                     image_size=112, channels=3, embedding_dim=512))
    with pytest.raises(PretrainedError, match="non-commercial research only.*pretrained=<file>"):
        resolve_start(TrainConfig.of(model="iresnet50", pretrained="true", image_size=112,
                                     channels=3, embedding_dim=512))
    with pytest.raises(ValueError, match="multiple of 16"):
        create_model("iresnet50", 0, 512, image_size=100)
