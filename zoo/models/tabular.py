"""Tabular encoders: a residual MLP and an FT-Transformer (Gorishniy et al., 2021).

Rows arrive standardised (mean/std of the training split travel with the model), so the
encoders see zero-mean, unit-variance features of shape ``[B, F]``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo.models.embedding import EmbeddingModel
from zoo.models.registry import MODELS


class ResidualBlock(nn.Module):
    """Pre-norm residual block: x + Linear(GELU(Linear(LayerNorm(x))))."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, width * 2),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(width * 2, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResidualMLP(nn.Module):
    """Input projection, residual blocks, final LayerNorm."""

    def __init__(self, num_features: int, width: int = 128, depth: int = 3, dropout: float = 0.1):
        super().__init__()
        self.stem = nn.Linear(num_features, width)
        self.blocks = nn.Sequential(*(ResidualBlock(width, dropout) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.num_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.stem(x)))


class FeatureTokenizer(nn.Module):
    """One learned token per numeric feature: ``x_j * W_j + b_j``, plus a [CLS] token."""

    def __init__(self, num_features: int, d_token: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_features, d_token) / d_token**0.5)
        self.bias = nn.Parameter(torch.zeros(num_features, d_token))
        self.cls = nn.Parameter(torch.randn(1, 1, d_token) / d_token**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.unsqueeze(-1) * self.weight + self.bias
        return torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)


class FTTransformer(nn.Module):
    """Feature tokenizer + pre-norm Transformer encoder; the [CLS] token is the feature."""

    def __init__(
        self, num_features: int, d_token: int = 64, depth: int = 3, heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.tokenizer = FeatureTokenizer(num_features, d_token)
        layer = nn.TransformerEncoderLayer(
            d_token, heads, dim_feedforward=d_token * 2, dropout=dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_token)
        self.num_features = d_token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.encoder(self.tokenizer(x))[:, 0])


def _tabular(name: str, backbone: nn.Module, num_classes: int, embedding_dim: int,
             dropout: float) -> EmbeddingModel:
    model = EmbeddingModel(
        backbone, backbone.num_features, embedding_dim, num_classes, dropout,
        modality="tabular", name=name,
    )
    return model


@MODELS.register()
def residual_mlp(
    num_classes: int, embedding_dim: int, *, num_features: int, width: int = 128, depth: int = 3,
    dropout: float = 0.1, **_: Any,
) -> EmbeddingModel:
    """Residual MLP for tabular rows (pre-norm blocks, GELU)"""
    return _tabular("residual_mlp", ResidualMLP(num_features, width, depth, dropout),
                    num_classes, embedding_dim, 0.0)


@MODELS.register()
def ft_transformer(
    num_classes: int, embedding_dim: int, *, num_features: int, d_token: int = 64,
    depth: int = 3, heads: int = 4, dropout: float = 0.1, **_: Any,
) -> EmbeddingModel:
    """FT-Transformer for tabular rows (feature tokens + Transformer, [CLS] output)"""
    return _tabular("ft_transformer", FTTransformer(num_features, d_token, depth, heads, dropout),
                    num_classes, embedding_dim, 0.0)


residual_mlp.modality = "tabular"  # type: ignore[attr-defined]
ft_transformer.modality = "tabular"  # type: ignore[attr-defined]
