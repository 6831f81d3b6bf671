"""Monitors of a self-supervised method that never reach the encoder: an online linear probe and a kNN classifier.

Both look at clip embeddings ``[N, D]`` with labels ``[N]``; labels only ever feed these monitors.

* :class:`OnlineProbe` is a linear classifier trained on *detached* embeddings alongside the method (its own
  optimizer group, see :meth:`~audio_ssl.methods.base.BaseMethod.configure_optimizers`), the usual way
  solo-learn and lightly (``OnlineLinearClassifier``) follow linear separability during pretraining.
* :class:`KNNMonitor` keeps the embeddings of the clean labelled training clips (whole clips, no augmentation,
  the encoder in eval mode, like the queries; :meth:`~audio_ssl.methods.base.BaseMethod.knn_bank` computes them at
  validation time) as a memory bank and scores the validation clips with a weighted k-nearest-neighbour vote (Wu et al., 2018, "Unsupervised feature learning via
  non-parametric instance discrimination", eq. 7: cosine similarity, weights ``exp(s / temperature)``).

:class:`~audio_ssl.methods.base.BaseMethod` owns one of each (``online_probe``, ``knn``) and wires them into
its steps through :meth:`~audio_ssl.methods.base.BaseMethod.monitor_step`; a method only hands over embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audio_ssl.utils.distributed import all_gather_rows

__all__ = ["KNNMonitor", "OnlineProbe", "knn_predict"]


@torch.no_grad()
def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> Tensor:
    """Weighted kNN class scores ``[M, num_classes]`` of test embeddings ``[M, D]`` against a bank ``[N, D]``.

    Cosine similarity to every bank embedding; the ``k`` most similar (``min(k, N)``) vote for their label
    (``train_labels [N]``, int64 in ``[0, num_classes)``) with weight ``exp(similarity / temperature)``.
    Queries are scored ``chunk_size`` at a time, so memory is ``O(chunk_size * N)``.
    """
    train = F.normalize(train_features.float(), dim=1)
    k = min(k, train.shape[0])
    scores = []
    for chunk in F.normalize(test_features.float(), dim=1).split(chunk_size):
        sim, idx = (chunk @ train.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(chunk.shape[0], num_classes, device=chunk.device)
        votes.scatter_add_(1, train_labels[idx], weights)
        scores.append(votes)
    return torch.cat(scores)


class OnlineProbe(nn.Linear):
    """A linear classifier ``[N, D] -> [N, C]`` trained on detached embeddings (gradients stop at its input).

    It is an ``nn.Linear`` (``weight [C, D]``, ``bias [C]``), so checkpoints keep the keys ``online_probe.*``.
    """

    def step(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Cross-entropy and accuracy on ``embeddings [N, D]`` (detached here) and ``labels [N]``:
        ``(loss, {"online_probe_loss", "online_probe_acc"})``."""
        logits = self(embeddings.detach())
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(1) == labels).float().mean()
        return loss, {"online_probe_loss": loss.detach(), "online_probe_acc": acc}


class KNNMonitor(nn.Module):
    """kNN accuracy of validation embeddings against a memory bank of training embeddings (:func:`knn_predict`).

    :meth:`collect` keeps detached query embeddings (the validation clips); :meth:`set_bank` sets the bank, the
    embeddings of the clean training clips, gathered over every process (each rank passes its shard, shards may
    differ in size; a collective: every rank must call it); :meth:`compute` scores this rank's queries against
    the bank and returns ``(accuracy, count)``, or ``None`` when the bank or the queries are empty. The queries
    are cleared by :meth:`compute` and :meth:`clear_queries`; the bank stays until the next :meth:`set_bank`.
    No parameters and no state in checkpoints.
    """

    def __init__(self, num_classes: int, k: int = 20, temperature: float = 0.07):
        super().__init__()
        if k < 1 or temperature <= 0:
            raise ValueError(f"KNNMonitor: k must be >= 1 and temperature > 0, got k={k}, temperature={temperature}")
        self.num_classes, self.k, self.temperature = num_classes, k, temperature
        self.bank: tuple[Tensor, Tensor] | None = None
        """``(embeddings [N, D] float32, labels [N])`` over every process, or None before :meth:`set_bank`."""
        self.queries: list[tuple[Tensor, Tensor]] = []

    def collect(self, embeddings: Tensor, labels: Tensor) -> None:
        """Keep query ``embeddings [N, D]`` and ``labels [N]`` (detached) for the next :meth:`compute`."""
        self.queries.append((embeddings.detach().float(), labels.detach()))

    def clear_queries(self) -> None:
        self.queries.clear()

    def set_bank(self, embeddings: Tensor, labels: Tensor) -> None:
        """The bank: this rank's ``embeddings [N_r, D]`` and ``labels [N_r]``, gathered over every process."""
        self.bank = (all_gather_rows(embeddings.detach().float()), all_gather_rows(labels.detach()))

    def compute(self) -> tuple[Tensor, int] | None:
        """``(accuracy on this rank's queries, number of queries)`` against the bank; the queries are cleared.
        ``None`` when there is nothing to score."""
        queries, self.queries = self.queries, []
        if self.bank is None or len(self.bank[0]) == 0 or not queries:
            return None
        bank_x, bank_y = self.bank
        val_x = torch.cat([x for x, _ in queries])
        val_y = torch.cat([y for _, y in queries])
        scores = knn_predict(bank_x.to(val_x.device), bank_y.to(val_x.device), val_x, self.num_classes, self.k,
                             self.temperature)
        return (scores.argmax(1) == val_y).float().mean(), len(val_y)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, k={self.k}, temperature={self.temperature}"
