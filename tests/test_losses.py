"""The loss catalogue: registry, the common interface, and that every loss actually trains."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import NTXentLoss

from zoo.losses import LOSSES, EmbeddingLoss, create_loss
from zoo.models.heads import CosineClassifier
from zoo.registry import UnknownNameError

MARGIN = ["arcface", "cosface", "subcenter_arcface", "adaface", "curricularface"]
PAIR = ["triplet", "supcon", "ntxent"]
LINEAR = ["softmax", "focal", "center"]
RECONSTRUCTION = ["elbo", "sparse_recon"]  # tests/test_autoencoders.py
ALL = MARGIN + PAIR + LINEAR
WITH_CLASSIFIER = MARGIN + LINEAR

C, D, IN = 4, 16, 8  # classes, embedding dim, blob input dim


def pk_batch(seed: int = 0, p: int = C,
             k: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random P x K batch: (unit embeddings as a leaf tensor, labels, feature norms)."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(p * k, D, generator=g) * 3
    emb = F.normalize(raw, dim=1).requires_grad_()
    labels = torch.arange(p).repeat_interleave(k)
    return emb, labels, raw.norm(dim=1)


def blobs(seed: int, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs whose class signal hides among loud nuisance directions.

    Class means are 5 apart per axis in 4 of the 8 input directions (unit noise); the other
    4 directions carry noise of std 4 and no signal, and everything is rotated. Raw-input
    1-NN gets about 60 %; an embedder must learn to ignore the nuisance to reach 90 %.
    The means do not depend on ``seed``.
    """
    rotation, _ = torch.linalg.qr(torch.randn(IN, IN,
                                              generator=torch.Generator().manual_seed(1234)))
    means = 5 * torch.eye(IN)[:C]
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(C * per_class, IN, generator=g)
    noise[:, C:] *= 4.0
    x = (means.repeat_interleave(per_class, 0) + noise) @ rotation
    return x, torch.arange(C).repeat_interleave(per_class)


def embed(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    feat = net(x)
    return F.normalize(feat, dim=1), feat.norm(dim=1)


# -- registry and create_loss ----------------------------------------------------------------
def test_registry_holds_exactly_the_catalogue() -> None:
    assert sorted(LOSSES.names()) == sorted(ALL + RECONSTRUCTION)
    assert len(LOSSES.names()) == 13
    for entry in LOSSES:
        assert entry.doc, f"{entry.name} has no docstring line for `zoo list`"


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(UnknownNameError) as err:
        create_loss("arcfce", C, D)
    message = str(err.value)
    assert "did you mean 'arcface'" in message
    for name in ALL:
        assert name in message


def test_create_loss_drops_none_and_unaccepted_kwargs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="zoo.losses"):
        loss = create_loss("triplet", C, D, margin=0.3, scale=64.0, temperature=None)
    assert loss.margin == 0.3
    assert "scale" in caplog.text and "temperature" not in caplog.text
    # None means "the loss's own default", not "None".
    assert create_loss("arcface", C, D, margin=None).margin == 0.5
    # A sweep's margin reaches losses that take it and is ignored by those that do not.
    assert create_loss("supcon", C, D, margin=0.3).temperature == 0.1
    assert create_loss("cosface", C, D, margin=0.2, scale=16.0).loss.scale == 16.0


def test_create_loss_returns_embedding_losses_with_the_right_flags() -> None:
    for name in ALL:
        loss = create_loss(name, C, D)
        assert isinstance(loss, EmbeddingLoss)
        assert loss.needs_pk_batches == (name in PAIR), name
        assert loss.uses_norms == (name == "adaface"), name


def test_pml_arcface_margin_is_converted_from_radians() -> None:
    # pml takes degrees and stores radians; 0.5 passed through unconverted would be 0.0087 rad.
    assert create_loss("arcface", C, D, margin=0.5).loss.margin == pytest.approx(0.5)
    assert create_loss("subcenter_arcface", C, D, margin=0.3).loss.margin == pytest.approx(0.3)


def test_triplet_rejects_an_unknown_miner() -> None:
    with pytest.raises(ValueError, match="batch_hard"):
        create_loss("triplet", C, D, miner="hardest")


# -- the common interface --------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_forward_backward_is_finite(name: str) -> None:
    torch.manual_seed(0)
    loss = create_loss(name, C, D)
    emb, labels, norms = pk_batch()
    value = loss(emb, labels, norms)
    assert value.ndim == 0 and value.dtype == torch.float32
    assert torch.isfinite(value) and value.item() > 0
    value.backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all()
    assert emb.grad.abs().sum() > 0
    params = list(loss.parameters())
    assert bool(params) == (name in WITH_CLASSIFIER)
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", ALL)
def test_bf16_autocast_gives_a_finite_float32_loss(name: str) -> None:
    torch.manual_seed(0)
    loss = create_loss(name, C, D)
    net = torch.nn.Linear(IN, D)
    x, labels = blobs(seed=0, per_class=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb, norms = embed(net, x)
        assert emb.dtype == torch.bfloat16  # autocast really is on
        value = loss(emb, labels, norms)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    # pml casts its weights to the input dtype in place; ours must stay float32.
    assert all(p.dtype == torch.float32 for p in loss.parameters())


@pytest.mark.parametrize("name", ALL)
def test_loss_falls_and_separates_blobs(name: str) -> None:
    """~100 Adam steps of a linear embedder on a P x K batch of blobs."""
    torch.manual_seed(0)
    loss = create_loss(name, C, D)
    net = torch.nn.Linear(IN, D)
    x, y = blobs(seed=0, per_class=4)  # one 4 x 4 P x K batch
    x_test, y_test = blobs(seed=1, per_class=16)
    opt = torch.optim.Adam([*net.parameters(), *loss.parameters()], lr=0.02)

    def current_loss() -> float:
        loss.eval()
        with torch.no_grad():
            emb, norms = embed(net, x)
            value = loss(emb, y, norms).item()
        loss.train()
        return value

    def nn_accuracy() -> float:
        """1-NN accuracy of held-out points against the training batch (cosine)."""
        with torch.no_grad():
            train_emb, test_emb = embed(net, x)[0], embed(net, x_test)[0]
            return (y[(test_emb @ train_emb.T).argmax(dim=1)] == y_test).float().mean().item()

    initial, initial_accuracy = current_loss(), nn_accuracy()
    assert initial_accuracy < 0.8  # the problem is not solved before training
    for _ in range(100):
        emb, norms = embed(net, x)
        value = loss(emb, y, norms)
        opt.zero_grad()
        value.backward()
        opt.step()
    final = current_loss()
    assert final < 0.6 * initial, (initial, final)
    assert nn_accuracy() >= 0.9

    if name in WITH_CLASSIFIER:
        with torch.no_grad():
            test_emb, _ = embed(net, x_test)
            head = loss.classifier()
            assert (head(test_emb).argmax(dim=1) == y_test).float().mean() >= 0.9
            assert torch.equal(loss.logits(test_emb).argmax(dim=1), head(test_emb).argmax(dim=1))


# -- classifier heads ------------------------------------------------------------------------
@pytest.mark.parametrize("name", WITH_CLASSIFIER)
def test_classifier_equals_logits_and_is_a_detached_copy(name: str) -> None:
    torch.manual_seed(0)
    loss = create_loss(name, C, D)
    emb, _, _ = pk_batch()
    emb = emb.detach()
    head = loss.classifier()
    logits = loss.logits(emb)
    assert logits.shape == (len(emb), C)
    torch.testing.assert_close(head(emb), logits)
    if name in MARGIN:
        assert isinstance(head, CosineClassifier)
        assert head.subcenters == (3 if name == "subcenter_arcface" else 1)
    own = {p.data_ptr() for p in loss.parameters()}
    assert not own & {t.data_ptr() for t in head.state_dict().values()}
    # Training the loss further must not move the exported head.
    with torch.no_grad():
        for p in loss.parameters():
            p.add_(torch.randn_like(p))
    assert not torch.allclose(loss.logits(emb), logits)
    torch.testing.assert_close(head(emb), logits)


@pytest.mark.parametrize("name", PAIR)
def test_pair_losses_have_no_classifier(name: str) -> None:
    loss = create_loss(name, C, D)
    assert loss.needs_pk_batches
    assert loss.classifier() is None
    assert loss.logits(torch.randn(3, D)) is None


def test_subcenter_layout_matches_pml() -> None:
    """pml's W is [D, C*K] with class c in columns c*K .. c*K+K-1; the head must agree."""
    torch.manual_seed(0)
    loss = create_loss("subcenter_arcface", C, D, subcenters=3)
    assert loss.loss.W.shape == (D, C * 3)
    emb = F.normalize(loss.loss.W.detach()[:, 3 * 2 + 1], dim=0)[None]  # sub-center 1 of class 2
    assert loss.logits(emb).argmax().item() == 2
    assert loss.classifier()(emb).argmax().item() == 2
    assert loss.logits(emb)[0, 2].item() == pytest.approx(loss.scale, rel=1e-5)


# -- margins ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MARGIN)
def test_the_margin_bites(name: str) -> None:
    torch.manual_seed(0)
    with_margin = create_loss(name, C, D)
    without = create_loss(name, C, D, margin=0.0)
    without.load_state_dict(with_margin.state_dict())
    emb, labels, norms = pk_batch()
    emb = emb.detach()
    easy = with_margin.logits(emb).argmax(dim=1)  # each sample's nearest class
    for target in (labels, easy):
        assert with_margin(emb, target, norms) > without(emb, target, norms) + 0.1


def test_adaface_uses_the_norms() -> None:
    torch.manual_seed(0)
    loss = create_loss("adaface", C, D).eval()
    emb, labels, _ = pk_batch()
    emb = emb.detach()
    low, high = torch.full((len(emb),), 1.0), torch.full((len(emb),), 60.0)
    assert not torch.isclose(loss(emb, labels, low), loss(emb, labels, high))
    torch.testing.assert_close(loss(emb, labels, None), loss(emb, labels, low))
    # Batch statistics move (EMA) in training only.
    mean = loss.batch_mean.clone()
    loss(emb, labels, high)
    assert torch.equal(loss.batch_mean, mean)
    loss.train()(emb, labels, high)
    assert loss.batch_mean > mean


def test_curricularface_tracks_t_in_training_only() -> None:
    torch.manual_seed(0)
    loss = create_loss("curricularface", C, D)
    emb, labels, _ = pk_batch()
    loss.eval()(emb.detach(), labels)
    assert loss.t.item() == 0.0
    target_cos = loss.logits(emb.detach()).gather(1, labels[:, None]).mean() / loss.scale
    loss.train()(emb.detach(), labels)
    assert loss.t.item() == pytest.approx(0.01 * target_cos.item(), abs=1e-6)


# -- the losses written here -----------------------------------------------------------------
def test_ntxent_matches_pml() -> None:
    emb, labels, _ = pk_batch(p=5, k=3)
    other = emb.detach().clone().requires_grad_()
    ours = create_loss("ntxent", 5, D)(emb, labels)
    reference = NTXentLoss(temperature=0.1)(other, labels)
    torch.testing.assert_close(ours, reference)
    ours.backward()
    reference.backward()
    torch.testing.assert_close(emb.grad, other.grad)


def test_focal_with_gamma_zero_is_cross_entropy() -> None:
    torch.manual_seed(0)
    focal = create_loss("focal", C, D, gamma=0.0)
    softmax = create_loss("softmax", C, D)
    softmax.load_state_dict(focal.state_dict())
    emb, labels, _ = pk_batch()
    torch.testing.assert_close(focal(emb, labels), softmax(emb, labels))
    # With gamma > 0 every sample is down-weighted by (1 - p_t)^gamma < 1.
    focal2 = create_loss("focal", C, D, gamma=2.0)
    focal2.load_state_dict(focal.state_dict())
    assert focal2(emb, labels) < softmax(emb, labels)


def test_center_loss_reports_its_parts() -> None:
    torch.manual_seed(0)
    loss = create_loss("center", C, D, center_weight=0.5)
    emb, labels, _ = pk_batch()
    value = loss(emb, labels)
    parts = loss.last_components
    assert set(parts) == {"softmax", "center"}
    assert value.item() == pytest.approx(parts["softmax"] + 0.5 * parts["center"], rel=1e-5)
    # Centers start at zero, so the center term is 1/2 |x|^2 = 1/2 on unit embeddings.
    assert parts["center"] == pytest.approx(0.5, rel=1e-5)
    assert create_loss("softmax", C, D).last_components == {}


@pytest.mark.parametrize("name", ["arcface", "softmax", "triplet"])
def test_part_loss_is_the_mean_of_each_parts_own_loss(name: str) -> None:
    torch.manual_seed(0)
    loss = create_loss(name, 5, 32, parts=4)
    assert len(loss.terms) == 4 and all(t.embedding_dim == 8 for t in loss.terms)
    emb = F.normalize(torch.randn(20, 32), dim=1)
    labels = torch.arange(20) % 5
    chunks = [F.normalize(c, dim=1) for c in emb.chunk(4, dim=1)]
    torch.manual_seed(1)
    value = loss(emb, labels)
    torch.manual_seed(1)  # the miners draw the same triplets
    separate = torch.stack([t(c, labels) for t, c in zip(loss.terms, chunks)]).mean()
    assert value.item() == pytest.approx(separate.item(), rel=1e-5)
    assert loss.needs_pk_batches == (name == "triplet")
    if name == "triplet":
        assert not loss.has_classes and loss.classifier() is None and loss.logits(emb) is None
        return
    logits = torch.stack([t.logits(c) for t, c in zip(loss.terms, chunks)]).mean(0)
    assert torch.allclose(loss.logits(emb), logits, atol=1e-5)
    assert torch.allclose(loss.classifier()(emb), logits, atol=1e-5)


def test_part_classifier_has_one_scale_to_calibrate() -> None:
    from training.engine.evaluation import calibrate_scale

    loss = create_loss("cosface", 3, 16, parts=4)
    head = loss.classifier()
    emb = F.normalize(torch.randn(30, 16), dim=1)
    labels = torch.arange(30) % 3
    before = head(emb).argmax(1)
    scale = calibrate_scale(head, emb, labels)
    assert scale is not None and float(head.scale) == pytest.approx(scale)
    assert torch.equal(head(emb).argmax(1), before)  # predictions unchanged
    with pytest.raises(ValueError, match="does not split into 3 equal parts"):
        create_loss("arcface", 3, 16, parts=3)
    with pytest.raises(ValueError, match="AdaFaceLoss reads the embedding's length"):
        create_loss("adaface", 3, 16, parts=4)
