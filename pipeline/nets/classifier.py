"""The classifier of the judge and of the downstream arms."""

from __future__ import annotations

import torch
from torch import nn

class Classifier(nn.Module):
    """A small, fast CNN: a stride-2 stem, then three conv-BN-ReLU-maxpool stages that double the
    width, global average pooling and a linear head. `features` (the pooled vector) is the feature
    space of the gate and the evaluation. Sized for the CPU: a run converges in seconds."""

    def __init__(self, image_size: int, channels: int, num_classes: int, width: int):
        super().__init__()
        layers, in_ch, size = [], channels, image_size
        for stage, out_ch in enumerate((width, 2 * width, 4 * width)):
            layers += [nn.Conv2d(in_ch, out_ch, 3, stride=2 if stage == 0 else 1, padding=1, bias=False),
                       nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
            size = (size + 1) // 2 if stage == 0 else size
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            in_ch = out_ch
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(in_ch, num_classes))
        self.feature_dim = in_ch

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
