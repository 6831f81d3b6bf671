"""Self-supervised objectives: contrastive (NT-Xent) and masked prediction."""

from audio_ssl.losses.masked_prediction import masked_accuracy, masked_prediction_loss
from audio_ssl.losses.nt_xent import NTXentLoss, NTXentOutput, nt_xent

__all__ = ["NTXentLoss", "NTXentOutput", "nt_xent", "masked_prediction_loss", "masked_accuracy"]
