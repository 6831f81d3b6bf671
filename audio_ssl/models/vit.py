"""Spectrogram Transformer (ViT over log-mel patches) for masked token prediction, probes and fine-tuning.

Layout: non-overlapping ``p_f x p_t`` patches embedded by a ``Conv2d(kernel=stride=patch)``, flattened in
the frequency-major order of :mod:`audio_ssl.tokenizers.patches` (patch ``n = i_f * n_t + i_t``), plus a
2-D positional embedding, then ``depth`` pre-norm Transformer blocks and a final LayerNorm.

Positional embeddings (``pos_embed``):

* ``"learned"`` (default): one learned vector per frequency row and one per time column, added
  (``pos[i_f, i_t] = freq[i_f] + time[i_t]``). Factorising keeps the parameter count at
  ``(n_f + n_t) * D`` and lets every time embedding be trained by every frequency row, which matters on
  small data. The frequency grid is fixed by ``n_mels``; inputs may use up to ``max_frames`` frames.
* ``"sincos"``: fixed 2-D sine-cosine embedding (half the channels encode the frequency row, half the
  time column, as in MAE); any input size works.

Masking (BERT / SSAST style): ``forward_features(spec, mask)`` replaces the embeddings of masked
patches by a learned ``mask_token`` *before* the positional embedding is added, so the encoder knows
where each hidden patch lies but not what it contains.

Clip embeddings (:meth:`forward`) are the mean over the output tokens. In training mode, ``patchout``
drops that fraction of the patches (random per example, after the positional embedding) before the
blocks, as in PaSST: a regulariser for fine-tuning/probing on small data that also saves compute. It
never applies to :meth:`forward_features`, which must return every position.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from audio_ssl.tokenizers.patches import as_patch_size, grid_shape

__all__ = ["SpectrogramTransformer", "TransformerBlock", "drop_path", "sincos_2d"]


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero the residual branch ``x [B, ...]`` of a random ``p`` of the examples."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


def sincos_1d(positions: int, dim: int, device=None) -> Tensor:
    """Sine-cosine embedding ``[positions, dim]`` (``dim`` even), frequencies ``1 / 10000^(2i/dim)``."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, device=device, dtype=torch.float32) / (dim / 2))
    angles = torch.arange(positions, device=device, dtype=torch.float32)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(n_f: int, n_t: int, dim: int, device=None) -> Tensor:
    """Fixed 2-D embedding ``[n_f * n_t, dim]`` in frequency-major order: first half of the channels
    encodes the frequency row, second half the time column (``dim`` divisible by 4)."""
    freq = sincos_1d(n_f, dim // 2, device)[:, None, :].expand(n_f, n_t, dim // 2)
    time = sincos_1d(n_t, dim // 2, device)[None, :, :].expand(n_f, n_t, dim // 2)
    return torch.cat([freq, time], dim=-1).reshape(n_f * n_t, dim)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (``scaled_dot_product_attention``)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_dropout: float = 0.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_dropout = attn_dropout
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        return self.proj_drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + DropPath(Attn(LN(x)))``, then ``x + DropPath(MLP(LN(x)))`` (GELU MLP)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 dropout: float = 0.0, attn_dropout: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_dropout, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))
        self.drop_path = drop_path

    def forward(self, x: Tensor) -> Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class SpectrogramTransformer(nn.Module):
    """ViT encoder for spectrograms ``[B, in_channels, F, T]``.

    Args:
        n_mels: frequency bins of the input ``F`` (fixes the ``n_f = n_mels // p_f`` frequency rows).
        max_frames: longest input in frames for ``pos_embed="learned"`` (``max_frames // p_t`` columns).
        patch_size: ``(p_f, p_t)`` or an int; remainders of ``F``/``T`` are cropped, as in ``patchify``.
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: Transformer size.
        dropout: dropout after the embeddings, in the MLPs and after attention projections.
        attn_dropout: dropout on attention weights.
        drop_path: stochastic depth rate of the last block (linearly increasing from 0 over the blocks).
        pos_embed: ``"learned"`` (factorised frequency + time) or ``"sincos"`` (fixed 2-D).
        patchout: fraction of patches dropped in training by :meth:`forward` (clip embeddings only).
        in_channels: input channels (1 for a log-mel spectrogram).

    Attributes: ``out_dim`` (= ``embed_dim``; both the clip embedding size and the per-patch feature size),
    ``patch_size``; ``num_layers`` (= ``depth``), :meth:`layer_id` and ``no_weight_decay_keys`` (the position
    tables and the mask token) for layer-wise lr decay (:func:`audio_ssl.utils.optim.layer_decay_groups`, BEiT's
    rule); :meth:`architecture` (what a checkpoint records to refuse a different network on load).
    """

    no_weight_decay_keys = ("freq_embed", "time_embed", "mask_token")

    def __init__(
        self,
        n_mels: int = 128,
        max_frames: int = 1024,
        patch_size: int | tuple[int, int] = 16,
        embed_dim: int = 256,
        depth: int = 6,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        drop_path: float = 0.1,
        pos_embed: Literal["learned", "sincos"] = "learned",
        patchout: float = 0.0,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        self.patch_size = as_patch_size(patch_size)
        p_f, p_t = self.patch_size
        if pos_embed not in ("learned", "sincos"):
            raise ValueError(f"SpectrogramTransformer: pos_embed must be 'learned' or 'sincos', got {pos_embed!r}")
        if pos_embed == "sincos" and embed_dim % 4:
            raise ValueError(f"SpectrogramTransformer: pos_embed='sincos' needs embed_dim % 4 == 0, got {embed_dim}")
        if not 0.0 <= patchout < 1.0:
            raise ValueError(f"SpectrogramTransformer: patchout must be in [0, 1), got {patchout}")
        if depth < 1:
            raise ValueError(f"SpectrogramTransformer: depth must be >= 1, got {depth}")
        self.n_mels, self.max_frames = int(n_mels), int(max_frames)
        self.num_freq_patches, self.max_time_patches = grid_shape(self.n_mels, self.max_frames, self.patch_size)
        self.embed_dim = self.out_dim = int(embed_dim)
        self.in_channels = in_channels
        self.depth = self.num_layers = int(depth)
        self.num_heads, self.mlp_ratio, self.qkv_bias = int(num_heads), float(mlp_ratio), bool(qkv_bias)
        self.pos_embed_type = pos_embed
        self.patchout = float(patchout)

        self.patch_embed = nn.Conv2d(in_channels, embed_dim, kernel_size=(p_f, p_t), stride=(p_f, p_t))
        if pos_embed == "learned":
            self.freq_embed = nn.Parameter(torch.zeros(self.num_freq_patches, embed_dim))
            self.time_embed = nn.Parameter(torch.zeros(self.max_time_patches, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(embed_dim))
        self.embed_drop = nn.Dropout(dropout)
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            TransformerBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, dropout, attn_dropout, r) for r in rates
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated-normal(0.02) linears, embeddings and mask token; patch embedding as a linear layer."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        if self.pos_embed_type == "learned":
            nn.init.trunc_normal_(self.freq_embed, std=0.02)
            nn.init.trunc_normal_(self.time_embed, std=0.02)

    def architecture(self) -> dict:
        """The structural hyper-parameters (regularisers such as dropout, drop_path and patchout excluded): two
        encoders with equal values compute the same function of the same weights."""
        return {"n_mels": self.n_mels, "max_frames": self.max_frames, "patch_size": list(self.patch_size),
                "embed_dim": self.embed_dim, "depth": self.depth, "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio, "qkv_bias": self.qkv_bias, "pos_embed": self.pos_embed_type,
                "in_channels": self.in_channels}

    def layer_id(self, name: str) -> int:
        """Depth of parameter ``name`` for layer-wise lr decay: 0 for the patch embedding, positions and mask
        token, ``i + 1`` for block ``i``, ``depth`` for the final norm. ValueError for any other name."""
        head, _, rest = name.partition(".")
        if head in ("patch_embed", "freq_embed", "time_embed", "mask_token"):
            return 0
        if head == "blocks" and rest.split(".", 1)[0].isdigit():
            return int(rest.split(".", 1)[0]) + 1
        if head == "norm":
            return self.depth
        raise ValueError(f"SpectrogramTransformer.layer_id: {name!r} is not a parameter of this encoder")

    # ------------------------------------------------------------------ embeddings
    def grid(self, spec: Tensor) -> tuple[int, int]:
        """Patch grid ``(n_f, n_t)`` of ``spec [B, C, F, T]`` (checked against ``n_mels``/``max_frames``)."""
        if spec.dim() != 4 or spec.shape[1] != self.in_channels:
            raise ValueError(
                f"SpectrogramTransformer expects input of shape [B, {self.in_channels}, F, T], got {tuple(spec.shape)}"
            )
        n_f, n_t = grid_shape(spec.shape[2], spec.shape[3], self.patch_size)
        if self.pos_embed_type == "learned":
            if n_f != self.num_freq_patches:
                raise ValueError(
                    f"SpectrogramTransformer was built for n_mels={self.n_mels} ({self.num_freq_patches} frequency "
                    f"patches) but the input has F={spec.shape[2]}; set encoder n_mels to the front end's n_mels"
                )
            if n_t > self.max_time_patches:
                raise ValueError(
                    f"input has T={spec.shape[3]} frames ({n_t} time patches) but max_frames={self.max_frames} "
                    f"allows {self.max_time_patches}; raise the encoder's max_frames"
                )
        return n_f, n_t

    def position_embedding(self, n_f: int, n_t: int) -> Tensor:
        """``[n_f * n_t, D]`` positional embedding in frequency-major order."""
        if self.pos_embed_type == "sincos":
            return sincos_2d(n_f, n_t, self.embed_dim, self.mask_token.device).to(self.mask_token.dtype)
        return (self.freq_embed[:n_f, None, :] + self.time_embed[None, :n_t, :]).reshape(n_f * n_t, -1)

    def embed_patches(self, spec: Tensor, mask: Tensor | None = None) -> Tensor:
        """Patch embeddings + positions ``[B, N, D]``; rows with ``mask [B, N] == True`` become the mask token."""
        n_f, n_t = self.grid(spec)
        x = self.patch_embed(spec).flatten(2).transpose(1, 2)  # [B, n_f * n_t, D], frequency-major
        if mask is not None:
            if mask.shape != x.shape[:2]:
                raise ValueError(f"mask has shape {tuple(mask.shape)}, expected [B, N] = {tuple(x.shape[:2])}")
            x = torch.where(mask.to(x.device, torch.bool)[..., None], self.mask_token.to(x.dtype), x)
        return x + self.position_embedding(n_f, n_t).to(x.dtype)

    def encode(self, x: Tensor) -> Tensor:
        """Run the blocks and the final norm on token embeddings ``[B, N, D]``."""
        x = self.embed_drop(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    # ------------------------------------------------------------------ public API
    def forward_features(self, spec: Tensor, mask: Tensor | None = None) -> Tensor:
        """Per-patch features ``[B, N, D]`` (frequency-major); masked patches enter as the mask token."""
        return self.encode(self.embed_patches(spec, mask))

    def forward(self, spec: Tensor) -> Tensor:
        """Clip embedding ``[B, D]``: mean over output tokens (with patchout in training mode)."""
        x = self.embed_patches(spec)
        if self.training and self.patchout > 0:
            b, n, d = x.shape
            keep = max(1, round((1.0 - self.patchout) * n))
            idx = torch.rand(b, n, device=x.device).argsort(dim=1)[:, :keep]
            x = x.gather(1, idx[..., None].expand(b, keep, d))
        return self.encode(x).mean(dim=1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return (f"patch_size={self.patch_size}, n_mels={self.n_mels}, max_frames={self.max_frames}, "
                f"pos_embed={self.pos_embed_type!r}, patchout={self.patchout}")

