"""AudioResNet shapes, parameter count, stride bookkeeping, heads, and an overfitting sanity check."""

import math

import pytest
import torch
import torch.nn.functional as F

from audio_ssl.models.heads import ClassificationHead, ProjectionHead
from audio_ssl.models.resnet import AudioResNet, BasicBlock


def _expected_params(layers, widths, in_channels=1, stem_kernel=7) -> int:
    """Parameter count of the layout computed from first principles (convs without bias, BN = 2C)."""
    total = in_channels * widths[0] * stem_kernel**2 + 2 * widths[0]
    cin = widths[0]
    for i, (n, w) in enumerate(zip(layers, widths)):
        for j in range(n):
            c_in = cin if j == 0 else w
            total += 9 * c_in * w + 2 * w + 9 * w * w + 2 * w
            if j == 0 and (i > 0 or c_in != w):
                total += c_in * w + 2 * w
        cin = w
    return total


@pytest.mark.parametrize(
    "kwargs,out_dim,size",
    [
        ({"arch": "resnet18"}, 512, (64, 101)),
        ({"arch": "resnet34"}, 512, (33, 47)),
        ({"layers": (1, 1, 1), "widths": (8, 16, 24)}, 24, (64, 101)),
        ({"layers": (1, 1, 1), "widths": (8, 16, 24)}, 24, (128, 32)),
        ({"layers": (1, 1, 1), "widths": (8, 16, 24)}, 24, (33, 47)),
        ({"layers": (2, 1), "widths": (8, 12), "stem_pool": False}, 12, (20, 9)),
    ],
)
def test_output_shapes(kwargs, out_dim, size):
    model = AudioResNet(**kwargs).eval()
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        emb = model(x)
        feats = model.forward_features(x)
    assert model.out_dim == out_dim
    assert emb.shape == (2, out_dim)
    d = model.downsample_factor
    assert feats.shape == (2, out_dim, math.ceil(size[0] / d), math.ceil(size[1] / d))
    torch.testing.assert_close(emb, feats.mean(dim=(2, 3)))


def test_presets_and_explicit_layers():
    assert AudioResNet(arch="resnet18").layers == (2, 2, 2, 2)
    assert AudioResNet().layers == (3, 4, 6, 3)
    # Explicit layers override the default arch.
    assert AudioResNet(layers=(1, 2), widths=(8, 16)).layers == (1, 2)
    assert AudioResNet(layers=(1, 2), arch=None, widths=(8, 16)).layers == (1, 2)
    num_blocks = sum(isinstance(m, BasicBlock) for m in AudioResNet(arch="resnet18").modules())
    assert num_blocks == 8


def test_resnet34_parameter_count():
    model = AudioResNet(arch="resnet34", widths=(64, 128, 256, 512), in_channels=1)
    count = sum(p.numel() for p in model.parameters())
    assert count == _expected_params((3, 4, 6, 3), (64, 128, 256, 512))
    # torchvision resnet34 has 21,797,672 parameters; minus its fc (512*1000 + 1000) and 2 of 3 stem
    # input channels (2 * 64 * 7 * 7) leaves 21,278,400.
    assert count == 21_797_672 - 513_000 - 2 * 64 * 49
    assert 21.2e6 < count < 21.4e6
    small = AudioResNet(layers=(2, 1), widths=(16, 32), in_channels=2, stem_kernel=3)
    assert sum(p.numel() for p in small.parameters()) == _expected_params((2, 1), (16, 32), 2, 3)


@pytest.mark.parametrize(
    "kwargs,factor",
    [
        ({"widths": (4, 4, 8, 8)}, 32),
        ({"layers": (1, 1, 1, 1), "widths": (4, 4, 8, 8), "stem_pool": False}, 16),
        ({"stem_stride": 1, "stem_pool": False, "layers": (1, 1, 1), "widths": (4, 8, 8)}, 4),
        ({"stem_stride": 4, "layers": (1, 1), "widths": (4, 8)}, 16),
    ],
)
def test_feature_stride_equals_downsample_factor(kwargs, factor):
    model = AudioResNet(**kwargs).eval()
    assert model.downsample_factor == factor
    f, t = 4 * factor, 6 * factor
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 1, f, t))
    assert feats.shape[-2:] == (f // factor, t // factor)


def test_init_and_zero_init_residual():
    model = AudioResNet(arch="resnet18", zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert all(torch.all(b.bn2.weight == 0) for b in blocks)
    assert all(torch.all(b.bn1.weight == 1) for b in blocks)
    # Kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (out_channels * k * k)).
    conv = model.stages[3][1].conv1
    expected_std = math.sqrt(2.0 / (512 * 9))
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.05
    assert not any(
        torch.all(b.bn2.weight == 0)
        for b in AudioResNet(arch="resnet18").modules()
        if isinstance(b, BasicBlock)
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown arch"):
        AudioResNet(arch="resnet50")
    with pytest.raises(ValueError, match="equal length"):
        AudioResNet(layers=(1, 1), widths=(8, 16, 32))
    with pytest.raises(ValueError, match="stem_kernel"):
        AudioResNet(stem_kernel=4)
    with pytest.raises(ValueError, match=r"\[B, 1, F, T\]"):
        AudioResNet(layers=(1,), widths=(4,))(torch.randn(2, 64, 100))


def test_heads():
    head = ClassificationHead(32, 5)
    assert head(torch.randn(3, 32)).shape == (3, 5)
    mlp = ClassificationHead(32, 5, dropout=0.5, hidden_dim=16)
    assert [type(m).__name__ for m in mlp.net] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert mlp(torch.randn(3, 32)).shape == (3, 5)

    proj = ProjectionHead(in_dim=32, hidden_dim=64, out_dim=16, num_layers=3)
    assert [type(m).__name__ for m in proj.net] == [
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
    ]
    assert proj.net[0].bias is None and proj.net[-1].bias is not None
    assert proj(torch.randn(4, 32)).shape == (4, 16)
    plain = ProjectionHead(in_dim=32, hidden_dim=64, out_dim=16, num_layers=2, batch_norm=False)
    assert [type(m).__name__ for m in plain.net] == ["Linear", "ReLU", "Linear"]
    single = ProjectionHead(in_dim=32, out_dim=8, num_layers=1)
    assert len(single.net) == 1 and single(torch.randn(2, 32)).shape == (2, 8)
    with pytest.raises(ValueError, match="num_layers"):
        ProjectionHead(num_layers=0)


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    encoder = AudioResNet(layers=(1, 1), widths=(8, 16), stem_kernel=3, stem_stride=2, stem_pool=False)
    head = ClassificationHead(encoder.out_dim, 4)
    model = torch.nn.Sequential(encoder, head)
    x = torch.randn(8, 1, 32, 32)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(100):
        loss = F.cross_entropy(model(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.02:
            break
    assert first > 1.0
    assert loss.item() < 0.02
