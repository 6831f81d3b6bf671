"""BEATs audio encoder (Chen et al., 2022, https://arxiv.org/abs/2212.09058), compatible with the official checkpoints.

This is an independent implementation of the model in ``microsoft/unilm/beats``. Parameter names follow the
official module tree exactly, so the released checkpoints (``BEATs_iter3.pt``, ``BEATs_iter3_plus_AS2M.pt``,
``*_finetuned_on_AS2M_*.pt``) load with ``strict=True``. Points of the official design kept here:

* patch embedding: a ``patch x patch`` convolution over the ``[frames, 128]`` fbank; tokens are ordered
  time-major (``token = t * freq_patches + f``), followed by a LayerNorm and a projection to the encoder width;
* convolutional positional embedding with weight normalisation over the kernel axis, stored as
  ``encoder.pos_conv.0.weight_g`` / ``weight_v`` (what ``torch.nn.utils.weight_norm(dim=2)`` writes);
* post-norm Transformer layers with DeepNorm residual scaling ``alpha = (2 L) ** 0.25``;
* T5-style bucketed relative position bias, one table shared by all layers (its key appears under every
  layer, as in the official state dict), computed once and re-weighted in every layer by a query-dependent
  gate (``gru_rel_pos``: ``grep_linear`` / ``grep_a``);
* the fairseq padding convention (``True`` = padded): padded tokens are zeroed before the positional
  convolution and never attended to.

Attention runs through :func:`torch.nn.functional.scaled_dot_product_attention` with the (gated) position
bias as an additive mask; the official code's ``alpha = 32`` max-subtraction trick is a numerically
equivalent rewrite of the same softmax.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from audio_ssl.features.fbank import BEATsFbank, reduce_padding_mask
from audio_ssl.utils.download import download_file, sha256sum
from audio_ssl.utils.io import atomic_write
from audio_ssl.utils.torch_files import CheckpointFileError, load_weights_file

log = logging.getLogger(__name__)

__all__ = [
    "BEATS_OFFICIAL_URL",
    "BEATs",
    "BEATsCheckpointError",
    "BEATsConfig",
    "BEATsOutput",
    "DEFAULT_CHECKPOINT_DIR",
    "load_beats_checkpoint",
    "relative_position_bucket",
    "save_beats_checkpoint",
]

#: Where the official checkpoints are listed (their download links carry expiring tokens).
BEATS_OFFICIAL_URL = "https://github.com/microsoft/unilm/tree/master/beats"
#: Default download cache for checkpoints given as URLs.
DEFAULT_CHECKPOINT_DIR = Path("~/.cache/audio-ssl/checkpoints")

_ACTIVATIONS = ("relu", "gelu", "gelu_fast", "gelu_accurate", "tanh", "linear", "glu")


class BEATsCheckpointError(RuntimeError):
    """A BEATs checkpoint cannot be read or does not match the model it describes."""


# --------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------


@dataclass
class BEATsConfig:
    """Model hyper-parameters; field names and defaults are those of the official ``BEATsConfig``.

    The checkpoints store this as a flat ``cfg`` dict. Keys that the official model does not read are kept in
    :attr:`extra` (and written back by :meth:`to_dict`): they cannot change the maths, so they are tolerated.
    """

    input_patch_size: int = -1  # patch size of the patch embedding (must be set; -1 = unset)
    embed_dim: int = 512  # patch embedding width
    conv_bias: bool = False  # bias in the patch embedding convolution

    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"

    layer_wise_gradient_decay_ratio: float = 1.0  # gradient multiplier applied before every layer
    layer_norm_first: bool = False  # pre-norm layers (False: post-norm)
    deep_norm: bool = False  # DeepNorm residual scaling (post-norm only)

    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0

    conv_pos: int = 128  # kernel size of the convolutional positional embedding
    conv_pos_groups: int = 16

    relative_position_embedding: bool = False
    num_buckets: int = 320
    max_distance: int = 1280
    gru_rel_pos: bool = False  # gate the relative position bias with the query

    finetuned_model: bool = False  # has an AudioSet-style linear predictor
    predictor_dropout: float = 0.1
    predictor_class: int = 527

    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of the official configuration fields (everything but :attr:`extra`)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], source: str | None = None) -> BEATsConfig:
        """Build a config from a checkpoint's ``cfg`` dict; missing fields take the official defaults."""
        where = f" in {source}" if source else ""
        if not isinstance(cfg, Mapping):
            raise BEATsCheckpointError(f"BEATs cfg{where} must be a dict, got {type(cfg).__name__}")
        known = set(cls.field_names())
        values: dict[str, Any] = {}
        for name in known & cfg.keys():
            values[name] = _coerce_field(name, cfg[name], type(getattr(cls, name)), where)
        extra = {k: v for k, v in cfg.items() if k not in known}
        if extra:
            log.warning("BEATs cfg%s has keys the model does not use (kept, ignored): %s", where, sorted(extra))
        config = cls(**values, extra=extra)
        config.validate(source)
        return config

    @classmethod
    def iter3(cls, **overrides: Any) -> BEATsConfig:
        """The architecture of the released ``BEATs_iter3*`` checkpoints (12 x 768, patch 16, 90M params)."""
        base: dict[str, Any] = dict(
            input_patch_size=16,
            embed_dim=512,
            conv_bias=False,
            encoder_layers=12,
            encoder_embed_dim=768,
            encoder_ffn_embed_dim=3072,
            encoder_attention_heads=12,
            activation_fn="gelu",
            layer_wise_gradient_decay_ratio=0.6,
            layer_norm_first=False,
            deep_norm=True,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            encoder_layerdrop=0.05,
            dropout_input=0.0,
            conv_pos=128,
            conv_pos_groups=16,
            relative_position_embedding=True,
            num_buckets=320,
            max_distance=800,
            gru_rel_pos=True,
        )
        base.update(overrides)
        return cls.from_dict(base)

    def to_dict(self) -> dict[str, Any]:
        """The flat ``cfg`` dict of the official checkpoint format (plain Python values only)."""
        out = {name: getattr(self, name) for name in self.field_names()}
        out.update(self.extra)
        return out

    def validate(self, source: str | None = None) -> None:
        """Raise ``ValueError`` naming the field when a value cannot describe a working model."""
        where = f" (in {source})" if source else ""

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"BEATsConfig.{name}={getattr(self, name)!r}{where}: {why}")

        for name in ("input_patch_size", "embed_dim", "encoder_layers", "encoder_embed_dim",
                     "encoder_ffn_embed_dim", "encoder_attention_heads", "conv_pos", "conv_pos_groups",
                     "predictor_class"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be positive" + (" (the official default -1 means unset)"
                                                       if name == "input_patch_size" else ""))
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise bad("encoder_embed_dim", f"must be divisible by encoder_attention_heads="
                                           f"{self.encoder_attention_heads}")
        if self.encoder_embed_dim % self.conv_pos_groups:
            raise bad("conv_pos_groups", f"must divide encoder_embed_dim={self.encoder_embed_dim}")
        if self.activation_fn not in _ACTIVATIONS:
            raise bad("activation_fn", f"unsupported; choose one of {_ACTIVATIONS}")
        if self.deep_norm and self.layer_norm_first:
            raise bad("deep_norm", "cannot be combined with layer_norm_first=True (DeepNorm is post-norm)")
        if self.relative_position_embedding:
            if self.num_buckets < 4:
                raise bad("num_buckets", "must be at least 4")
            if self.max_distance <= self.num_buckets // 4:
                raise bad("max_distance", f"must exceed num_buckets // 4 = {self.num_buckets // 4}")
        for name in ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop",
                     "dropout_input", "predictor_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, "must be a probability in [0, 1]")


def _coerce_field(name: str, value: Any, kind: type, where: str) -> Any:
    """Check one cfg value against the type of its default (ints are accepted for floats, 0/1 for bools)."""
    if kind is bool and isinstance(value, bool | int) and value in (0, 1):
        return bool(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    raise BEATsCheckpointError(
        f"BEATs cfg field {name!r}{where} must be {kind.__name__}, got {value!r} ({type(value).__name__})"
    )


# --------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------


def relative_position_bucket(query_length: int, key_length: int, num_buckets: int, max_distance: int,
                             device: torch.device | None = None) -> Tensor:
    """Bidirectional T5 buckets ``[query_length, key_length]`` of the offsets ``key - query``.

    Half the buckets hold positive offsets. In each half, offsets below ``num_buckets // 4`` get their own
    bucket; larger ones share logarithmically wider buckets up to ``max_distance``, beyond which all offsets
    fall in the last bucket of the half.
    """
    offset = torch.arange(key_length, device=device)[None, :] - torch.arange(query_length, device=device)[:, None]
    half = num_buckets // 2
    max_exact = half // 2
    bucket = (offset > 0).long() * half
    distance = offset.abs()
    # Same float32 operation order as the official code, so bucket boundaries agree bit for bit.
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    far = (max_exact + (log_ratio * (half - max_exact)).long()).clamp(max=half - 1)
    return bucket + torch.where(distance < max_exact, distance, far)


class _WeightNormConv1d(nn.Module):
    """Grouped 'same' Conv1d whose weight is ``weight_v * weight_g / ||weight_v||``, the norm taken over all
    axes but the kernel axis: the parametrisation (and parameter names) of ``weight_norm(conv, dim=2)``."""

    def __init__(self, channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        self.groups = groups
        weight = torch.empty(channels, channels // groups, kernel_size)
        nn.init.normal_(weight, mean=0.0, std=math.sqrt(4.0 / (kernel_size * channels)))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.weight_g = nn.Parameter(torch.linalg.vector_norm(weight, dim=(0, 1), keepdim=True))
        self.weight_v = nn.Parameter(weight)

    @property
    def weight(self) -> Tensor:
        return self.weight_v * (self.weight_g / torch.linalg.vector_norm(self.weight_v, dim=(0, 1), keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight, self.bias, padding=self.padding, groups=self.groups)


class _TrimLast(nn.Module):
    """Drop the last time step (even kernels with ``padding = k // 2`` produce one step too many)."""

    def forward(self, x: Tensor) -> Tensor:
        return x[..., :-1]


class _GradMultiply(torch.autograd.Function):
    """Identity whose backward multiplies the gradient by ``scale`` (layer-wise gradient decay)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


class _GLULinear(nn.Module):
    """``Linear(d, 2 h)`` split in value and gate halves, ``value * swish(gate)`` (official ``GLU_Linear``)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 2 * out_features)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.linear(x).chunk(2, dim=-1)
        return value * F.silu(gate)


def _float_gelu(x: Tensor) -> Tensor:
    return F.gelu(x.float()).type_as(x)


def _activation(name: str) -> Callable[[Tensor], Tensor]:
    return {
        "relu": F.relu,
        "gelu": _float_gelu,  # computed in float32 like the official code
        "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
        "gelu_accurate": lambda x: F.gelu(x, approximate="tanh"),
        "tanh": torch.tanh,
        "linear": lambda x: x,
        "glu": lambda x: x,  # the gate lives in fc1
    }[name]


class BEATsSelfAttention(nn.Module):
    """Multi-head self-attention with an optional gated relative position bias.

    ``relative_attention_bias`` (an ``nn.Embedding(num_buckets, heads)``) is passed in so that all layers can
    share one table, as the official model does.
    """

    def __init__(self, dim: int, heads: int, dropout: float, gru_rel_pos: bool,
                 relative_attention_bias: nn.Embedding | None) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.dropout = dropout
        if relative_attention_bias is not None:
            self.relative_attention_bias = relative_attention_bias
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.gru_rel_pos = gru_rel_pos
        if gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))

    def forward(self, x: Tensor, position_bias: Tensor | None = None,
                key_padding_mask: Tensor | None = None) -> Tensor:
        """``x [B, N, D]``, ``position_bias [H, N, N]``, ``key_padding_mask [B, N]`` (True = padded)."""
        q, k, v = (rearrange(proj(x), "b n (h d) -> b h n d", h=self.heads)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        bias: Tensor | None = None
        if position_bias is not None:
            bias = position_bias.unsqueeze(0)
            if self.gru_rel_pos:
                # Two sigmoid gates per (head, query) from the unscaled query; the bias is scaled by
                # a * (b * grep_a - 1) + 2, i.e. somewhere between 1 and 1 + grep_a.
                gates = torch.sigmoid(reduce(self.grep_linear(q), "b h n (g r) -> b h n g", "sum", g=2))
                gate_a, gate_b = gates[..., :1], gates[..., 1:]
                bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * bias
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]
            if bias is None:
                bias = torch.zeros(pad.shape, dtype=q.dtype, device=q.device)
            bias = bias.masked_fill(pad, float("-inf"))
        attn = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=None if bias is None else bias.to(q.dtype),
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(rearrange(attn, "b h n d -> b n (h d)"))


class BEATsLayer(nn.Module):
    """Transformer layer: post-norm with optional DeepNorm residual scaling, or pre-norm."""

    def __init__(self, cfg: BEATsConfig, relative_attention_bias: nn.Embedding | None) -> None:
        super().__init__()
        dim, ffn = cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim
        self.layer_norm_first = cfg.layer_norm_first
        self.residual_scale = (2 * cfg.encoder_layers) ** 0.25 if cfg.deep_norm else 1.0
        self.self_attn = BEATsSelfAttention(dim, cfg.encoder_attention_heads, cfg.attention_dropout,
                                            cfg.gru_rel_pos, relative_attention_bias)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1: nn.Module = _GLULinear(dim, ffn) if cfg.activation_fn == "glu" else nn.Linear(dim, ffn)
        self.fc2 = nn.Linear(ffn, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.activation = _activation(cfg.activation_fn)
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)

    def _feed_forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.activation_dropout(self.activation(self.fc1(x)))))

    def forward(self, x: Tensor, position_bias: Tensor | None = None,
                padding_mask: Tensor | None = None) -> Tensor:
        if self.layer_norm_first:
            x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), position_bias, padding_mask))
            return x + self._feed_forward(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(
            x * self.residual_scale + self.dropout(self.self_attn(x, position_bias, padding_mask)))
        return self.final_layer_norm(x * self.residual_scale + self._feed_forward(x))


class BEATsEncoder(nn.Module):
    """Convolutional positional embedding followed by the Transformer layers."""

    def __init__(self, cfg: BEATsConfig) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        trim: nn.Module = _TrimLast() if cfg.conv_pos % 2 == 0 else nn.Identity()
        self.pos_conv = nn.Sequential(_WeightNormConv1d(dim, cfg.conv_pos, cfg.conv_pos_groups), trim, nn.GELU())
        shared_bias = (nn.Embedding(cfg.num_buckets, cfg.encoder_attention_heads)
                       if cfg.relative_position_embedding else None)
        self.layers = nn.ModuleList(BEATsLayer(cfg, shared_bias) for _ in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(dim)
        self.layer_norm_first = cfg.layer_norm_first
        self.dropout = nn.Dropout(cfg.dropout)
        self.layerdrop = cfg.encoder_layerdrop
        self.grad_decay = cfg.layer_wise_gradient_decay_ratio
        self.num_buckets, self.max_distance = cfg.num_buckets, cfg.max_distance
        self.gradient_checkpointing = False

    def position_bias(self, length: int) -> Tensor | None:
        """The shared relative position bias ``[heads, length, length]`` (None without relative positions)."""
        table = getattr(self.layers[0].self_attn, "relative_attention_bias", None)
        if table is None:
            return None
        buckets = relative_position_bucket(length, length, self.num_buckets, self.max_distance,
                                           device=table.weight.device)
        return rearrange(table(buckets), "q k h -> h q k")

    def forward(self, x: Tensor, padding_mask: Tensor | None = None,
                output_hidden_states: bool = False) -> tuple[Tensor, list[Tensor] | None]:
        """``x [B, N, D]`` -> ``(output [B, N, D], [input to layer 0, output of layer 1..L] or None)``."""
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + rearrange(self.pos_conv(rearrange(x, "b n d -> b d n")), "b d n -> b n d")
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        position_bias = self.position_bias(x.size(1))
        hidden: list[Tensor] | None = [x] if output_hidden_states else None
        for layer in self.layers:
            if self.grad_decay != 1.0 and torch.is_grad_enabled():
                x = _GradMultiply.apply(x, self.grad_decay)
            if not (self.training and self.layerdrop > 0 and torch.rand(()).item() < self.layerdrop):
                if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                    x = checkpoint(layer, x, position_bias, padding_mask, use_reentrant=False)
                else:
                    x = layer(x, position_bias, padding_mask)
            if hidden is not None:
                hidden.append(x)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x, hidden


# --------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------


@dataclass
class BEATsOutput:
    """Encoder output. ``features``/``hidden_states`` are ``[B, N, D]`` with ``N = time_patches * freq_patches``
    tokens in time-major order; ``padding_mask`` is ``[B, N]`` with True on padded tokens."""

    features: Tensor
    padding_mask: Tensor | None
    hidden_states: tuple[Tensor, ...] | None = None
    patch_grid: tuple[int, int] = (0, 0)  # (time_patches, freq_patches)


def _init_encoder(encoder: BEATsEncoder, cfg: BEATsConfig) -> None:
    """Official initialisation: N(0, 0.02) linears and embeddings, zero biases, DeepNorm-scaled Xavier."""
    for module in encoder.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    if cfg.deep_norm:
        beta = (8 * cfg.encoder_layers) ** -0.25
        for layer in encoder.layers:
            attn = layer.self_attn
            for linear, gain in ((attn.k_proj, 1.0), (attn.v_proj, beta), (attn.q_proj, 1.0),
                                 (attn.out_proj, beta), (layer.fc1, beta), (layer.fc2, beta)):
                weight = linear.linear.weight if isinstance(linear, _GLULinear) else linear.weight
                nn.init.xavier_normal_(weight, gain=gain)


class BEATs(nn.Module):
    """BEATs encoder: 16 kHz waveform -> fbank -> patch tokens -> Transformer features.

    Args:
        cfg: a :class:`BEATsConfig` or an official ``cfg`` dict.
        gradient_checkpointing: recompute each layer in the backward pass (saves memory when fine-tuning).

    Attributes:
        out_dim: feature width (``cfg.encoder_embed_dim``).
        label_dict: class index -> label of a fine-tuned checkpoint's predictor (None otherwise).
    """

    def __init__(self, cfg: BEATsConfig | Mapping[str, Any], gradient_checkpointing: bool = False) -> None:
        super().__init__()
        if not isinstance(cfg, BEATsConfig):
            cfg = BEATsConfig.from_dict(cfg)
        cfg.validate()
        self.cfg = cfg
        self.out_dim = cfg.encoder_embed_dim
        self.num_layers = cfg.encoder_layers
        self.patch_size = cfg.input_patch_size
        self.label_dict: dict[Any, Any] | None = None
        #: where the weights came from (named in results): the checkpoint path or URL, else random init
        self.weights_source = "random init"

        self.frontend = BEATsFbank()  # no parameters: leaves the state dict unchanged
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, kernel_size=cfg.input_patch_size,
                                         stride=cfg.input_patch_size, bias=cfg.conv_bias)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.post_extract_proj = (nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim)
                                  if cfg.embed_dim != cfg.encoder_embed_dim else None)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.encoder = BEATsEncoder(cfg)
        _init_encoder(self.encoder, cfg)
        if cfg.finetuned_model:
            self.predictor_dropout = nn.Dropout(cfg.predictor_dropout)
            self.predictor: nn.Linear | None = nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class)
        else:
            self.predictor = None
        self.set_gradient_checkpointing(gradient_checkpointing)

    def describe(self) -> str:
        """The model for results tables: ``BEATs 12 layers x 768`` (``fine-tuned`` with a predictor)."""
        tuned = ", fine-tuned" if self.predictor is not None else ""
        return f"{type(self).__name__} {self.num_layers} layers x {self.out_dim}{tuned}"

    #: Substrings of parameter names that train without weight decay besides biases and 1-D parameters: the
    #: shared relative position table, the gated relative position's constants and the positional convolution's
    #: weight-norm magnitude (read by :func:`audio_ssl.utils.optim.layer_decay_groups`).
    no_weight_decay_keys: tuple[str, ...] = ("relative_attention_bias", "grep_a", "weight_g")

    def layer_id(self, name: str) -> int:
        """Depth of parameter ``name`` (as in ``named_parameters()``) for layer-wise lr decay: 0 for the front,
        ``i + 1`` for Transformer layer ``i``, ``num_layers`` for what sits on top.

        Front (0): the patch embedding and its LayerNorm, ``post_extract_proj``, the convolutional positional
        embedding, the relative position table (shared by every layer, computed before the first one) and, in
        post-norm models, ``encoder.layer_norm`` (applied before the layers). In pre-norm models
        ``encoder.layer_norm`` is the final norm: ``num_layers``, as is a fine-tuned checkpoint's ``predictor``.
        Raises ValueError for a name this model does not have.
        """
        parts = name.split(".")
        if parts[0] in ("patch_embedding", "layer_norm", "post_extract_proj"):
            return 0
        if parts[0] == "predictor":
            return self.num_layers
        if parts[0] == "encoder" and len(parts) > 2:
            if parts[1] == "pos_conv":
                return 0
            if parts[1] == "layer_norm":
                return self.num_layers if self.cfg.layer_norm_first else 0
            if parts[1] == "layers" and parts[2].isdigit() and int(parts[2]) < self.num_layers:
                return 0 if parts[3:4] == ["self_attn"] and "relative_attention_bias" in parts else int(parts[2]) + 1
        raise ValueError(f"BEATs.layer_id: {name!r} is not a parameter of this BEATs model")

    @property
    def gradient_checkpointing(self) -> bool:
        return self.encoder.gradient_checkpointing

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Turn activation checkpointing of every Transformer layer on or off (used only in training)."""
        self.encoder.gradient_checkpointing = enabled

    def num_tokens(self, num_samples: int) -> int:
        """Number of output tokens for a clip of ``num_samples`` samples at 16 kHz."""
        frames = self.frontend.num_frames(num_samples)
        return (frames // self.patch_size) * (self.frontend.num_mel_bins // self.patch_size)

    def extract_features(self, fbank: Tensor, padding_mask: Tensor | None = None,
                         output_hidden_states: bool = False) -> BEATsOutput:
        """Encode normalised fbanks ``[B, frames, mels]`` (see :class:`BEATsFbank`).

        ``padding_mask`` is a frame mask ``[B, frames]`` (True = padded); it is reduced to tokens as the
        official code does. With ``output_hidden_states`` the output also holds ``L + 1`` tensors: the
        encoder input (after the positional convolution) and the output of every layer (with
        ``layer_norm_first`` the final LayerNorm is applied to ``features`` only).
        """
        if fbank.dim() != 3:
            raise ValueError(f"fbank must have shape [batch, frames, mel_bins], got {tuple(fbank.shape)}")
        if fbank.size(1) < self.patch_size or fbank.size(2) < self.patch_size:
            raise ValueError(f"fbank of shape {tuple(fbank.shape)} is smaller than one {self.patch_size}x"
                             f"{self.patch_size} patch; clips need at least {self.patch_size} frames")
        if padding_mask is not None and padding_mask.shape != fbank.shape[:2]:
            raise ValueError(f"padding_mask shape {tuple(padding_mask.shape)} does not match fbank "
                             f"[batch, frames] = {tuple(fbank.shape[:2])}")
        x = self.patch_embedding(fbank.unsqueeze(1))
        grid = (x.size(2), x.size(3))
        x = self.layer_norm(rearrange(x, "b e t f -> b (t f) e"))
        encoder_mask = None
        if padding_mask is not None:
            padding_mask = reduce_padding_mask(padding_mask.bool(), x.size(1))
            # An all-valid mask changes nothing; skipping it keeps the exact no-mask code path.
            encoder_mask = padding_mask if bool(padding_mask.any()) else None
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        x, hidden = self.encoder(self.dropout_input(x), encoder_mask, output_hidden_states)
        return BEATsOutput(features=x, padding_mask=padding_mask,
                           hidden_states=tuple(hidden) if hidden is not None else None, patch_grid=grid)

    def forward(self, waveforms: Tensor, padding_mask: Tensor | None = None,
                output_hidden_states: bool = False) -> BEATsOutput:
        """Encode 16 kHz waveforms ``[B, T]`` in [-1, 1]; ``padding_mask [B, T]`` marks padded samples."""
        fbank, frame_mask = self.frontend(waveforms, padding_mask)
        return self.extract_features(fbank, frame_mask, output_hidden_states)

    def clip_logits(self, features: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Predictor logits ``[B, classes]``: per-token logits averaged over the non-padded tokens."""
        if self.predictor is None:
            raise RuntimeError("this BEATs model has no predictor (cfg.finetuned_model is False)")
        logits = self.predictor(self.predictor_dropout(features))
        if padding_mask is None:
            return logits.mean(dim=1)
        valid = (~padding_mask).sum(dim=1, keepdim=True).to(logits.dtype)
        return logits.masked_fill(padding_mask.unsqueeze(-1), 0.0).sum(dim=1) / valid

    def predict(self, waveforms: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Class probabilities ``[B, classes]`` (sigmoid), what the official fine-tuned model returns."""
        out = self(waveforms, padding_mask)
        return torch.sigmoid(self.clip_logits(out.features, out.padding_mask))


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------


def _is_url(source: str | os.PathLike) -> bool:
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


def _resolve_source(source: str | os.PathLike, cache_dir: str | os.PathLike | None, sha256: str | None) -> Path:
    """Local path of ``source``, downloading a URL once into ``cache_dir``."""
    if _is_url(source):
        name = Path(urllib.parse.unquote(urllib.parse.urlparse(str(source)).path)).name
        if not name:
            raise ValueError(f"cannot derive a file name from the checkpoint URL {source}")
        cache = Path(cache_dir if cache_dir is not None else DEFAULT_CHECKPOINT_DIR).expanduser()
        return download_file(str(source), cache / name, sha256=sha256)
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"BEATs checkpoint not found at {path}. Download it (e.g. BEATs_iter3_plus_AS2M.pt) from "
            f"{BEATS_OFFICIAL_URL} and put it at {path}, or pass an http(s) URL to download it into the cache."
        )
    if sha256 is not None and (got := sha256sum(path)) != sha256.lower():
        raise BEATsCheckpointError(f"checksum mismatch for {path}: expected sha256 {sha256}, got {got}")
    return path


def _check_state_dict(model: BEATs, state: Mapping[str, Any], path: Path) -> None:
    """Raise naming every missing, unexpected, non-tensor or wrongly shaped key."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    problems = []
    if missing:
        problems.append(f"missing keys: {missing}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    for key in sorted(expected.keys() & state.keys()):
        value = state[key]
        if not isinstance(value, Tensor):
            problems.append(f"{key} is a {type(value).__name__}, not a tensor")
        elif value.shape != expected[key].shape:
            problems.append(f"{key} has shape {tuple(value.shape)}, the cfg implies {tuple(expected[key].shape)}")
    if problems:
        raise BEATsCheckpointError(f"BEATs checkpoint {path} does not match its cfg: " + "; ".join(problems))
    # All layers share layer 0's relative position table; a checkpoint with differing copies is not BEATs.
    shared = "encoder.layers.{}.self_attn.relative_attention_bias.weight"
    if shared.format(0) in state:
        for i in range(1, model.num_layers):
            if not torch.equal(state[shared.format(i)].cpu(), state[shared.format(0)].cpu()):
                raise BEATsCheckpointError(
                    f"BEATs checkpoint {path}: {shared.format(i)} differs from {shared.format(0)}, but the "
                    "relative position table is shared by all layers"
                )


def load_beats_checkpoint(
    source: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
    map_location: str | torch.device = "cpu",
    gradient_checkpointing: bool = False,
) -> BEATs:
    """Build a :class:`BEATs` from an official-format checkpoint (``{"cfg", "model"[, "label_dict"]}``).

    ``source`` is a local path or an http(s) URL; URLs are downloaded once into ``cache_dir`` (default
    ``~/.cache/audio-ssl/checkpoints``) and, with ``sha256``, verified (local files too). The file is read
    with ``torch.load(weights_only=True)``, so a pickle that would run code is refused. Weights must match
    the cfg exactly (strict). Returns the model in eval mode, with ``label_dict`` attached if present.

    Raises:
        BEATsCheckpointError: naming the file: not a PyTorch checkpoint at all (e.g. "it looks like an HTML page",
            what an expired download link returns, or text with a byte-order mark), a pickle that would run code,
            a damaged file, or weights that do not match the cfg.
        FileNotFoundError: a local path that does not exist.
    """
    path = _resolve_source(source, cache_dir, sha256)
    try:
        ckpt = load_weights_file(path, map_location=map_location, what="BEATs checkpoint")
    except CheckpointFileError as err:
        raise BEATsCheckpointError(str(err)) from err
    if not isinstance(ckpt, Mapping) or "cfg" not in ckpt or "model" not in ckpt:
        found = sorted(map(str, ckpt.keys())) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise BEATsCheckpointError(
            f"{path} is not an official-format BEATs checkpoint: expected a dict with 'cfg' and 'model', "
            f"found {found}"
        )
    if not isinstance(ckpt["model"], Mapping):
        raise BEATsCheckpointError(f"{path}: 'model' must be a state dict, got {type(ckpt['model']).__name__}")
    cfg = BEATsConfig.from_dict(ckpt["cfg"], source=str(path))
    model = BEATs(cfg, gradient_checkpointing=gradient_checkpointing)
    _check_state_dict(model, ckpt["model"], path)
    model.load_state_dict(ckpt["model"], strict=True)
    model.label_dict = ckpt.get("label_dict")
    model.weights_source = str(source) if _is_url(source) else str(path.resolve())
    return model.to(map_location).eval()


def save_beats_checkpoint(model: BEATs, path: str | os.PathLike) -> Path:
    """Write ``model`` in the official format (``cfg`` + ``model`` [+ ``label_dict``]) atomically."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt: dict[str, Any] = {
        "cfg": model.cfg.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if model.label_dict is not None:
        ckpt["label_dict"] = model.label_dict
    with atomic_write(path) as fh:
        torch.save(ckpt, fh)
    return path
