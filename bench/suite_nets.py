"""The search suite's backbone: a small 1D CNN over (channels, time) arrays, a user's own network as
bmnas takes it (`--backbone array_M=suite_nets:series_cnn --taps array_M=conv1,conv2,conv3,pool`)."""

from __future__ import annotations

import torch.nn as nn


class SeriesCNN(nn.Module):
    """Three conv stages (the last two halve time) and an average over time: four taps, shallow to deep."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.LazyConv1d(width, 3, padding=1), nn.BatchNorm1d(width), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv1d(width, width, 3, padding=1, stride=2), nn.BatchNorm1d(width), nn.ReLU())
        self.conv3 = nn.Sequential(nn.Conv1d(width, 2 * width, 3, padding=1, stride=2), nn.BatchNorm1d(2 * width),
                                   nn.ReLU())
        self.pool = nn.AdaptiveAvgPool1d(1)

    def forward(self, x):
        return self.pool(self.conv3(self.conv2(self.conv1(x)))).flatten(1)


def series_cnn() -> nn.Module:
    return SeriesCNN()
