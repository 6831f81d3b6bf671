"""ImageNet-transfer CNNs from timm (EfficientNet-B0, ResNet-18, any timm CNN) over one-channel log-mels.

:class:`TimmCNN` wraps ``timm.create_model(name, in_chans=1)`` as an encoder that drops into
:class:`audio_ssl.methods.SupervisedClassifier` in place of :class:`audio_ssl.models.AudioResNet`: log-mel
``[B, 1, F, T]`` (or ``[B, F, T]``) in, the globally pooled embedding ``[B, out_dim]`` out.

Pretrained weights are loaded by timm's own pretrained loader (``timm.models.load_pretrained``, reached through
``timm.create_model(pretrained=True, pretrained_cfg_overlay=...)``) for both sources, a Hugging Face hub id
(``timm/efficientnet_b0.ra_in1k``) or a local file (``.safetensors``; ``.pth``/``.pt``/``.bin`` read with
``torch.load(weights_only=True)``); only where the state dict comes from differs. That loader adapts the RGB stem
to one channel by summing the kernel over the colour channels (``timm.models.adapt_input_conv``), so the
one-channel network on ``x`` is exactly the RGB network fed ``x`` in all three channels:
``conv(x, W_r) + conv(x, W_g) + conv(x, W_b) = conv(x, W_r + W_g + W_b)``. The load is strict: the model is
built with the checkpoint's classifier (``pretrained_classes``, by default the pretrained config's, 1000 for
ImageNet-1k) so timm keeps ``strict=True``, and the classifier is removed afterwards (``reset_classifier(0)``).

Input scale: ImageNet weights expect each colour channel standardised with the dataset mean and std (timm's
``pretrained_cfg['mean'/'std']``), i.e. roughly zero mean and unit variance; with the summed kernel, a one-channel
input ``x`` acts as a grey image whose three standardised channels all equal ``x``. The log-mel front end's
``normalize: instance`` (zero mean, unit variance per clip) gives that scale, so the recipes use it and add no
ImageNet mean/std (see ``experiments/zoo/efficientnet_b0_finetune.yaml`` for the measurement on ESC-50).

Layer-wise learning-rate decay: :attr:`TimmCNN.num_layers` and :meth:`TimmCNN.layer_id` come from the model's
``group_matcher(coarse=False)`` via ``timm.models.group_parameters`` (as ``timm.optim.param_groups_layer_decay``
does): 0 is the stem, ``i + 1`` block ``i`` (EfficientNet-B0: 16 blocks, ResNet-18: 8), and ``num_layers`` the
last block, which timm groups with any layers after the blocks (EfficientNet's ``conv_head``/``bn2``).

timm is imported lazily (inside the constructor).

Rebuilding from a Lightning checkpoint (``BaseMethod.from_checkpoint``: ``audio-ssl classify``, ``probe``) runs
under :func:`pretrained_weights_not_read`: the architecture is built without reading the hub or the weight file,
since the checkpoint's ``state_dict`` then replaces every weight; a fine-tuned model thus loads offline.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import ClassVar

from torch import Tensor, nn

__all__ = ["TimmCNN", "WEIGHT_SUFFIXES", "pretrained_weights_not_read"]

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_HUB_ID = re.compile(r"^(hf-hub:)?[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


_NOT_READ: ContextVar[bool] = ContextVar("timm_cnn_pretrained_not_read", default=False)


@contextlib.contextmanager
def pretrained_weights_not_read() -> Iterator[None]:
    """Inside this block, :class:`TimmCNN` builds its architecture without reading ``pretrained`` (no file, no
    hub): for rebuilding a module from a checkpoint whose ``state_dict`` holds every weight, which is loaded
    strictly afterwards (``BaseMethod.from_checkpoint``), so that a fine-tuned model loads offline."""
    token = _NOT_READ.set(True)
    try:
        yield
    finally:
        _NOT_READ.reset(token)


def _hub_cache(cache_dir: str | Path | None) -> str:
    if cache_dir is not None:
        return str(cache_dir)
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


#: Architectures a mismatching weight file is compared with to say what it holds (built on the meta device: no
#: memory, about a second for all).
_KNOWN_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "efficientnet_b0", "efficientnet_b1",
                "efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "mobilenetv3_large_100",
                "mobilenetv3_small_100", "convnext_tiny", "densenet121", "vgg16", "regnety_016")
_SHOWN_KEYS = 3


def _keys_of(text: str) -> list[str]:
    return re.findall(r'"([^"]+)"', text)


def _file_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a weight file, read as timm's loader reads it (``state_dict``/``model`` entry,
    ``module.`` prefix dropped); empty when it cannot be read."""
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, "pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
        for entry in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(entry), dict):
                state = state[entry]
        return {k.removeprefix("module."): tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    except Exception:  # only for the hint: the load error itself is what is reported
        return {}


def _guess_arch(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The timm architecture of :data:`_KNOWN_ARCHS` whose every weight (classifier aside) the file holds with the
    same shape, the stem's colour channels aside (None: none)."""
    if not shapes:
        return None
    import timm
    import torch

    for arch in _KNOWN_ARCHS:
        with torch.device("meta"):
            model = timm.create_model(arch, num_classes=0)
        state = model.state_dict()
        if len(shapes) - len(state) in (0, 1, 2) and all(
                k in shapes and (shapes[k] == tuple(v.shape) or (v.ndim == 4 and shapes[k][:1] + shapes[k][2:] ==
                                                                 tuple(v.shape)[:1] + tuple(v.shape)[2:]))
                for k, v in state.items()):
            return arch
    return None


def _mismatch_message(error: str, source: str, model_name: str, classes: int, file: str | None) -> str:
    """One line for torch's ``Error(s) in loading state_dict`` (which lists every key): counts, the first keys and
    the likely cause."""
    missing = unexpected = []
    shaped = []
    for part in error.split("\n\t"):
        if part.startswith("Missing key(s)"):
            missing = _keys_of(part)
        elif part.startswith("Unexpected key(s)"):
            unexpected = _keys_of(part)
        elif part.startswith("size mismatch for "):
            found = re.match(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) from "
                             r"checkpoint, the shape in current model is torch\.Size\((\[.*?\])\)", part)
            shaped.append(f"{found[1]} (file {found[2]}, model {found[3]})" if found else part.split(":")[0][18:])

    def listed(what: str, keys: list[str]) -> str:
        more = f", ... {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else ""
        return f"{len(keys)} {what} ({', '.join(keys[:_SHOWN_KEYS])}{more})"

    found = [listed(w, k) for w, k in (("missing", missing), ("unexpected", unexpected),
                                       ("differently shaped", shaped)) if k]
    head = (f"TimmCNN: the weights in {source} do not match timm {model_name!r} (in_chans=1, classifier of "
            f"{classes} classes): {'; '.join(found) or error.splitlines()[0]}. ")
    guess = _guess_arch(_file_shapes(file)) if file else None
    arch = __import__("timm").models.get_arch_name(model_name)
    classifier_only = not missing and not unexpected and all(
        key.startswith(("fc.", "classifier.", "head.", "last_linear.")) for key in shaped)
    if guess is not None and guess != arch:
        return head + (f"This file looks like a {guess} checkpoint: set name={guess} "
                       f"(--model.init_args.encoder.init_args.name {guess}) or pass weights of {model_name}")
    if classifier_only:
        return head + ("Only the classifier's size differs: pass pretrained_classes=N (N: the rows of the file's "
                       "classifier; --model.init_args.encoder.init_args.pretrained_classes N)")
    return head + (f"The file is not a plain {model_name} checkpoint (another architecture or an edited state "
                   "dict): pass weights of this architecture")


class TimmCNN(nn.Module):
    """A timm CNN on one-channel log-mel spectrograms, globally pooled (see the module docstring).

    Args:
        name: timm architecture, e.g. ``"efficientnet_b0"``, ``"resnet18"`` (any name of ``timm.list_models()``
            whose model takes ``in_chans``; the CNNs do). A pretrained tag (``"efficientnet_b0.ra_in1k"``) selects
            that tag's pretrained config.
        pretrained: ``None``: random initialisation (timm's own init; the probe's control). A Hugging Face hub id
            (``"timm/efficientnet_b0.ra_in1k"``, optionally ``hf-hub:`` in front and ``@revision`` after; fetched
            into the hub cache on first use, which is an explicit request to download) or a local weight file
            (``.safetensors``, ``.pth``, ``.pt``, ``.bin``; torch files are read with ``weights_only=True``; a
            ``state_dict``/``model`` entry of a training checkpoint is used as timm does). Both go through timm's
            pretrained loader: stem summed over RGB, strict key and shape check.
        pretrained_classes: Rows of the checkpoint's classifier (``None``: the pretrained config's
            ``num_classes``, 1000 for ImageNet-1k weights). Only needed for weights fine-tuned on another label
            set; the classifier is dropped after loading either way.
        drop_path_rate: Stochastic depth rate of the blocks (timm's ``drop_path_rate``; 0 disables it).
        cache_dir: Hugging Face hub cache for hub ids (``None``: ``$HF_HUB_CACHE``, by default
            ``~/.cache/huggingface/hub``).

    Attributes:
        out_dim: Embedding size ``D`` (timm's ``head_hidden_size``, else ``num_features``: 1280 for
            EfficientNet-B0, 512 for ResNet-18).
        num_layers: Largest :meth:`layer_id`.
        pretrained_source: Where the weights came from (``"random init"``, the hub id, or the file path;
            ``"<source> (not read)"`` under :func:`pretrained_weights_not_read`).

    Raises:
        ValueError: an unknown architecture, a ``pretrained`` that is neither an existing weight file nor a hub
            id, a hub id for another architecture, or weights that do not match the model (naming the source and
            the keys).
        FileNotFoundError: a weight file that does not exist, or a hub id that is neither cached nor reachable
            (the message says what to fetch and where to put it).
    """

    convolutional: ClassVar[bool] = True
    """A 2-D CNN: its activations are 4-D feature maps (methods' ``channels_last`` option applies)."""

    def __init__(
        self,
        name: str = "efficientnet_b0",
        pretrained: str | None = None,
        pretrained_classes: int | None = None,
        drop_path_rate: float = 0.0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        import timm
        from timm.models import get_pretrained_cfg, group_parameters

        arch = timm.models.get_arch_name(name)
        if not timm.is_model(arch):
            raise ValueError(f"TimmCNN: unknown timm architecture {name!r} (see timm.list_models())")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"TimmCNN: drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.name = name
        kwargs: dict = {"in_chans": 1}
        if drop_path_rate > 0:  # only then: not every timm CNN takes drop_path_rate
            kwargs["drop_path_rate"] = drop_path_rate

        if pretrained is None or _NOT_READ.get():
            self.pretrained_source = "random init" if pretrained is None else f"{pretrained} (not read)"
            backbone = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        else:
            model_name, overlay, source = self._resolve_source(str(pretrained), name, arch, timm)
            cfg = get_pretrained_cfg(model_name)
            classes = pretrained_classes if pretrained_classes is not None else (cfg.num_classes if cfg else None)
            if classes is None:
                raise ValueError(f"TimmCNN: timm has no pretrained config for {model_name!r}; pass "
                                 "pretrained_classes (the rows of the checkpoint's classifier)")
            overlay["num_classes"] = int(classes)
            self.pretrained_source = source
            backbone = self._create_pretrained(timm, model_name, overlay, source, int(classes), cache_dir, kwargs)
            backbone.reset_classifier(0)
        self.backbone = backbone
        # the pooled output: after the pre-logits layers where a model has them (MobileNetV3's conv_head, VGG's MLP)
        self.out_dim = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)

        if not hasattr(backbone, "group_matcher"):
            raise ValueError(f"TimmCNN: timm model {name!r} has no group_matcher, so no layer ids for layer-wise "
                             "lr decay")
        groups = group_parameters(backbone, backbone.group_matcher(coarse=False), reverse=True)
        self._layer_ids = {f"backbone.{k}": int(v) for k, v in groups.items()}
        missing = [k for k, _ in self.named_parameters() if k not in self._layer_ids]
        if missing:  # group_parameters maps unmatched names to the last group; this guards that contract
            raise ValueError(f"TimmCNN: timm's group_matcher left parameters without a layer: {missing[:5]}")
        self.num_layers = max(self._layer_ids.values())

    # ------------------------------------------------------------------ weights
    @staticmethod
    def _resolve_source(pretrained: str, name: str, arch: str, timm) -> tuple[str, dict, str]:
        """``(timm model name, pretrained_cfg overlay, description)`` for a weight file or a hub id."""
        path = Path(pretrained).expanduser()
        looks_like_file = path.suffix in WEIGHT_SUFFIXES or pretrained.startswith(("/", ".", "~"))
        if path.is_file() or looks_like_file:
            if not path.is_file():
                raise FileNotFoundError(f"TimmCNN: pretrained weight file {pretrained} does not exist")
            if path.suffix not in WEIGHT_SUFFIXES:
                raise ValueError(f"TimmCNN: pretrained file {pretrained} is not a weight file "
                                 f"({', '.join(WEIGHT_SUFFIXES)})")
            return name, {"file": str(path.resolve()), "source": None}, str(path.resolve())
        if pretrained in ("None", "null"):
            raise ValueError(
                f"TimmCNN: pretrained={pretrained!r} is a string, not None. jsonargparse turns a nested "
                "'--model.init_args.encoder.init_args.pretrained null' into the string 'None'; for random init pass "
                "--model.init_args.encoder '{\"init_args\": {\"pretrained\": null}}'")
        if not _HUB_ID.match(pretrained):
            raise ValueError(f"TimmCNN: pretrained={pretrained!r} is neither an existing weight file "
                             f"({', '.join(WEIGHT_SUFFIXES)}) nor a Hugging Face hub id like "
                             "'timm/efficientnet_b0.ra_in1k'")
        hub_id = pretrained.removeprefix("hf-hub:")
        repo_name = hub_id.split("@", 1)[0].split("/", 1)[1]
        repo_arch = timm.models.get_arch_name(repo_name)
        if timm.is_model(repo_arch) and repo_arch != arch:
            raise ValueError(f"TimmCNN: hub id {hub_id!r} holds weights of timm architecture {repo_arch!r}, "
                             f"not of name={name!r}")
        model_name = name
        if repo_arch == arch and "." in repo_name and "." not in name:
            try:  # the tag's pretrained config (classes, first conv, classifier) when timm knows it
                if timm.models.get_pretrained_cfg(repo_name, allow_unregistered=False) is not None:
                    model_name = repo_name
            except RuntimeError:
                pass
        return model_name, {"hf_hub_id": hub_id, "source": "hf-hub", "file": None, "url": None}, hub_id

    def _create_pretrained(self, timm, model_name, overlay, source, classes, cache_dir, kwargs) -> nn.Module:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        try:
            return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay,
                                     num_classes=classes, cache_dir=cache_dir, **kwargs)
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
            from huggingface_hub import constants

            where = _hub_cache(cache_dir)
            repo, _, revision = source.partition("@")
            offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
            raise FileNotFoundError(
                f"TimmCNN: the weights of hub id {source!r} are not in the Hugging Face cache {where} and the hub "
                f"cannot be reached{offline}. On a machine with network, fetch them with "
                f"`hf download {repo} model.safetensors{' --revision ' + revision if revision else ''} "
                "--local-dir DIR` (older huggingface_hub: `huggingface-cli download ...`), copy DIR here and pass the "
                "file: on the command line --model.init_args.encoder.init_args.pretrained DIR/model.safetensors; "
                "in an `audio-ssl cv` frozen probe --pipeline-set 'model_overrides=[\"--model.init_args.encoder."
                "init_args.pretrained\", \"DIR/model.safetensors\"]'. Or fetch with the hub id into a cache and copy "
                f"it to {where} (or point HF_HUB_CACHE at it)") from e
        except RuntimeError as e:
            if "Error(s) in loading state_dict" not in str(e):
                raise
            raise ValueError(_mismatch_message(str(e), source, model_name, classes, overlay.get("file"))) from e

    @property
    def weights_source(self) -> str:
        """Where the weights came from (named in results): :attr:`pretrained_source`."""
        return self.pretrained_source

    def describe(self) -> str:
        """The model for results tables: ``TimmCNN efficientnet_b0``."""
        return f"{type(self).__name__} {self.name}"

    # ------------------------------------------------------------------ layer-wise lr decay
    def layer_id(self, param_name: str) -> int:
        """Depth of a parameter for layer-wise lr decay: 0 stem, ``i + 1`` block ``i``, ``num_layers`` the last
        group. ``param_name`` as in ``self.named_parameters()`` (``"backbone.conv_stem.weight"``).

        Raises:
            KeyError: a name that is not a parameter of this encoder.
        """
        try:
            return self._layer_ids[param_name]
        except KeyError:
            raise KeyError(f"TimmCNN.layer_id: {param_name!r} is not a parameter of this encoder "
                           f"(names look like {next(iter(self._layer_ids))!r})") from None

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        """Log-mel ``[B, 1, F, T]`` or ``[B, F, T]`` -> pooled embedding ``[B, out_dim]``.

        Raises:
            ValueError: any other shape.
        """
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"TimmCNN expects a log-mel of shape [B, 1, F, T] or [B, F, T], got {tuple(x.shape)}")
        return self.backbone(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, out_dim={self.out_dim}, num_layers={self.num_layers}, " \
               f"weights={self.pretrained_source!r}"

