"""Classification and projection heads on top of pooled embeddings ``[B, in_dim]``."""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

__all__ = ["ClassificationHead", "PooledLayersHead", "ProjectionHead"]


class ClassificationHead(nn.Module):
    """Dropout + Linear classifier, or a one-hidden-layer MLP when ``hidden_dim`` is given.

    ``hidden_dim=None``: ``Dropout -> Linear(in_dim, num_classes)``;
    otherwise ``Linear(in_dim, hidden_dim) -> ReLU -> Dropout -> Linear(hidden_dim, num_classes)``.
    """

    def __init__(
        self, in_dim: int, num_classes: int, dropout: float = 0.0, hidden_dim: int | None = None
    ) -> None:
        super().__init__()
        if in_dim < 1 or num_classes < 1:
            raise ValueError(
                f"ClassificationHead: in_dim and num_classes must be >= 1, got {in_dim}, {num_classes}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ClassificationHead: dropout must be in [0, 1), got {dropout}")
        self.in_dim = in_dim
        self.num_classes = num_classes
        if hidden_dim is None:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes))
        else:
            if hidden_dim < 1:
                raise ValueError(f"ClassificationHead: hidden_dim must be >= 1 or None, got {hidden_dim}")
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden_dim),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, num_classes),
            )

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_dim]`` -> logits ``[B, num_classes]``."""
        return self.net(x)


class ProjectionHead(nn.Module):
    """SimCLR-style MLP projector: ``(Linear -> BN -> ReLU) x (num_layers - 1) -> Linear``.

    With ``batch_norm=False`` the hidden layers are ``Linear -> ReLU`` (with biases). ``num_layers=1``
    is a single linear projection.
    """

    def __init__(
        self,
        in_dim: int = 512,
        hidden_dim: int = 512,
        out_dim: int = 128,
        num_layers: int = 2,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"ProjectionHead: num_layers must be >= 1, got {num_layers}")
        if min(in_dim, hidden_dim, out_dim) < 1:
            raise ValueError(
                f"ProjectionHead: dims must be >= 1, got in_dim={in_dim}, hidden_dim={hidden_dim}, out_dim={out_dim}"
            )
        self.in_dim = in_dim
        self.out_dim = out_dim
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_dim]`` -> projections ``[B, out_dim]``."""
        return self.net(x)


class PooledLayersHead(nn.Module):
    """Classifier on ``num_layers`` concatenated pooled features ``[B, num_layers * dim]`` of a pretrained encoder.

    ``LayerNorm(dim)`` on each layer's pooled vector (when ``norm``), then ``Dropout`` and ``Linear``; with one
    layer this is the usual fine-tuning head ``LayerNorm -> Dropout -> Linear`` (as in AST's and BEATs'
    classifiers, whose official BEATs predictor has no norm: ``norm=False``). The per-layer normalisation puts
    layers of different scales on equal footing when several are concatenated, and makes the head's learning
    rate insensitive to the feature scale.
    """

    def __init__(self, dim: int, num_layers: int, num_classes: int, norm: bool = True, dropout: float = 0.0):
        super().__init__()
        if dim < 1 or num_layers < 1 or num_classes < 1:
            raise ValueError(f"PooledLayersHead: dim, num_layers and num_classes must be >= 1, got {dim}, "
                             f"{num_layers}, {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"PooledLayersHead: dropout must be in [0, 1), got {dropout}")
        self.dim, self.num_layers = dim, num_layers
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(dim * num_layers, num_classes)

    def forward(self, pooled: Tensor) -> Tensor:
        """``[B, num_layers * dim]`` -> logits ``[B, num_classes]``."""
        x = self.norm(rearrange(pooled, "b (l d) -> b l d", l=self.num_layers))
        return self.linear(self.dropout(rearrange(x, "b l d -> b (l d)")))
