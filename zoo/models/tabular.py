"""Tabular encoders: a residual MLP and an FT-Transformer (Gorishniy et al., 2021).

Rows arrive encoded and standardised (``Preprocessing`` travels with the model): numeric
features at zero mean and unit variance, a table's missing indicators and one-hot category
slots as 0/1, ``[B, F]`` in all. The residual MLP reads the one-hot blocks as they are; the
FT-Transformer makes one token of each column (``feature_groups``).
"""
from __future__ import annotations

from typing import Any, Sequence

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
    """One learned token per column, plus a [CLS] token.

    A numeric feature ``x_j`` gives ``x_j * W_j + b_j``. A table's column may span several
    features (``groups``: a value and its missing indicator, or a one-hot block of
    categories); its token is the sum of its features' ``x_f * W_f`` plus one bias, which
    for a one-hot block is exactly the embedding lookup of the paper's categorical tokens.
    """

    def __init__(self, num_features: int, d_token: int,
                 groups: Sequence[int] | None = None) -> None:
        super().__init__()
        groups = list(groups) if groups else [1] * num_features
        if sum(groups) != num_features or min(groups) < 1:
            raise ValueError(f"feature groups {groups} do not split {num_features} features")
        self.weight = nn.Parameter(torch.randn(num_features, d_token) / d_token**0.5)
        self.bias = nn.Parameter(torch.zeros(len(groups), d_token))
        self.cls = nn.Parameter(torch.randn(1, 1, d_token) / d_token**0.5)
        self.grouped = any(g > 1 for g in groups)
        # [tokens, features]: which features add up to which token (not saved: the groups
        # are part of the architecture's recipe)
        owner = [t for t, width in enumerate(groups) for _ in range(width)]
        self.register_buffer("assign", torch.tensor(
            [[float(owner[f] == t) for f in range(num_features)] for t in range(len(groups))]),
            persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.unsqueeze(-1) * self.weight
        if self.grouped:
            tokens = torch.matmul(self.assign, tokens)
        tokens = tokens + self.bias
        return torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)


class FTTransformer(nn.Module):
    """Feature tokenizer + pre-norm Transformer encoder; the [CLS] token is the feature."""

    def __init__(
        self, num_features: int, d_token: int = 64, depth: int = 3, heads: int = 4,
        dropout: float = 0.1, groups: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.tokenizer = FeatureTokenizer(num_features, d_token, groups)
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
    depth: int = 3, heads: int = 4, dropout: float = 0.1,
    feature_groups: Sequence[int] | None = None, **_: Any,
) -> EmbeddingModel:
    """FT-Transformer for tabular rows (a token per column + Transformer, [CLS] output)"""
    backbone = FTTransformer(num_features, d_token, depth, heads, dropout, feature_groups)
    return _tabular("ft_transformer", backbone, num_classes, embedding_dim, 0.0)


residual_mlp.modality = "tabular"  # type: ignore[attr-defined]
ft_transformer.modality = "tabular"  # type: ignore[attr-defined]
