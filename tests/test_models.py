"""Model catalogue: the contract of every model, and a one-step grid over model × loss."""
from __future__ import annotations

import pytest
import torch

from zoo.losses import LOSSES, create_loss
from zoo.models import CURATED_IMAGE_MODELS, MODELS, create_model, models_for
from zoo.registry import UnknownNameError

TABULAR = ("residual_mlp", "ft_transformer")
AUTOENCODERS = ("vae", "sae")


def _inputs(name: str, batch: int = 8) -> torch.Tensor:
    if name in (*TABULAR, *AUTOENCODERS):
        return torch.randn(batch, 7)
    return torch.randn(batch, 3, 32, 32)


def _make(name: str, classes: int = 4, dim: int = 32):
    return create_model(name, classes, dim, in_chans=3, image_size=32, num_features=7)


def test_catalogue_has_curated_and_tabular_models() -> None:
    assert set(CURATED_IMAGE_MODELS) | set(TABULAR) <= set(MODELS.names())
    assert models_for("tabular") == [*TABULAR, *AUTOENCODERS]
    assert set(CURATED_IMAGE_MODELS) <= set(models_for("image"))


@pytest.mark.parametrize("name", [*CURATED_IMAGE_MODELS, *TABULAR, "timm/efficientvit_m0"])
def test_model_contract(name: str) -> None:
    model = _make(name).eval()
    out = model(_inputs(name))
    assert set(out) == {"embedding", "logits"}
    assert out["embedding"].shape == (8, 32) and out["logits"].shape == (8, 4)
    assert torch.allclose(out["embedding"].norm(dim=1), torch.ones(8), atol=1e-5)
    model.train()
    assert "norm" in model(_inputs(name))  # AdaFace reads the pre-normalisation length


def test_model_without_classes_has_no_logits() -> None:
    out = create_model("resnet18", 0, 16, image_size=32).eval()(torch.randn(2, 3, 32, 32))
    assert set(out) == {"embedding"}


def test_neck_sized_from_forward_pass_not_num_features() -> None:
    # mobilenetv3's num_features (576) is not the width of its pooled output (1024).
    model = create_model("mobilenetv3_small_100", 3, 16, image_size=32)
    assert model.record.architecture["feature_dim"] == 1024
    assert model.neck.fc.in_features == 1024


def test_grey_input_and_other_sizes() -> None:
    model = create_model("convnext_atto", 2, 8, in_chans=1, image_size=64).eval()
    assert model(torch.randn(2, 1, 64, 64))["embedding"].shape == (2, 8)


def test_unknown_models_fail_clearly() -> None:
    with pytest.raises(UnknownNameError, match="unknown model 'resnet19'.*resnet18"):
        create_model("resnet19", 2, 8)
    with pytest.raises(ValueError, match="timm has no model 'not_a_model'"):
        create_model("timm/not_a_model", 2, 8)
    with pytest.raises(ValueError, match="needs num_features"):
        create_model("residual_mlp", 2, 8)


def _trainable_pairs() -> list[tuple[str, str]]:
    """Every curated model and autoencoder with every loss it can train with."""
    from zoo.losses import needed_outputs
    from zoo.models import training_outputs

    return [(m, loss) for m in (*CURATED_IMAGE_MODELS, *TABULAR, *AUTOENCODERS)
            for loss in LOSSES.names() if needed_outputs(loss) <= training_outputs(m)]


@pytest.mark.parametrize("model_name, loss_name", _trainable_pairs())
def test_one_training_step(model_name: str, loss_name: str) -> None:
    """Every curated model × every loss: forward, backward, a step, finite everywhere."""
    torch.manual_seed(0)
    model = _make(model_name).train()
    loss_fn = create_loss(loss_name, 4, 32)
    x = _inputs(model_name)
    y = torch.arange(4).repeat_interleave(2)  # 4 classes × 2: valid P×K for pair losses
    params = list(model.parameters()) + list(loss_fn.parameters())
    opt = torch.optim.SGD(params, lr=0.01)
    out = model(x)
    loss = loss_fn(out["embedding"], y, norms=out["norm"] if loss_fn.uses_norms else None,
                   outputs=out)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    opt.step()


def test_stage_and_grid_read_an_earlier_feature_map_cell_by_cell() -> None:
    model = create_model("timm/vgg11_bn", 3, 16, in_chans=1, image_size=32, stage=2, grid=2)
    x = torch.randn(4, 1, 32, 32)
    feature_map = model.backbone.body(x)
    assert feature_map.shape == (4, 256, 8, 8)  # stage 2 of VGG-11: 256 channels, stride 4
    # 2x2 grid: each cell is the mean of one 4x4 quadrant of the map, the cells concatenated
    cells = torch.stack([feature_map[:, :, :4, :4], feature_map[:, :, :4, 4:],
                         feature_map[:, :, 4:, :4], feature_map[:, :, 4:, 4:]], dim=-1)
    expected = cells.mean(dim=(2, 3)).flatten(1)
    assert torch.allclose(model.backbone(x), expected, atol=1e-6)
    assert model.neck.fc.in_features == 256 * 4
    assert model.record.architecture["stage"] == 2 and model.record.architecture["grid"] == 2
    out = model.eval()(x)
    assert out["embedding"].shape == (4, 16) and out["logits"].shape == (4, 3)
    # the network stops at the stage it is read from: no later VGG layers are kept
    assert sum(p.numel() for p in model.backbone.parameters()) < 1_000_000


def test_grid_alone_pools_the_last_stage() -> None:
    model = create_model("resnet18", 2, 8, image_size=64, grid=2)  # layer4: 2x2 at 64 px
    assert model.neck.fc.in_features == 512 * 4
    assert model.backbone.body(torch.randn(2, 3, 64, 64)).shape == (2, 512, 2, 2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(stage=9), r"no feature stage 9; its stages are 0 \(64 channels, stride 2\)"),
    (dict(stage=4, grid=2), "grid=2 needs a feature map of at least 2x2, but at image_size=32 "
                            "it is 1x1"),
    (dict(grid=0), "grid must be at least 1"),
])
def test_bad_stage_or_grid_says_what_exists(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model("resnet18", 2, 8, image_size=32, **kwargs)


def test_tabular_models_refuse_a_feature_map_read_out() -> None:
    with pytest.raises(ValueError,
                       match="grid shape image backbones; tabular model 'residual_mlp'"):
        create_model("residual_mlp", 2, 8, num_features=7, grid=2)
    assert create_model("residual_mlp", 2, 8, num_features=7, grid=1, stage=None)


def test_part_neck_embeds_each_grid_cell_on_its_own() -> None:
    torch.manual_seed(0)
    model = create_model("timm/vgg11_bn", 5, 32, in_chans=1, image_size=32, stage=2, grid=2,
                         parts=True)
    model.train()
    model(torch.randn(16, 1, 32, 32))  # BatchNorm statistics that are not the identity
    model.eval()
    features = model.backbone(torch.randn(3, 1, 32, 32))  # [B, C * 4], channel-major
    parts = model.neck(features).view(3, 4, 8)
    assert torch.allclose(parts.norm(dim=2), torch.ones(3, 4), atol=1e-5)
    moved = features.view(3, 256, 4).clone()
    moved[:, :, 2] += 1.0  # change the features of cell 2 only
    after = model.neck(moved.flatten(1)).view(3, 4, 8)
    changed = (after - parts).abs().amax(dim=(0, 2))
    assert changed[2] > 1e-3 and torch.all(changed[[0, 1, 3]] < 1e-6)
    out = model(torch.randn(3, 1, 32, 32))["embedding"]
    assert torch.allclose(out.view(3, 4, 8).norm(dim=2), torch.full((3, 4), 0.5), atol=1e-5)
    with pytest.raises(ValueError, match="parts=true embeds each grid cell on its own"):
        create_model("timm/vgg11_bn", 5, 32, image_size=32, stage=2, parts=True)


def test_architecture_options_go_straight_to_timm() -> None:
    from torch import nn

    def kinds(model) -> set[str]:
        return {type(m).__name__ for m in model.modules()}

    plain = create_model("resnet18", 2, 8)
    assert "ReLU" in kinds(plain) and "BatchNorm2d" in kinds(plain)
    changed = create_model("resnet18", 2, 8, act_layer="silu", norm_layer="groupnorm")
    assert "SiLU" in kinds(changed) and "ReLU" not in kinds(changed.backbone)
    assert "GroupNorm" in kinds(changed) and "BatchNorm2d" not in kinds(changed.backbone)
    dropped = create_model("convnext_atto", 2, 8, drop_path_rate=0.2)
    rates = [m.drop_prob for m in dropped.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.2)  # timm's linear ramp over the blocks
    assert "SqueezeExcite" in kinds(create_model("seresnet18", 2, 8)) or "SEModule" in kinds(
        create_model("seresnet18", 2, 8))
    deeper = create_model("resnet34", 2, 8)
    assert len(deeper.backbone.layer3) == 6 and len(plain.backbone.layer3) == 2
    assert isinstance(plain.backbone.layer1[0].conv1, nn.Conv2d)


@pytest.mark.parametrize("name, multiplier, check", [
    ("mobilenetv3_small_100", 0.5,
     lambda m: m.record.architecture["timm_name"] == "mobilenetv3_small_050"),
    ("resnet50", 2.0, lambda m: m.backbone.layer1[0].conv2.out_channels == 128),  # base 64
    ("convnext_atto", 0.5, lambda m: m.backbone.stages[0].blocks[0].conv_dw.out_channels == 20),
])
def test_width_multiplier_scales_channels_the_way_timm_offers(name, multiplier, check) -> None:
    wide = create_model(name, 2, 8, width_multiplier=multiplier)
    assert check(wide)
    base = sum(p.numel() for p in create_model(name, 2, 8).parameters())
    scaled = sum(p.numel() for p in wide.parameters())
    assert (scaled > base) if multiplier > 1 else (scaled < base)


@pytest.mark.parametrize("name, kwargs, message", [
    ("resnet18", dict(width_multiplier=2.0), "timm offers no width multiplier for resnet18"),
    ("mobilenetv3_small_100", dict(width_multiplier=1.3),
     "would be mobilenetv3_small_130, which timm does not have; it has mobilenetv3_small_050"),
    ("convnext_atto", dict(act_layer="nope"), "timm model 'convnext_atto' does not take "
                                              "act_layer='nope'"),
    ("residual_mlp", dict(act_layer="silu", num_features=7),
     "act_layer shape image backbones; tabular model 'residual_mlp' takes none of them"),
])
def test_architecture_options_that_cannot_apply_are_named(name, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        create_model(name, 2, 8, **kwargs)


def test_zoo_list_shows_each_models_size_at_the_default_input() -> None:
    from zoo.__main__ import catalogue

    text = catalogue()
    line = next(row for row in text.splitlines() if row.strip().startswith("resnet50 "))
    real = sum(p.numel() for p in create_model("resnet50", 0, 128, image_size=32).parameters())
    assert f"{real / 1e6:.2f}M" in line
    assert "width_multiplier" in text and "drop_path_rate" in text and "seresnet152" in text


def test_hybrid_concatenates_a_convnext_and_a_swin_branch_built_for_small_inputs() -> None:
    """Each branch is its own timm model; the neck reads both, CNN first. It learns: a few
    steps on a fixed batch bring its ArcFace loss down."""
    from zoo.losses import create_loss

    torch.manual_seed(0)
    model = create_model("hybrid", 4, 16, image_size=32)
    backbone = model.backbone
    assert type(backbone.cnn).__name__ == "ConvNeXt"
    assert type(backbone.transformer).__name__ == "SwinTransformerV2"
    assert backbone.transformer.patch_embed.img_size == (32, 32)  # windows fit 32 px
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    features = backbone(x)
    assert torch.equal(features[:, :320], backbone.cnn(x))
    assert model.neck.fc.in_features == 320 + 768 == model.record.architecture["feature_dim"]
    loss_fn = create_loss("arcface", 4, 16)
    opt = torch.optim.AdamW([*model.parameters(), *loss_fn.parameters()], lr=1e-3)
    model.set_head(None)
    losses = []
    for _ in range(6):
        loss = loss_fn(model(x)["embedding"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    other = create_model("hybrid", 4, 16, image_size=64, cnn_branch="convnext_atto",
                         transformer_branch="swinv2_cr_tiny_ns_224")
    assert other.record.architecture["cnn_branch"] == "convnext_atto"
    assert other(torch.randn(2, 3, 64, 64))["embedding"].shape == (2, 16)
    with pytest.raises(ValueError, match="hybrid pools each branch on its own"):
        create_model("hybrid", 4, 16, grid=2)
