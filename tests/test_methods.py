"""Training methods (EMA, SAM, Lookahead, gradient centralisation, mixing, combined losses,
TTA): each does what it says, checked against its definition, not only that it runs."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.pipeline.sweep import SweepConfig
from training.config import TrainConfig
from training.engine.evaluation import embed, validate
from training.engine.loop import fit
from training.engine.mixing import mix_batch
from training.engine.optim import centralize_gradients, make_optimizer
from training.pipeline.run import check_names, config_splits, load_config_data
from training.tracking.registration import loss_alias
from zoo.data import Splits
from zoo.losses import CombinedLoss, create_loss
from zoo.models import create_model
from zoo.registry import UnknownNameError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def emitters() -> tuple[TrainConfig, Splits]:
    cfg = TrainConfig.of(model="residual_mlp", data="emitters", loss="softmax", epochs=1,
                         embedding_dim=32, batch_size=64, log_model=False)
    return cfg, config_splits(cfg, load_config_data(cfg))


def _fit(cfg: TrainConfig, splits: Splits):
    torch.manual_seed(cfg.data.seed)
    n = len(splits.class_names)
    model = create_model(cfg.model.name, n, cfg.model.embedding_dim,
                         num_features=splits.train.x.shape[1])
    loss_fn = create_loss(cfg.loss.name, n, cfg.model.embedding_dim)
    start = copy.deepcopy(model.state_dict())
    history = fit(model, loss_fn, splits.train, splits.val, cfg, CPU, n)
    return model, loss_fn, start, history


def _distance(a: dict, b: dict) -> float:
    return sum(float((a[k].float() - b[k].float()).norm() ** 2) for k in a
               if k.startswith("backbone") and a[k].is_floating_point()) ** 0.5


# -- EMA ---------------------------------------------------------------------------------------
def test_ema_weights_are_what_is_validated_and_returned(emitters) -> None:
    """With a decay near 1 and no warm-up the average stays at the first step's weights: the
    returned model is that average, and the logged validation metric is its own."""
    cfg, splits = emitters
    raw_model, _, start, raw_hist = _fit(cfg, splits)
    ema_cfg = cfg.replace(ema_decay=0.99999, ema_warmup=False)
    ema_model, ema_loss, start2, ema_hist = _fit(ema_cfg, splits)
    assert all(torch.equal(start[k], start2[k]) for k in start)  # same initialisation
    raw_moved = _distance(raw_model.state_dict(), start)
    ema_moved = _distance(ema_model.state_dict(), start)
    assert raw_moved > 0 and ema_moved < 0.2 * raw_moved
    again = validate(ema_model, ema_loss, splits.train, splits.val, CPU,
                     len(splits.class_names), None)
    assert again["val_map_at_r"] == pytest.approx(ema_hist.epochs[-1]["val_map_at_r"], abs=1e-6)
    assert ema_hist.epochs[-1]["val_accuracy"] < raw_hist.epochs[-1]["val_accuracy"]


# -- SAM, Lookahead, gradient centralisation --------------------------------------------------
def _quadratic_grad(w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return 2 * a * w  # gradient of sum(a * w^2)


def test_sam_steps_from_w_with_the_gradient_at_the_perturbed_point() -> None:
    a = torch.tensor([1.0, 10.0, 0.1])
    w0 = torch.tensor([1.0, -0.5, 2.0])
    rho, lr = 0.3, 0.1
    w = nn.Parameter(w0.clone())
    opt = make_optimizer([{"params": [w], "weight_decay": 0.0}], lr, sam_rho=rho)
    (a * w ** 2).sum().backward()
    g0 = _quadratic_grad(w0, a)
    opt.sam.first_step(zero_grad=True)
    perturbed = w0 + rho * g0 / g0.norm()
    assert torch.allclose(w.detach(), perturbed, atol=1e-6)
    (a * w ** 2).sum().backward()
    opt.sam.second_step()
    g1 = _quadratic_grad(perturbed, a)
    assert torch.allclose(w.grad, g1, atol=1e-6) and not torch.allclose(g1, g0, atol=1e-2)
    reference = nn.Parameter(w0.clone())  # AdamW from w0 with the perturbed point's gradient
    ref_opt = torch.optim.AdamW([reference], lr=lr, weight_decay=0.0)
    reference.grad = g1
    ref_opt.step()
    assert torch.allclose(w.detach(), reference.detach(), atol=1e-6)


def test_lookahead_pulls_back_halfway_every_five_steps() -> None:
    grad = torch.tensor([1.0, -2.0])
    w = nn.Parameter(torch.zeros(2))
    fast = nn.Parameter(torch.zeros(2))
    opt = make_optimizer([{"params": [w], "weight_decay": 0.0}], 0.1, lookahead=True)
    plain = torch.optim.AdamW([fast], lr=0.1, weight_decay=0.0)
    for _ in range(5):
        w.grad, fast.grad = grad.clone(), grad.clone()
        opt.outer.step()
        plain.step()
    assert torch.allclose(w.detach(), 0.5 * fast.detach(), atol=1e-6)  # slow 0 + 0.5 (fast - 0)


def test_gradient_centralization_removes_each_output_units_mean() -> None:
    conv, fc = nn.Conv2d(3, 4, 3), nn.Linear(5, 6)
    (conv(torch.randn(2, 3, 8, 8)).pow(2).mean() + fc(torch.randn(2, 5)).pow(3).mean()).backward()
    bias_before = conv.bias.grad.clone()
    assert conv.weight.grad.mean(dim=(1, 2, 3)).abs().max() > 1e-6
    centralize_gradients([*conv.parameters(), *fc.parameters()])
    assert conv.weight.grad.mean(dim=(1, 2, 3)).abs().max() < 1e-7
    assert fc.weight.grad.mean(dim=1).abs().max() < 1e-7
    assert torch.equal(conv.bias.grad, bias_before)  # 1-D gradients are left alone


# -- mixing ------------------------------------------------------------------------------------
def test_mixup_blends_with_a_permutation() -> None:
    x, y = torch.randn(8, 3, 4, 4), torch.arange(8)
    mixed = mix_batch(x, y, "mixup", 0.4, np.random.default_rng(0))
    perm = mixed.y_b  # labels are 0..7, so y_b is the permutation itself
    assert 0 < mixed.lam < 1 and sorted(perm.tolist()) == list(range(8))
    assert torch.allclose(mixed.x, mixed.lam * x + (1 - mixed.lam) * x[perm])


def test_cutmix_pastes_one_box_and_lam_is_the_area_kept() -> None:
    x, y = torch.zeros(6, 1, 16, 16), torch.arange(6)
    x += torch.arange(6).view(6, 1, 1, 1).float()  # image i is filled with the value i
    mixed = mix_batch(x, y, "cutmix", 1.0, np.random.default_rng(3))
    pasted = mixed.x != x
    partnered = [i for i in range(6) if mixed.y_b[i] != i]
    assert partnered and 0 < mixed.lam < 1
    box = pasted[partnered[0]]
    for i in partnered:  # one box, the same for every image, filled from the partner image
        assert torch.equal(pasted[i], box)
        assert torch.all(mixed.x[i][box] == float(mixed.y_b[i]))
    assert mixed.lam == pytest.approx(1 - box.float().mean().item())


def test_mixing_refuses_pair_losses_and_cutmix_on_rows(emitters) -> None:
    cfg, splits = emitters
    with pytest.raises(ValueError, match="classification-style loss"):
        _fit(cfg.replace(loss="triplet", mix="mixup"), splits)
    with pytest.raises(ValueError, match="cutmix"):
        _fit(cfg.replace(mix="cutmix"), splits)
    with pytest.raises(ValueError, match="tta=flip"):
        _fit(cfg.replace(tta="flip"), splits)


def test_every_method_at_once_still_learns(emitters) -> None:
    cfg, splits = emitters
    on = cfg.replace(epochs=2, ema_decay=0.99, sam_rho=0.05,
                     lookahead=True, grad_centralization=True, mix="mixup",
                     loss="arcface")
    _, _, _, history = _fit(on, splits)
    chance = 1 / len(splits.class_names)
    assert history.epochs[-1]["val_accuracy"] > 2 * chance
    assert all(np.isfinite(e["train_loss"]) for e in history.epochs)


# -- combined losses ---------------------------------------------------------------------------
def test_combined_loss_is_the_weighted_sum_of_its_terms() -> None:
    torch.manual_seed(0)
    loss = create_loss("triplet+center:0.3", 5, 16)
    assert isinstance(loss, CombinedLoss)
    assert loss.needs_pk_batches and loss.weights == {"triplet": 1.0, "center": 0.3}
    emb, labels = F.normalize(torch.randn(20, 16), dim=1), torch.arange(5).repeat(4)
    value = loss(emb, labels)
    triplet = loss.terms["triplet"](emb, labels)
    center = loss.terms["center"](emb, labels)
    assert value.item() == pytest.approx(triplet.item() + 0.3 * center.item(), rel=1e-5)
    assert loss.last_components == pytest.approx({"triplet": triplet.item(),
                                                  "center": center.item()}, rel=1e-5)
    assert torch.allclose(loss.classifier()(emb), loss.terms["center"].logits(emb), atol=1e-6)
    assert create_loss("triplet+supcon", 5, 16).classifier() is None
    assert loss.has_classes and not create_loss("triplet+supcon", 5, 16).has_classes
    assert (create_loss("arcface", 5, 16).has_classes
            and not create_loss("triplet", 5, 16).has_classes)


@pytest.mark.parametrize("spec, message", [
    ("triplet+centre:0.3", "centre"), ("triplet+center:x", "not a number"),
    ("triplet+center:0", "> 0"), ("triplet+triplet:2", "twice"), ("triplet+", "empty term"),
])
def test_bad_combined_specs_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises((ValueError, UnknownNameError), match=message):
        check_names(TrainConfig.of(loss=spec))


def test_sweep_takes_combined_losses() -> None:
    sweep = SweepConfig.of(models="residual_mlp", losses="arcface,triplet+center:0.3")
    grid = sweep.combinations("tabular")
    assert grid == [("residual_mlp", "arcface"), ("residual_mlp", "triplet+center:0.3")]
    for model, loss in grid:
        check_names(sweep.child(model, loss))
    assert loss_alias("triplet+center:0.3") == "triplet-center-0-3-best"


def test_combined_loss_logs_each_term_per_epoch(emitters) -> None:
    cfg, splits = emitters
    _, _, _, history = _fit(cfg.replace(loss="supcon+softmax:0.5"), splits)
    epoch = history.epochs[0]
    assert {"train_loss_supcon", "train_loss_softmax"} <= set(epoch)
    assert epoch["train_loss"] == pytest.approx(
        epoch["train_loss_supcon"] + 0.5 * epoch["train_loss_softmax"], rel=1e-4)


# -- TTA ---------------------------------------------------------------------------------------
def test_flip_tta_averages_an_image_with_its_mirror() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", 4, 16, image_size=32).eval()
    x = torch.randn(5, 3, 32, 32)
    emb, logits = embed(model, x, CPU, tta="flip")
    with torch.no_grad():
        a, b = model(x), model(torch.flip(x, dims=[-1]))
    assert torch.allclose(emb, F.normalize(a["embedding"] + b["embedding"], dim=1), atol=1e-5)
    assert torch.allclose(logits, (a["logits"] + b["logits"]) / 2, atol=1e-5)
    mirror_emb, _ = embed(model, torch.flip(x, dims=[-1]), CPU, tta="flip")
    assert torch.allclose(emb, mirror_emb, atol=1e-5)  # a mirror image embeds the same
    plain, _ = embed(model, x, CPU)
    assert not torch.allclose(emb, plain, atol=1e-3)
