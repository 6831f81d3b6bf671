"""Self-supervised objectives: contrastive (NT-Xent), bootstrap (BYOL) and masked prediction."""

from audio_ssl.losses.byol import byol_loss
from audio_ssl.losses.masked_prediction import masked_accuracy, masked_prediction_loss
from audio_ssl.losses.nt_xent import NTXentLoss, NTXentOutput, nt_xent

__all__ = ["NTXentLoss", "NTXentOutput", "byol_loss", "nt_xent", "masked_prediction_loss", "masked_accuracy"]
