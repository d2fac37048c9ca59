"""Autoencoders for tabular rows: embeddings learned without labels.

``vae`` (variational autoencoder, Kingma & Welling 2014): the encoder gives the mean and
log-variance of a Gaussian latent; training decodes a sample of it. The embedding is the
latent mean. ``sae`` (sparse autoencoder): the embedding is the encoder's non-negative hidden
code, kept sparse by an L1 penalty. Both train with their own losses (``elbo``,
``sparse_recon``), which read the reconstruction from the model's training outputs, so a
sweep compares them with supervised encoders on the same retrieval and clustering metrics.
Any other loss trains them as plain encoders (the decoder is then unused).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.models.embedding import EmbeddingModel
from zoo.models.registry import MODELS


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear → LayerNorm → GELU between every pair of sizes but the last, Linear at the end."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.LayerNorm(b), nn.GELU()]
    return nn.Sequential(*layers)


class AutoencoderModel(EmbeddingModel):
    """An encoder, a latent (the embedding) and a decoder back to the row.

    In training mode ``forward`` also returns ``reconstruction`` and ``target`` (the input),
    plus ``mu`` and ``logvar`` (VAE) or ``code`` (SAE), for the reconstruction losses.
    """

    def __init__(self, kind: str, num_features: int, embedding_dim: int, num_classes: int,
                 hidden: int = 128) -> None:
        encoder = _mlp([num_features, hidden, hidden])
        super().__init__(nn.Sequential(encoder, nn.LayerNorm(hidden), nn.GELU()), hidden,
                         embedding_dim, num_classes, modality="tabular", name=kind)
        self.kind = kind
        self.training_outputs = OUTPUTS[kind]
        self.neck = nn.Linear(hidden, embedding_dim)  # the latent mean, or the code's input
        self.logvar = nn.Linear(hidden, embedding_dim) if kind == "vae" else None
        self.decoder = _mlp([embedding_dim, hidden, hidden, num_features])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.backbone(x)
        latent = self.neck(h)
        if self.kind == "sae":
            latent = F.relu(latent)  # a non-negative code, which L1 can make sparse
        out = {"embedding": F.normalize(latent.float(), dim=1)}
        if self.head is not None:
            out["logits"] = self.head(out["embedding"]).float()
        if self.training:
            out["norm"] = latent.float().norm(dim=1)
            if self.kind == "vae":
                logvar = self.logvar(h).clamp(-10, 10)
                sample = latent + torch.randn_like(latent) * torch.exp(0.5 * logvar)
                out.update(mu=latent, logvar=logvar, code=latent,
                           reconstruction=self.decoder(sample))
            else:
                out.update(code=latent, reconstruction=self.decoder(latent))
            out["target"] = x
        return out


#: What each kind adds to ``forward``'s dict in training (the VAE's code is its latent mean,
#: so sparse_recon trains it too: a VAE with a sparse mean).
OUTPUTS = {"vae": frozenset({"reconstruction", "target", "mu", "logvar", "code"}),
           "sae": frozenset({"reconstruction", "target", "code"})}


def _factory(kind: str, doc: str):
    def factory(num_classes: int, embedding_dim: int, *, num_features: int, hidden: int = 128,
                **_: Any) -> EmbeddingModel:
        return AutoencoderModel(kind, num_features, embedding_dim, num_classes, hidden)

    factory.__name__ = kind
    factory.__doc__ = doc
    factory.modality = "tabular"  # type: ignore[attr-defined]
    factory.training_outputs = OUTPUTS[kind]  # type: ignore[attr-defined]
    MODELS.register(kind)(factory)


_factory("vae", "Variational autoencoder for tabular rows (embedding: the latent mean; no labels)")
_factory("sae", "Sparse autoencoder for tabular rows (embedding: the L1-sparse code; no labels)")
