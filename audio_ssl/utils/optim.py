"""Optimizers and per-step learning-rate schedules shared by every method."""

from __future__ import annotations

import logging
import math
import warnings

import torch
from torch import nn

log = logging.getLogger(__name__)


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017), as used by SimCLR.

    Each parameter's update is scaled by ``eta * ||w|| / (||g|| + weight_decay * ||w||)``. Groups with
    ``lars_exclude=True`` (biases and norm layers, by convention) get plain SGD with momentum.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not group["lars_exclude"]:
                    if group["weight_decay"]:
                        grad = grad.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    grad = grad * trust
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = grad.clone()
                else:
                    buf.mul_(group["momentum"]).add_(grad)
                p.add_(buf, alpha=-group["lr"])
        return loss


def split_decay(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights with ``weight_decay``, and biases + norm parameters (1-D) without it."""
    decay, no_decay = [], []
    for param in module.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
    return groups


def build_optimizer(name: str, groups: list[dict], lr: float, weight_decay: float, momentum: float = 0.9,
                    fused: bool = False):
    """``adamw``, ``adam``, ``sgd`` or ``lars`` over parameter groups (each may set its own ``lr``).

    ``fused=True`` builds torch's fused implementation (``fused=True`` of AdamW/Adam/SGD: one kernel updates every
    parameter; same update as the default within float rounding). Raises ValueError for an unknown name, for
    ``fused`` with ``lars`` (no fused implementation), and when torch refuses ``fused`` for these parameters (a
    device without fused kernels, non-float parameters; torch's reason is kept in the message).
    """
    name = name.lower()
    torch_optimizers = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    if name in torch_optimizers:
        groups = [{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups]
        kwargs = {"momentum": momentum} if name == "sgd" else {}
        if fused:
            kwargs["fused"] = True
        try:
            return torch_optimizers[name](groups, lr=lr, weight_decay=weight_decay, **kwargs)
        except RuntimeError as err:
            if not fused:
                raise
            raise ValueError(f"fused_optimizer: torch has no fused {name} for these parameters ({err}); set "
                             "fused_optimizer to false or 'auto'") from err
    if name == "lars":
        if fused:
            raise ValueError("fused_optimizer: lars has no fused implementation (only adamw, adam, sgd); set "
                             "fused_optimizer to false or 'auto'")
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer={name!r} is not one of adamw, adam, sgd, lars")


def warmup_cosine(total_steps: int, warmup_steps: int, final_fraction: float = 0.0, start_step: int = 0):
    """LambdaLR factor: 0 before ``start_step`` (a group that starts later, e.g. an encoder frozen for the first
    epochs of a fine-tune), then linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine to
    ``final_fraction`` at ``total_steps``."""
    total_steps = max(1, total_steps)

    def factor(step: int) -> float:
        if step < start_step:
            return 0.0
        step -= start_step
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - start_step - warmup_steps))
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class ResizableSchedule:
    """Mixin for a per-step schedule that knows its length (``self.total_steps``) and can continue a run whose
    length changed.

    ``load_state_dict`` of a state saved with the same ``total_steps`` restores it exactly. A state saved with a
    different length (a finished run extended with a larger ``max_epochs``) keeps this schedule, built for the
    new total, and adopts only the position (``last_epoch``, the number of steps taken); the optimizer's learning
    rates are set to this schedule's value at that position. A position past the new total raises ValueError.
    """

    total_steps: int

    def load_state_dict(self, state_dict: dict) -> None:
        saved_total = state_dict.get("total_steps")
        if saved_total is None or saved_total == self.total_steps:
            super().load_state_dict(state_dict)
            return
        position = int(state_dict["last_epoch"])
        if position > self.total_steps:
            raise ValueError(
                f"the checkpoint's {type(self).__name__} has taken {position} of {saved_total} steps, but this run's "
                f"schedule has only {self.total_steps}: a run cannot be shortened below the steps already trained; "
                "raise trainer.max_epochs / max_steps, or start a new run in a new checkpoint.dirpath"
            )
        log.warning("%s: the checkpoint's schedule had %d steps, this run has %d; continuing at step %d of the "
                    "new schedule", type(self).__name__, saved_total, self.total_steps, position)
        self.last_epoch = position
        self._step_count = int(state_dict.get("_step_count", position + 1))
        with warnings.catch_warnings():  # get_lr outside step() only warns; the position is set on purpose
            warnings.simplefilter("ignore")
            lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


class OneCycleSchedule(ResizableSchedule, torch.optim.lr_scheduler.OneCycleLR):
    """:class:`torch.optim.lr_scheduler.OneCycleLR` that continues at a new length on resume (see
    :class:`ResizableSchedule`)."""


class WarmupCosineSchedule(ResizableSchedule, torch.optim.lr_scheduler.LambdaLR):
    """Linear warm-up over ``warmup_steps`` then cosine to ``final_fraction`` of each group's lr, stepped once
    per optimizer step for ``total_steps`` steps; continues at a new length on resume (see
    :class:`ResizableSchedule`). A parameter group with ``start_step: N`` (N > 0) is held at lr 0 for its first
    N steps and then has its own warm-up (``warmup_steps`` long) and cosine over the remaining steps."""

    def __init__(self, optimizer, total_steps: int, warmup_steps: int, final_fraction: float = 0.0):
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = int(warmup_steps)
        factors = [warmup_cosine(self.total_steps, self.warmup_steps, final_fraction, group_start(g, self.total_steps))
                   for g in optimizer.param_groups]
        super().__init__(optimizer, factors)


def group_start(group: dict, total_steps: int) -> int:
    """A parameter group's ``start_step`` (0 when absent); ValueError unless ``0 <= start_step < total_steps``."""
    start = int(group.get("start_step", 0))
    if not 0 <= start < max(1, total_steps):
        raise ValueError(f"parameter group {group.get('name', '?')!r} starts at step {start}, outside the "
                         f"schedule's 0..{total_steps - 1}: train for more steps than the group waits")
    return start


def build_scheduler(name: str, optimizer, total_steps: int, warmup_fraction: float = 0.1,
                    max_lr: float | list[float] | None = None):
    """A per-step schedule over ``total_steps`` optimizer steps: ``onecycle`` (peaks at ``max_lr``, default 4x
    each group's lr), ``cosine`` (linear warm-up over ``warmup_fraction`` of the steps, then cosine to zero),
    ``constant`` or ``none`` (returns None). Both schedules continue at a new length when a run is resumed with
    a different total (:class:`ResizableSchedule`). A group may set ``start_step`` (lr 0 until then, then its
    own warm-up and cosine; ``cosine`` only). Raises ValueError for an unknown name, a ``start_step`` with another
    schedule or, for onecycle, groups whose ``max_lr``/``lr`` ratios differ."""
    name = name.lower()
    late = [g.get("name", "?") for g in optimizer.param_groups if g.get("start_step", 0)]
    if late and name != "cosine":
        raise ValueError(f"parameter groups {late} start later (start_step: the fine-tune's freeze_encoder_epochs), "
                         f"which only scheduler=cosine implements, got scheduler={name!r}")
    if name in ("none", "constant"):
        return None
    if name == "onecycle":
        base = [g["lr"] for g in optimizer.param_groups]
        if max_lr is None:
            peaks = [4 * b for b in base]
        elif isinstance(max_lr, (list, tuple)):
            peaks = list(max_lr)
        else:
            # One peak for the main group; other groups keep their ratio to the main group's lr.
            peaks = [max_lr * b / base[0] for b in base]
        div = [p / b for p, b in zip(peaks, base)]
        if len(set(round(d, 9) for d in div)) != 1:
            raise ValueError(f"onecycle needs the same max_lr/lr ratio in every group, got {div}")
        total_steps = max(3, total_steps)
        # OneCycleLR divides by both phase lengths (pct*T - 1 and T*(1 - pct)): keep both positive.
        pct_start = min(max(warmup_fraction, 1.5 / total_steps), 1 - 0.5 / total_steps)
        return OneCycleSchedule(
            optimizer, max_lr=peaks, total_steps=total_steps, pct_start=pct_start,
            div_factor=div[0], anneal_strategy="cos",
        )
    if name == "cosine":
        warmup = round(warmup_fraction * total_steps)
        return WarmupCosineSchedule(optimizer, total_steps, warmup)
    raise ValueError(f"scheduler={name!r} is not one of onecycle, cosine, constant, none")


def no_weight_decay(name: str, param: torch.Tensor, keys: tuple[str, ...] = ()) -> bool:
    """Whether a parameter trains without weight decay: biases, 1-D parameters (norm scales) and any parameter
    whose name contains one of ``keys`` (position tables, class tokens: an encoder's ``no_weight_decay_keys``)."""
    return param.ndim <= 1 or name.endswith(".bias") or any(key in name for key in keys)


def layer_decay_groups(
    encoder: nn.Module,
    lr: float,
    weight_decay: float,
    layer_decay: float | None = None,
    prefix: str = "encoder",
) -> list[dict]:
    """Optimizer groups for the trainable parameters of ``encoder``, with optional layer-wise lr decay.

    Layer-wise decay as in BEiT (Bao et al., 2022) and timm's ``param_groups_layer_decay``: the encoder states
    its depth, ``encoder.num_layers`` (int, L) and ``encoder.layer_id(param_name) -> int`` (0 = stem/embeddings,
    ``i + 1`` = block ``i``, ``L`` = the final norm, which shares the last block's group), and a parameter of depth
    ``d`` gets ``lr * layer_decay ** (L - d)``: the last block ``lr``, the stem ``lr * layer_decay ** L``.
    Without ``layer_decay`` every parameter gets ``lr`` (the encoder then needs neither attribute).

    Each depth is split into a weight-decay and a no-weight-decay group (:func:`no_weight_decay` with the
    encoder's optional ``no_weight_decay_keys``). Groups are named ``{prefix}[.front|.layerN][.no_decay]``
    (``front`` = depth 0, ``layerN`` = depth ``N + 1`` and the final norm), ordered by depth, and carry
    ``lr_scale``; no-decay groups set ``lars_exclude``. Parameters with ``requires_grad=False`` are left out.

    Raises:
        ValueError: ``layer_decay`` outside (0, 1]; an encoder without ``num_layers``/``layer_id`` when
            ``layer_decay`` is set; a ``layer_id`` outside ``0..L``.
    """
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1] or None, got {layer_decay}")
    keys = tuple(getattr(encoder, "no_weight_decay_keys", ()))
    if layer_decay is not None:
        if not callable(getattr(encoder, "layer_id", None)) or not isinstance(getattr(encoder, "num_layers", None),
                                                                               int):
            raise ValueError(f"layer_decay={layer_decay} needs an encoder that states its depth (num_layers: int and "
                             f"layer_id(param_name) -> int); {type(encoder).__name__} does not: set layer_decay to null")
        num_layers = int(encoder.num_layers)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in encoder.named_parameters():
        if not param.requires_grad:
            continue
        if layer_decay is None:
            depth, scale, label = 0, 1.0, ""
        else:
            depth = int(encoder.layer_id(name))
            if not 0 <= depth <= num_layers:
                raise ValueError(f"{type(encoder).__name__}.layer_id({name!r}) = {depth}, outside 0..{num_layers}")
            scale = layer_decay ** (num_layers - depth)
            label = ".front" if depth == 0 else f".layer{min(depth, num_layers) - 1}"
        skip_decay = no_weight_decay(name, param, keys)
        key = (depth, skip_decay)
        if key not in groups:
            groups[key] = {
                "name": f"{prefix}{label}{'.no_decay' if skip_decay else ''}",
                "params": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": 0.0 if skip_decay else weight_decay,
            }
            if skip_decay:
                groups[key]["lars_exclude"] = True
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]
