"""Monitors of a self-supervised method that never reach the encoder: an online linear probe and a kNN classifier.

Both look at clip embeddings ``[N, D]`` with labels ``[N]``; labels only ever feed these monitors.

* :class:`OnlineProbe` is a linear classifier trained on *detached* embeddings alongside the method (its own
  optimizer group, see :meth:`~audio_ssl.methods.base.BaseMethod.configure_optimizers`), the usual way
  solo-learn and lightly (``OnlineLinearClassifier``) follow linear separability during pretraining.
* :class:`KNNMonitor` keeps this epoch's training embeddings as a memory bank and scores the validation
  clips with a weighted k-nearest-neighbour vote (Wu et al., 2018, "Unsupervised feature learning via
  non-parametric instance discrimination", eq. 7: cosine similarity, weights ``exp(s / temperature)``).

:class:`~audio_ssl.methods.base.BaseMethod` owns one of each (``online_probe``, ``knn``) and wires them into
its steps through :meth:`~audio_ssl.methods.base.BaseMethod.monitor_step`; a method only hands over embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audio_ssl.utils.distributed import all_gather_no_grad

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
    """kNN accuracy of validation embeddings against the epoch's training embeddings (see :func:`knn_predict`).

    :meth:`collect` stores detached embeddings per stage (``"train"`` into the bank, anything else as queries);
    :meth:`compute` gathers the bank over every process (so each rank votes with the global bank; every rank
    must call it, since it is a collective) and returns this rank's ``(correct, count)``, or ``None`` when the
    bank or the queries are empty. No parameters and no state in checkpoints.
    """

    def __init__(self, num_classes: int, k: int = 20, temperature: float = 0.07):
        super().__init__()
        if k < 1 or temperature <= 0:
            raise ValueError(f"KNNMonitor: k must be >= 1 and temperature > 0, got k={k}, temperature={temperature}")
        self.num_classes, self.k, self.temperature = num_classes, k, temperature
        self.bank: list[tuple[Tensor, Tensor]] = []
        self.queries: list[tuple[Tensor, Tensor]] = []

    def collect(self, embeddings: Tensor, labels: Tensor, stage: str) -> None:
        """Keep ``embeddings [N, D]`` and ``labels [N]``: into the bank for ``stage == "train"``, else as queries."""
        target = self.bank if stage == "train" else self.queries
        target.append((embeddings.detach().float(), labels.detach()))

    def reset_bank(self) -> None:
        self.bank.clear()

    def compute(self) -> tuple[Tensor, int] | None:
        """``(accuracy on this rank's queries, number of queries)``, the bank gathered over processes; the
        queries are cleared. ``None`` when there is nothing to score."""
        queries, self.queries = self.queries, []
        if not self.bank or not queries:
            return None
        bank_x = all_gather_no_grad(torch.cat([x for x, _ in self.bank]))
        bank_y = all_gather_no_grad(torch.cat([y for _, y in self.bank]))
        val_x = torch.cat([x for x, _ in queries])
        val_y = torch.cat([y for _, y in queries])
        scores = knn_predict(bank_x, bank_y, val_x, self.num_classes, self.k, self.temperature)
        return (scores.argmax(1) == val_y).float().mean(), len(val_y)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, k={self.k}, temperature={self.temperature}"
