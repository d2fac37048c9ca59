"""Autoencoder embeddings without labels: vae + elbo, sae + sparse_recon."""
from __future__ import annotations

import mlflow
import pytest
import torch
import torch.nn.functional as F

from training.pipeline.sweep import SweepConfig
from training.config import TrainConfig
from training.pipeline.run import train
from zoo.losses import create_loss
from zoo.models import create_model


def test_vae_gives_its_latent_mean_as_the_embedding_and_reconstructions_in_training() -> None:
    torch.manual_seed(0)
    vae = create_model("vae", 3, 8, num_features=6)
    x = torch.randn(5, 6)
    out = vae.train()(x)
    assert {"embedding", "reconstruction", "target", "mu", "logvar"} <= set(out)
    assert out["reconstruction"].shape == (5, 6) and torch.equal(out["target"], x)
    assert torch.allclose(out["embedding"], F.normalize(out["mu"], dim=1), atol=1e-6)
    evaluated = vae.eval()(x)
    assert set(evaluated) == {"embedding", "logits"}  # what is exported and served
    assert torch.allclose(evaluated["embedding"], F.normalize(vae.neck(vae.backbone(x)), dim=1),
                          atol=1e-6)
    sae = create_model("sae", 3, 8, num_features=6).train()
    code = sae(x)["code"]
    assert (code >= 0).all()


def test_elbo_and_sparse_recon_follow_their_definitions() -> None:
    torch.manual_seed(0)
    x, recon = torch.randn(4, 6), torch.randn(4, 6)
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3) * 0.1
    elbo = create_loss("elbo", 2, 3, kl_weight=0.5)
    value = elbo(F.normalize(mu, dim=1), torch.zeros(4), outputs=dict(
        reconstruction=recon, target=x, mu=mu, logvar=logvar))
    kl = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp())).mean()
    mse = ((recon - x) ** 2).mean()
    assert value.item() == pytest.approx((mse + 0.5 * kl).item(), rel=1e-6)
    assert elbo.last_components == pytest.approx({"reconstruction": mse.item(), "kl": kl.item()})
    code = torch.rand(4, 3)
    sparse = create_loss("sparse_recon", 2, 3, sparsity=0.1)
    value = sparse(code, torch.zeros(4), outputs=dict(reconstruction=recon, target=x, code=code))
    assert value.item() == pytest.approx((mse + 0.1 * code.abs().mean()).item(), rel=1e-6)
    assert not elbo.has_classes and "logvar" in elbo.reads_outputs
    with pytest.raises(ValueError, match="ELBOLoss needs a model that gives logvar, mu, "
                                         "reconstruction, target"):
        elbo(F.normalize(mu, dim=1), torch.zeros(4), outputs={"embedding": mu})


def test_vae_trains_without_labels_and_logs_its_reconstruction_error(tracking_uri: str) -> None:
    result = train(TrainConfig.of(model="vae", loss="elbo", data="emitters", epochs=4,
                                  embedding_dim=16, batch_size=64, open_set=0.3, log_model=False,
                                  experiment="ae"))
    client = mlflow.MlflowClient()
    errors = [m.value for m in sorted(client.get_metric_history(result.run_id,
                                                                "train_loss_reconstruction"),
                                      key=lambda m: m.step)]
    assert len(errors) == 4 and errors[-1] < 0.8 * errors[0]
    assert len(client.get_metric_history(result.run_id, "train_loss_kl")) == 4
    for key in ("test_map_at_r", "test_nmi", "open_map_at_r", "test_accuracy"):
        assert 0 <= result.metrics[key] <= 1, key  # classified by class prototypes


def test_reconstruction_losses_need_an_autoencoder(tracking_uri: str) -> None:
    with pytest.raises(ValueError, match="loss 'elbo' reads the model's logvar, mu, "
                                         "reconstruction, target, which 'residual_mlp' does "
                                         "not give"):
        train(TrainConfig.of(model="residual_mlp", loss="elbo", data="emitters", epochs=1,
                             log_model=False, experiment="ae-bad"))


def test_tabular_sweeps_compare_supervised_and_unsupervised_embeddings() -> None:
    grid = SweepConfig.of(data="emitters").combinations("tabular")
    assert ("vae", "elbo") in grid and ("sae", "sparse_recon") in grid
    assert ("vae", "sparse_recon") in grid and ("sae", "elbo") not in grid
    assert ("residual_mlp", "elbo") not in grid and ("residual_mlp", "arcface") in grid
    assert ("vae", "arcface") not in grid  # by default autoencoders train unsupervised
    asked = SweepConfig.of(models="vae,residual_mlp", losses="arcface,elbo").combinations("tabular")
    assert asked == [("vae", "arcface"), ("vae", "elbo"), ("residual_mlp", "arcface")]
    assert not any(loss in ("elbo", "sparse_recon") for _, loss in
                   SweepConfig().combinations("image"))
    with pytest.raises(ValueError, match="elbo needs vae, sparse_recon vae or sae"):
        SweepConfig.of(models="resnet18", losses="elbo").combinations("image")
