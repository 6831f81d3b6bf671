"""TimmCNN: timm's ImageNet CNNs on one-channel log-mels.

Nothing is downloaded: each test builds a randomly initialised RGB timm model (the stand-in for ImageNet weights),
saves it to ``tmp_path`` as a local file or into a Hugging Face cache laid out as the hub writes it, and loads it
back through ``TimmCNN(pretrained=...)``, the path a user's hub id or file takes, with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from cli_utils import common_args
from safetensors.torch import save_file
from timm.optim import param_groups_layer_decay

from audio_ssl.cli import build_cli
from audio_ssl.methods.base import BaseMethod
from audio_ssl.models.timm_cnn import TimmCNN

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "experiments" / "zoo"
ARCHS = {"efficientnet_b0": ("conv_stem", 1280, "ra_in1k"), "resnet18": ("conv1", 512, "tv_in1k")}
RANDOM_INIT = ["--model.init_args.encoder", json.dumps({"init_args": {"pretrained": None}})]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test here may reach the network: the hub client is offline (its constant is read at import time)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def rgb_weights(name: str, num_classes: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    """State dict of a randomly initialised 3-channel timm model with an ImageNet-sized classifier."""
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=num_classes)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that copying them is checked too
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def save_weights(state: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    return path


def hub_cache(root: Path, hub_id: str, state: dict, filename: str = "model.safetensors") -> Path:
    """A Hugging Face cache holding ``hub_id`` as ``hf_hub_download`` leaves it (refs/main -> snapshot)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    save_weights(state, snapshot / filename)
    return root


def assert_loaded(encoder: TimmCNN, state: dict, stem: str) -> None:
    """Every backbone weight equals the file's; the stem is the RGB kernel summed over the colour channels."""
    loaded = encoder.backbone.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith(("classifier.", "fc."))}
    for key, value in loaded.items():
        expected = state[key].sum(dim=1, keepdim=True) if key == f"{stem}.weight" else state[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("name", sorted(ARCHS))
@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_local_file_loads_through_timm(name, suffix, tmp_path):
    stem, _, _ = ARCHS[name]
    state = rgb_weights(name)
    encoder = TimmCNN(name, pretrained=str(save_weights(state, tmp_path / f"weights{suffix}")))
    assert_loaded(encoder, state, stem)
    assert encoder.pretrained_source == str((tmp_path / f"weights{suffix}").resolve())

    # the one-channel model equals the RGB model fed the log-mel in all three channels
    reference = timm.create_model(name, num_classes=1000)
    reference.load_state_dict(state)
    reference.reset_classifier(0)
    spec = torch.randn(2, 1, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(spec), reference.eval()(spec.expand(-1, 3, -1, -1)),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
def test_hub_id_loads_from_the_cache(filename, tmp_path):
    state = rgb_weights("efficientnet_b0")
    cache = hub_cache(tmp_path / "hub", "timm/efficientnet_b0.ra_in1k", state, filename)
    encoder = TimmCNN("efficientnet_b0", pretrained="timm/efficientnet_b0.ra_in1k", cache_dir=str(cache))
    assert_loaded(encoder, state, "conv_stem")
    assert encoder.pretrained_source == "timm/efficientnet_b0.ra_in1k"
    # the same weights as a local file give the same encoder
    from_file = TimmCNN("efficientnet_b0", pretrained=str(save_weights(state, tmp_path / "w.safetensors")))
    for (k, a), (_, b) in zip(encoder.state_dict().items(), from_file.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_names_its_architecture_and_the_source_of_its_weights(tmp_path):
    from audio_ssl.evaluation.lightning_stage import describe_encoder
    from audio_ssl.evaluation.pipelines import weights_source

    path = save_weights(rgb_weights("resnet18"), tmp_path / "r18.safetensors")
    encoder = TimmCNN("resnet18", pretrained=str(path))
    assert encoder.describe() == "TimmCNN resnet18" and encoder.weights_source == str(path.resolve())
    assert re.fullmatch(r"TimmCNN resnet18, 11\.\d\dM params", describe_encoder(encoder))
    config = {"init_args": {"encoder": {"init_args": {"name": "resnet18", "pretrained": str(path)}}}}
    assert weights_source(config, encoder) == (f"weights from outside: TimmCNN weights {path.resolve()}; "
                                               f"model.init_args.encoder.init_args.pretrained={path}")
    assert TimmCNN("resnet18").weights_source == "random init"
    from audio_ssl.evaluation.lightning_stage import starting_weights
    from audio_ssl.methods.supervised import SupervisedClassifier

    tuned = SupervisedClassifier(encoder=encoder, num_classes=5)
    assert starting_weights(tuned) == (f"weights from outside: TimmCNN weights {path.resolve()}",
                                       "fine-tune from a pretrained encoder")
    assert starting_weights(SupervisedClassifier(encoder=TimmCNN("resnet18"), num_classes=5)) == (
        "none", "supervised from scratch")


def test_hub_id_offline_says_what_to_fetch(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        TimmCNN("efficientnet_b0", pretrained="timm/efficientnet_b0.ra_in1k", cache_dir=str(tmp_path / "empty"))
    message = str(error.value)
    assert "\n" not in message
    assert "hf download timm/efficientnet_b0.ra_in1k model.safetensors --local-dir DIR" in message
    assert str(tmp_path / "empty") in message and "HF_HUB_OFFLINE" in message
    assert "--model.init_args.encoder.init_args.pretrained DIR/model.safetensors" in message
    assert ("--pipeline-set 'model_overrides=[\"--model.init_args.encoder.init_args.pretrained\", "
            "\"DIR/model.safetensors\"]'") in message


def test_cli_error_is_the_encoders_message_without_union_bookkeeping():
    from audio_ssl.cli import short_error

    # what jsonargparse raises when TimmCNN's constructor fails while the CLI instantiates the model (abridged)
    raw = ("Does not validate against any of the Union subtypes\nSubtypes: [<class 'BaseMethod'>, <class 'NoneType'>]"
           "\nErrors:\n  - Does not validate against any of the Union subtypes\n    Subtypes: [<class 'Module'>, "
           "<class 'NoneType'>]\n    Errors:\n      - TimmCNN: the weights of hub id 'x/y' are not in the cache\n"
           "      - Expected a <class 'NoneType'>\n    Given value type: <class 'Namespace'>\n    Given value: "
           "Namespace(class_path='audio_ssl.models.TimmCNN')\n  - Expected a <class 'NoneType'>\nGiven value type: "
           "<class 'Namespace'>\nGiven value: Namespace(class_path='SupervisedClassifier')")
    assert short_error(raw) == "TimmCNN: the weights of hub id 'x/y' are not in the cache"


def test_mismatched_file_fails_strictly_naming_file_and_keys(tmp_path):
    state = rgb_weights("resnet18")
    missing = save_weights({k: v for k, v in state.items() if k != "layer2.0.bn1.running_var"},
                           tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=r"missing\.safetensors .*: 1 missing \(layer2\.0\.bn1\.running_var\)\. "
                                         r"The file is not a plain resnet18 checkpoint"):
        TimmCNN("resnet18", pretrained=str(missing))
    extra = save_weights({**state, "layer9.weight": torch.zeros(3)}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"extra\.pth.*1 unexpected \(layer9\.weight\)"):
        TimmCNN("resnet18", pretrained=str(extra))
    shape = dict(state, **{"layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)})
    with pytest.raises(ValueError, match=r"shape\.safetensors.*1 differently shaped \(layer1\.0\.conv1\.weight "
                                         r"\(file \[64, 64, 1, 1\], model \[64, 64, 3, 3\]\)\)"):
        TimmCNN("resnet18", pretrained=str(save_weights(shape, tmp_path / "shape.safetensors")))
    other_arch = save_weights(rgb_weights("resnet50"), tmp_path / "r50.safetensors")
    with pytest.raises(ValueError) as error:
        TimmCNN("resnet18", pretrained=str(other_arch))
    message = str(error.value)
    assert "\n" not in message and len(message) < 800, message
    assert re.search(r"r50\.safetensors do not match timm 'resnet18'.*: \d+ unexpected \(.*, \.\.\. \d+ more\); "
                     r"\d+ differently shaped", message), message
    assert message.endswith("This file looks like a resnet50 checkpoint: set name=resnet50 "
                            "(--model.init_args.encoder.init_args.name resnet50) or pass weights of resnet18")


def test_classifier_of_another_size_needs_pretrained_classes(tmp_path):
    state = rgb_weights("resnet18", num_classes=527)
    path = save_weights(state, tmp_path / "audioset.safetensors")
    with pytest.raises(ValueError, match=r"2 differently shaped \(fc\.weight \(file \[527, 512\], model \[1000, 512\]\)"
                                         r".*Only the classifier's size differs: pass pretrained_classes=N"):
        TimmCNN("resnet18", pretrained=str(path))
    assert_loaded(TimmCNN("resnet18", pretrained=str(path), pretrained_classes=527), state, "conv1")


def test_bad_pretrained_values(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.safetensors does not exist"):
        TimmCNN("resnet18", pretrained=str(tmp_path / "absent.safetensors"))
    (tmp_path / "weights.txt").write_text("not weights")
    with pytest.raises(ValueError, match=r"weights\.txt is not a weight file"):
        TimmCNN("resnet18", pretrained=str(tmp_path / "weights.txt"))
    with pytest.raises(ValueError, match=r"'not a hub id' is neither an existing weight file .* nor a Hugging Face"):
        TimmCNN("resnet18", pretrained="not a hub id")
    with pytest.raises(ValueError, match="is a string, not None"):
        TimmCNN("resnet18", pretrained="None")
    with pytest.raises(ValueError, match="architecture 'efficientnet_b0', not of name='resnet18'"):
        TimmCNN("resnet18", pretrained="timm/efficientnet_b0.ra_in1k")  # refused before any download
    with pytest.raises(ValueError, match="unknown timm architecture 'resnet_18'"):
        TimmCNN("resnet_18")


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_shapes(name):
    _, out_dim, _ = ARCHS[name]
    encoder = TimmCNN(name).eval()
    assert encoder.out_dim == out_dim and encoder.pretrained_source == "random init"
    spec = torch.randn(3, 1, 64, 101)
    with torch.no_grad():
        pooled = encoder(spec)
        assert pooled.shape == (3, out_dim)
        torch.testing.assert_close(encoder(spec.squeeze(1)), pooled)  # [B, F, T] is the same input
    with pytest.raises(ValueError, match=r"\[B, 1, F, T\] or \[B, F, T\], got \(3, 2, 64, 101\)"):
        encoder(torch.randn(3, 2, 64, 101))


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "regnetx_002", "convnext_atto"])
def test_other_timm_cnns(name):
    """Any timm CNN: out_dim is the pooled output's size also where pre-logits layers follow the pooling
    (MobileNetV3)."""
    encoder = TimmCNN(name).eval()
    with torch.no_grad():
        assert encoder(torch.randn(2, 1, 64, 64)).shape == (2, encoder.out_dim)
    ids = [encoder.layer_id(k) for k, _ in encoder.named_parameters()]
    assert ids == sorted(ids) and ids[0] == 0 and ids[-1] == encoder.num_layers > 1


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_layer_ids_follow_timm_group_matcher(name):
    encoder = TimmCNN(name)
    names = [k for k, _ in encoder.named_parameters()]
    ids = [encoder.layer_id(k) for k in names]
    blocks = encoder.backbone.blocks if name == "efficientnet_b0" else [
        getattr(encoder.backbone, f"layer{i}") for i in range(1, 5)]
    assert encoder.num_layers == sum(len(stage) for stage in blocks)  # 16 MBConv blocks / 8 basic blocks
    assert ids == sorted(ids) and set(ids) == set(range(encoder.num_layers + 1))  # monotone, every depth
    assert ids[0] == 0 and names[0] == f"backbone.{ARCHS[name][0]}.weight"  # the stem
    assert ids[-1] == encoder.num_layers
    # equal to timm's own layer-wise decay: scale = decay ** (num_layers - layer_id)
    decay = 0.5
    scale_of = {id(p): group["lr_scale"]
                for group in param_groups_layer_decay(encoder.backbone, layer_decay=decay, weight_decay=0.0)
                for p in group["params"]}
    for key, param in encoder.named_parameters():
        assert scale_of[id(param)] == pytest.approx(decay ** (encoder.num_layers - encoder.layer_id(key))), key
    with pytest.raises(KeyError, match="'conv1.weight' is not a parameter"):
        encoder.layer_id("conv1.weight")


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_overfits_one_batch(name):
    torch.manual_seed(0)
    encoder = TimmCNN(name)
    head = torch.nn.Linear(encoder.out_dim, 4)
    spec, labels = torch.randn(8, 1, 32, 32), torch.arange(8) % 4
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-3)
    for _ in range(25):
        loss = F.cross_entropy(head(encoder(spec)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    assert (head(encoder(spec)).argmax(1) == labels).all()


FINETUNE = sorted(ZOO.glob("*_finetune.yaml"))
TIMM_RECIPES = [p for p in FINETUNE if "TimmCNN" in p.read_text()]


def recipe_weights(config: Path, tmp_path: Path) -> tuple[str, dict, Path]:
    name = yaml.safe_load(config.read_text())["model"]["init_args"]["encoder"]["init_args"]["name"]
    state = rgb_weights(name)
    return name, state, save_weights(state, tmp_path / f"{name}.safetensors")


@pytest.mark.parametrize("config", TIMM_RECIPES, ids=lambda p: p.name)
def test_recipe_fits_from_local_weights_and_reloads_offline(config, esc50_root, cache_dir, tmp_path, monkeypatch):
    """One training step of the recipe from a local weight file; its last.ckpt then rebuilds without the file."""
    monkeypatch.chdir(tmp_path)
    name, state, path = recipe_weights(config, tmp_path)
    args = ["--config", str(config), *common_args(esc50_root, cache_dir, tmp_path),
            "--model.init_args.encoder.init_args.pretrained", str(path), "--trainer.precision", "32-true",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
    cli = build_cli(args, run=False)
    stem = f"{ARCHS[name][0]}.weight"
    assert_loaded(cli.model.encoder, state, ARCHS[name][0])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.state.finished and cli.trainer.global_step == 1 and cli.model.num_classes == 5
    assert not torch.equal(cli.model.encoder.backbone.state_dict()[stem], state[stem].sum(1, keepdim=True))

    path.unlink()  # the weights the recipe named are gone: the checkpoint holds every weight
    rebuilt = BaseMethod.from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert rebuilt.encoder.pretrained_source == f"{path} (not read)"
    audio = torch.randn(2, 16000)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval().predict_proba(audio), cli.model.eval().predict_proba(audio))
    with pytest.raises(FileNotFoundError, match="does not exist"):  # outside a rebuild the file is still read
        TimmCNN(name, pretrained=str(path))


@pytest.mark.parametrize("config", [p for p in sorted(ZOO.glob("*_probe.yaml")) if "TimmCNN" in (ZOO / yaml.safe_load(p.read_text())["model"]).read_text()],
                         ids=lambda p: p.name)
def test_probe_recipe_builds_pretrained_and_random_init(config, esc50_root, cache_dir, tmp_path, monkeypatch):
    """The frozen_probe fields: ``model`` (next to the file) holds the weights at construction; the
    ``random_init_overrides`` give the same architecture untrained; embed() gives [B, out_dim]."""
    monkeypatch.chdir(tmp_path)
    spec = yaml.safe_load(config.read_text())
    assert spec["pipeline"] == "frozen_probe" and spec["max_clips"] is None
    assert (config.parent / spec["probe"]).is_file()
    model_config = config.parent / spec["model"]
    name, state, path = recipe_weights(model_config, tmp_path)
    base = ["--config", str(model_config), *common_args(esc50_root, cache_dir, tmp_path),
            *spec["model_overrides"]]
    pretrained = build_cli([*base, "--model.init_args.encoder.init_args.pretrained", str(path)], run=False).model
    control = build_cli([*base, *spec["random_init_overrides"]], run=False).model
    assert spec["random_init_overrides"] == RANDOM_INIT
    assert_loaded(pretrained.encoder, state, ARCHS[name][0])
    assert control.encoder.pretrained_source == "random init"
    assert pretrained.encoder.state_dict().keys() == control.encoder.state_dict().keys()
    stem = f"{ARCHS[name][0]}.weight"
    assert not torch.equal(control.encoder.backbone.state_dict()[stem], pretrained.encoder.backbone.state_dict()[stem])
    audio = torch.randn(2, 16000)
    with torch.no_grad():
        shape = (2, pretrained.embedding_dim)
        assert pretrained.eval().embed(audio).shape == control.eval().embed(audio).shape == shape
