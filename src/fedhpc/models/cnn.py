"""``cnn-cifar`` and ``cnn-medmnist``: two conv + pool blocks, then two fully connected layers.

Both are one architecture, :func:`conv_net`, at the sizes of their papers. The
layers are in forward order in one ``nn.Sequential``, which is what federated
dropout reads to find Conv->Conv and Linear->Linear pairs: it drops output
channels of the first convolution and hidden units of the first fully
connected layer.
"""

from __future__ import annotations

import torch
from torch import nn

from fedhpc.errors import ConfigError


def conv_net(input_shape, num_classes: int, channels: tuple[int, int], kernel: int, hidden: int,
             name: str) -> nn.Module:
    """conv(k x k, 'same') -> ReLU -> 2x2 max pool, twice; Linear(hidden) -> ReLU -> Linear(classes)."""
    if len(input_shape) != 3 or min(input_shape[1:]) < 4:
        raise ConfigError(f"model '{name}' needs images of shape (channels, height, width) of at least 4x4, but "
                          f"the dataset's samples have shape {tuple(input_shape)}; use mlp or logreg for it")
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], channels[0], kernel, padding=kernel // 2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(channels[0], channels[1], kernel, padding=kernel // 2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
    )
    with torch.no_grad():  # the flattened size for this input size
        flat = features(torch.zeros(1, *input_shape)).shape[1]
    return nn.Sequential(*features, nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def cnn_cifar(input_shape, num_classes, cfg) -> nn.Module:
    """The CNN of McMahan et al. 2017 (FedAvg): 5x5 convolutions of 32 and 64 channels,
    each followed by 2x2 max pooling, a 512-unit ReLU layer and a linear output
    layer; about 2.2M parameters on 3 x 32 x 32 CIFAR-10 images."""
    return conv_net(input_shape, num_classes, (32, 64), 5, 512, "cnn-cifar")


def cnn_medmnist(input_shape, num_classes, cfg) -> nn.Module:
    """A small CNN for 28 x 28 MedMNIST images of 1 or 3 channels: 3x3 convolutions
    of 32 and 64 channels with 2x2 max pooling, a 128-unit ReLU layer and a linear
    output layer; about 0.42M parameters."""
    return conv_net(input_shape, num_classes, (32, 64), 3, 128, "cnn-medmnist")
