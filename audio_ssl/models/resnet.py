"""ResNet encoder for log-mel spectrograms ``[B, 1, F, T]`` (basic blocks, torchvision-style layout)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

__all__ = ["AudioResNet", "BasicBlock", "RESNET_PRESETS"]

RESNET_PRESETS: dict[str, tuple[int, ...]] = {
    "resnet10": (1, 1, 1, 1),
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
}


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (projection shortcut on stride/width change)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class AudioResNet(nn.Module):
    """ResNet with basic blocks over spectrograms.

    Layout: stem conv ``stem_kernel x stem_kernel`` / ``stem_stride`` + BN + ReLU (+ 3x3 max-pool
    stride 2), then one stage per entry of ``layers``/``widths`` (first stage stride 1, the others
    stride 2), then global average pooling.

    A ``[B, in_channels, F, T]`` input gives a ``[B, C, ceil(F / d), ceil(T / d)]`` feature map with
    ``d = downsample_factor`` (every strided layer maps a size ``n`` to ``ceil(n / 2)``): one cell per
    patch of a size-``d`` patch grid. Every layer has an odd kernel ``k`` with padding ``k // 2``, so cell
    ``j`` is centred on input index ``d * j``: the first bin/frame of patch ``j``, half a patch before its
    centre ``d * j + (d - 1) / 2`` (``MaskedTokenPrediction.cell_shift`` moves the input to centre it).

    Args:
        layers: Number of blocks per stage. ``None``: taken from ``arch``. Given explicitly, it
            overrides ``arch``.
        arch: Preset name for ``layers``: ``"resnet10"`` (1,1,1,1), ``"resnet18"`` (2,2,2,2) or
            ``"resnet34"`` (3,4,6,3).
        widths: Channels per stage (same length as ``layers``).
        in_channels: Input channels (1 for a log-mel spectrogram).
        stem_kernel: Odd kernel size of the stem convolution.
        stem_stride: Stride of the stem convolution.
        stem_pool: Whether to apply the 3x3 stride-2 max-pool after the stem.
        zero_init_residual: Zero-init the last BN gamma of each block so every block starts as identity.

    Attributes: ``out_dim``, ``downsample_factor``; ``num_layers`` (the number of stages) and
    :meth:`layer_id` for layer-wise lr decay (:func:`audio_ssl.utils.optim.layer_decay_groups`);
    :meth:`architecture` (what a checkpoint records to refuse a different network on load).
    """

    convolutional: ClassVar[bool] = True
    """A 2-D CNN: its activations are 4-D feature maps (methods' ``channels_last`` option applies)."""

    def __init__(
        self,
        layers: Sequence[int] | None = None,
        arch: str | None = "resnet34",
        widths: Sequence[int] = (64, 128, 256, 512),
        in_channels: int = 1,
        stem_kernel: int = 7,
        stem_stride: int = 2,
        stem_pool: bool = True,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if layers is None:
            if arch is None:
                raise ValueError("AudioResNet: give either layers or arch")
            if arch not in RESNET_PRESETS:
                raise ValueError(f"AudioResNet: unknown arch {arch!r}; choose from {sorted(RESNET_PRESETS)}")
            layers = RESNET_PRESETS[arch]
        layers, widths = tuple(int(n) for n in layers), tuple(int(w) for w in widths)
        if len(layers) == 0 or len(layers) != len(widths):
            raise ValueError(
                f"AudioResNet: layers and widths must be non-empty and of equal length, got layers={layers}, "
                f"widths={widths}"
            )
        if any(n < 1 for n in layers) or any(w < 1 for w in widths):
            raise ValueError(f"AudioResNet: layers and widths must be positive, got {layers}, {widths}")
        if stem_kernel < 1 or stem_kernel % 2 == 0:
            raise ValueError(f"AudioResNet: stem_kernel must be a positive odd number, got {stem_kernel}")
        if stem_stride < 1:
            raise ValueError(f"AudioResNet: stem_stride must be >= 1, got {stem_stride}")

        self.layers = layers
        self.widths = widths
        self.in_channels = in_channels
        self.stem_kernel, self.stem_stride, self.stem_pool = int(stem_kernel), int(stem_stride), bool(stem_pool)
        self.num_layers = len(layers)
        self.out_dim = widths[-1]
        self.downsample_factor = stem_stride * (2 if stem_pool else 1) * 2 ** (len(layers) - 1)

        stem: list[nn.Module] = [
            nn.Conv2d(
                in_channels, widths[0], stem_kernel, stride=stem_stride, padding=stem_kernel // 2, bias=False
            ),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        if stem_pool:
            stem.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)

        stages: list[nn.Module] = []
        channels = widths[0]
        for i, (num_blocks, width) in enumerate(zip(layers, widths)):
            blocks = [BasicBlock(channels, width, stride=1 if i == 0 else 2)]
            blocks += [BasicBlock(width, width) for _ in range(num_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reset_parameters(zero_init_residual)

    def reset_parameters(self, zero_init_residual: bool = False) -> None:
        """Kaiming-normal convs (fan_out, ReLU), unit BN, optionally zero last BN gamma per block."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def architecture(self) -> dict:
        """The structural hyper-parameters: two encoders with equal values compute the same function of the same
        weights (``zero_init_residual`` only initialises, so it is not one of them)."""
        return {"layers": list(self.layers), "widths": list(self.widths), "in_channels": self.in_channels,
                "stem_kernel": self.stem_kernel, "stem_stride": self.stem_stride, "stem_pool": self.stem_pool}

    def layer_id(self, name: str) -> int:
        """Depth of parameter ``name`` for layer-wise lr decay: 0 for the stem, ``i + 1`` for stage ``i``
        (``num_layers`` = the number of stages). ValueError for a name outside the stem and the stages."""
        head, _, rest = name.partition(".")
        if head == "stem":
            return 0
        if head == "stages" and rest.split(".", 1)[0].isdigit():
            return int(rest.split(".", 1)[0]) + 1
        raise ValueError(f"AudioResNet.layer_id: {name!r} is not a parameter of the stem or of a stage")

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, in_channels, F, T]`` -> feature map ``[B, out_dim, ceil(F/d), ceil(T/d)]``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"AudioResNet expects input of shape [B, {self.in_channels}, F, T], got {tuple(x.shape)}"
            )
        return self.stages(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_channels, F, T]`` -> globally average-pooled embedding ``[B, out_dim]``."""
        return torch.flatten(self.pool(self.forward_features(x)), 1)
