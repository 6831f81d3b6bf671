"""Clip-classification scores accumulated over an epoch, exact under DDP and in any batch order.

:class:`ClassificationScores` keeps one integer confusion matrix and one count of top-k hits (both summed
over processes by torchmetrics when it computes), and derives every score from these counts, so

- no two scores can share or overwrite each other's state (``MetricCollection`` compute groups merged the
  states of top-5 accuracy and macro-F1 after an all-correct first batch and logged one for the other);
- the result does not depend on how the clips were split into batches or over processes, as long as every
  clip is counted once (see :class:`audio_ssl.data.sampler.ShardSampler` for the evaluation loaders).

The definitions are scikit-learn's: ``acc`` = ``accuracy_score(y, argmax)``, ``f1_macro`` =
``f1_score(y, argmax, average="macro", zero_division=0)`` (mean over the classes that occur in the labels or
in the predictions) and ``acc_top{k}`` = ``top_k_accuracy_score`` (hits among the ``k`` highest scores).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class ClassificationScores(Metric):
    """``acc``, ``f1_macro`` and (with more than ``top_k`` classes) ``acc_top{top_k}`` from class scores.

    ``update(scores [B, C], target [B])`` takes logits or probabilities; ``compute()`` returns a dict of
    float64 scalars; ``confusion_matrix()`` the synced ``[C, C]`` counts (rows: true class, columns: predicted).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_classes: int, top_k: int = 5, **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.num_classes = num_classes
        self.top_k = top_k if num_classes > top_k else 0
        self.add_state("confusion", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("topk_hits", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores: Tensor, target: Tensor) -> None:
        if scores.ndim != 2 or scores.shape[1] != self.num_classes or target.shape != scores.shape[:1]:
            raise ValueError(f"expected scores [B, {self.num_classes}] and targets [B], got "
                             f"{tuple(scores.shape)} and {tuple(target.shape)}")
        target = target.long()
        if len(target) and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
            raise ValueError(f"targets must lie in 0..{self.num_classes - 1}, got {target.unique().tolist()}")
        pred = scores.argmax(1)
        cells = torch.bincount(target * self.num_classes + pred, minlength=self.num_classes ** 2)
        # Out of place on purpose: a model sent to ``ddp_spawn`` workers shares its tensors' memory between
        # the processes, and ``+=`` would add every rank's counts into one tensor.
        self.confusion = self.confusion + cells.view(self.num_classes, self.num_classes)
        if self.top_k:
            top = scores.topk(self.top_k, dim=1).indices
            self.topk_hits = self.topk_hits + (top == target[:, None]).any(1).sum()

    def compute(self) -> dict[str, Tensor]:
        return scores_from_counts(self.confusion, self.topk_hits, self.top_k)

    def confusion_matrix(self) -> Tensor:
        """The confusion matrix over every process (a collective under DDP: call it on every rank)."""
        with self.sync_context():  # no-op in one process; gathers and sums the states otherwise
            return self.confusion.clone()


def scores_from_counts(confusion: Tensor, topk_hits: Tensor, top_k: int) -> dict[str, Tensor]:
    """The scores of :class:`ClassificationScores` from a confusion matrix and a top-k hit count."""
    m = confusion.to(torch.float64)
    total = m.sum()
    if total == 0:
        raise ValueError("no predictions were counted: the scores of an empty set are undefined")
    tp = m.diagonal()
    fp = m.sum(0) - tp
    fn = m.sum(1) - tp
    seen = (tp + fp + fn) > 0  # classes among the labels or the predictions, as scikit-learn averages them
    f1 = 2 * tp[seen] / (2 * tp[seen] + fp[seen] + fn[seen])
    out = {"acc": tp.sum() / total, "f1_macro": f1.mean()}
    if top_k:
        out[f"acc_top{top_k}"] = topk_hits.to(torch.float64) / total
    return out


class WeightedMean(Metric):
    """Mean of logged values weighted by their batch sizes, over every update of every process (float64).

    What :meth:`BaseMethod.log_metrics` logs per epoch. A NaN value makes the mean NaN (a diverged loss
    must show). Not torchmetrics' ``MeanMetric``: with ``nan_strategy="disable"`` (torchmetrics 1.9) it
    ignores the weights.
    """

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("weighted_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("weight", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: Tensor, weight: float) -> None:
        value = torch.as_tensor(value).detach().to(device=self.weighted_sum.device, dtype=torch.float64)
        if value.numel() != 1:
            raise ValueError(f"expected a scalar to average, got shape {tuple(value.shape)}")
        self.weighted_sum = self.weighted_sum + value.reshape(()) * float(weight)  # out of place: see above
        self.weight = self.weight + float(weight)

    def compute(self) -> Tensor:
        return self.weighted_sum / self.weight
