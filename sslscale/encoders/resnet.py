"""A small ResNet for small images: 3x3 stem without pooling, basic residual blocks, configurable widths/depths.

Stage i has `depths[i]` blocks of `widths[i]` channels; every stage after the first halves the resolution.
Output: global-average-pooled features of size widths[-1]. Input: float (N, C, H, W) in [0, 1]; the module
normalises to zero mean itself so callers never need dataset statistics.
"""
from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))


class ResNet(nn.Module):
    def __init__(self, *, in_channels: int, image_size: int, widths=(32, 64, 128), depths=(1, 1, 1)):
        super().__init__()
        self.in_channels, self.image_size = in_channels, image_size
        self.widths, self.depths = tuple(widths), tuple(depths)
        self.feature_dim = self.widths[-1]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        blocks, cin = [], widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths)):
            for j in range(depth):
                blocks.append(BasicBlock(cin, width, stride=2 if (i > 0 and j == 0) else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)

    def spec(self) -> dict:
        return {"name": "resnet", "in_channels": self.in_channels, "image_size": self.image_size,
                "feature_dim": self.feature_dim, "kwargs": {"widths": list(self.widths), "depths": list(self.depths)}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem((x - 0.5) / 0.25))  # (N, widths[-1], H', W')
        return x.mean(dim=(2, 3))  # (N, D)
