"""Losses of the autoencoders (``vae``, ``sae``): reconstruct the row, ignore the labels.

They read the model's training outputs (``reconstruction``, ``target`` and ``mu``/``logvar``
or ``code``) rather than the embedding alone, own no class weights (the trainer classifies
with class prototypes, as for pair losses), and report their parts per epoch
(``train_loss_reconstruction`` and ``train_loss_kl`` / ``train_loss_sparsity``).
"""
from __future__ import annotations

import torch

from zoo.losses.registry import LOSSES
from zoo.losses.base import EmbeddingLoss


class ReconstructionLoss(EmbeddingLoss):
    """Mean squared reconstruction error per feature, plus a weighted latent penalty."""

    penalty_name = ""

    def __init__(self, num_classes: int, embedding_dim: int, weight: float) -> None:
        super().__init__(num_classes, embedding_dim)
        if weight < 0:
            raise ValueError(f"{type(self).__name__} weight must be >= 0, got {weight}")
        self.weight = float(weight)

    def compute_output_loss(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = sorted(k for k in self.needs_outputs if k not in outputs)
        if missing:
            raise ValueError(f"{type(self).__name__} needs a model that gives "
                             f"{', '.join(missing)} (an autoencoder: vae, sae)")
        error = (outputs["reconstruction"].float() - outputs["target"].float()).pow(2).mean()
        penalty = self.penalty(outputs)
        self.last_components = {"reconstruction": float(error.detach()),
                                self.penalty_name: float(penalty.detach())}
        return error + self.weight * penalty

    def penalty(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.penalty_name}_weight={self.weight}"


class ELBOLoss(ReconstructionLoss):
    """Negative evidence lower bound: reconstruction + weight * KL(q(z|x) || N(0, I)),
    the KL averaged per latent dimension like the error per feature (beta-VAE's weight)."""

    penalty_name = "kl"
    needs_outputs = frozenset({"reconstruction", "target", "mu", "logvar"})

    def penalty(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        mu, logvar = outputs["mu"].float(), outputs["logvar"].float()
        return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).mean()


class SparseReconstructionLoss(ReconstructionLoss):
    """Reconstruction + weight * mean |code| (L1 sparsity of the hidden code)."""

    penalty_name = "sparsity"
    needs_outputs = frozenset({"reconstruction", "target", "code"})

    def penalty(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return outputs["code"].float().abs().mean()


@LOSSES.register()
def elbo(num_classes: int, embedding_dim: int, kl_weight: float = 1.0) -> EmbeddingLoss:
    """VAE evidence lower bound: reconstruction error + KL to the prior (no labels)."""
    return ELBOLoss(num_classes, embedding_dim, kl_weight)


@LOSSES.register()
def sparse_recon(num_classes: int, embedding_dim: int, sparsity: float = 1e-3) -> EmbeddingLoss:
    """Sparse autoencoder loss: reconstruction error + L1 on the code (no labels)."""
    return SparseReconstructionLoss(num_classes, embedding_dim, sparsity)


elbo.needs_outputs = ELBOLoss.needs_outputs  # type: ignore[attr-defined]
sparse_recon.needs_outputs = SparseReconstructionLoss.needs_outputs  # type: ignore[attr-defined]
