"""``lstm-shakespeare``: LEAF's next-character model."""

from __future__ import annotations

import torch
from torch import nn

from fedhpc.errors import ConfigError


class CharLSTM(nn.Module):
    """Embedding, a stacked LSTM, and a linear layer on the last step's output
    (LEAF models/shakespeare/stacked_lstm.py)."""

    def __init__(self, vocab: int, embed: int = 8, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, sequence) character indices -> (batch, vocab) logits of the next character."""
        h, _ = self.lstm(self.embed(x.long()))  # datasets keep characters as uint8, 8x less memory
        return self.out(h[:, -1])


def lstm_shakespeare(input_shape, num_classes, cfg) -> nn.Module:
    """Embedding of 8, two LSTM layers of 256 units, linear to the 80-character
    vocabulary (about 0.82M parameters)."""
    from fedhpc.data.shakespeare import VOCAB

    if len(input_shape) != 1 or num_classes != len(VOCAB):
        raise ConfigError(f"model 'lstm-shakespeare' reads sequences of LEAF's {len(VOCAB)} characters and predicts "
                          f"the next one, but the dataset has samples of shape {tuple(input_shape)} and "
                          f"{num_classes} classes; use it with data.name = shakespeare or shakespeare-offline")
    return CharLSTM(num_classes)
