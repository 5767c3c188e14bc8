"""ResNets: a small one for small images, and the standard bottleneck ResNet-50 for 224 px images.

`ResNet`: 3x3 stem without pooling, basic residual blocks; stage i has `depths[i]` blocks of `widths[i]` channels and
every stage after the first halves the resolution; features: the global average of widths[-1] channels.
`ResNet50` (He et al. 2016, torchvision's layout, "v1.5": the stride on the 3x3 conv): 7x7/2 stem and 3x3/2 max pool,
then 3, 4, 6, 3 bottleneck blocks (1x1, 3x3, 1x1 convolutions, expansion 4) of widths 64, 128, 256, 512; features:
the global average of 2048 channels (23.5M parameters, no classifier). `width` scales every layer as SimCLR's
ResNet-50 (2x) and (4x) do (128, 256; a narrow 8 for tests). Input to both: float (N, C, H, W) in [0, 1]; the module
normalises to zero mean itself so callers never need dataset statistics.

    >>> ResNet50(in_channels=3, image_size=224)(torch.rand(2, 3, 224, 224)).shape  # (N, 2048)
    torch.Size([2, 2048])
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
    modality = "image"  # the kind of data it takes (modalities.KINDS)

    @staticmethod
    def model_kwargs(model_cfg) -> dict:
        """Its constructor's own keyword arguments from the model.* keys: widths and depths."""
        return {"widths": tuple(model_cfg.widths), "depths": tuple(model_cfg.depths)}

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

    @property
    def input_size(self) -> int:
        """The side of the images it takes (the size its methods' views are made at)."""
        return self.image_size

    def spec(self) -> dict:
        return {"name": "resnet", "in_channels": self.in_channels, "image_size": self.image_size,
                "feature_dim": self.feature_dim, "kwargs": {"widths": list(self.widths), "depths": list(self.depths)}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem((x - 0.5) / 0.25))  # (N, widths[-1], H', W')
        return x.mean(dim=(2, 3))  # (N, D)


class Bottleneck(nn.Module):
    """1x1 (cin -> width), 3x3 with the stride (width -> width), 1x1 (width -> 4 * width), plus the shortcut."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = 4 * width
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.skip = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + self.skip(x))


class ResNet50(nn.Module):
    modality = "image"

    @staticmethod
    def model_kwargs(model_cfg) -> dict:
        """None from the model.* keys: the ImageNet ResNet-50 is fixed."""
        return {}
    STAGES = ((1, 3, 1), (2, 4, 2), (4, 6, 2), (8, 3, 2))  # (width / `width`, blocks, stride of the first block)

    def __init__(self, *, in_channels: int, image_size: int, width: int = 64):
        super().__init__()
        self.in_channels, self.image_size, self.width = in_channels, image_size, width
        self.feature_dim = 4 * 8 * width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], width
        for factor, depth, stride in self.STAGES:
            for j in range(depth):
                blocks.append(Bottleneck(cin, factor * width, stride if j == 0 else 1))
                cin = 4 * factor * width
        self.blocks = nn.Sequential(*blocks)
        for m in self.modules():  # as torchvision
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def input_size(self) -> int:
        """The side of the images it takes (the size its methods' views are made at)."""
        return self.image_size

    def spec(self) -> dict:
        return {"name": "resnet50", "in_channels": self.in_channels, "image_size": self.image_size,
                "feature_dim": self.feature_dim, "kwargs": {"width": self.width}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem((x - 0.5) / 0.25))  # (N, 32 * width, H/32, W/32)
        return x.mean(dim=(2, 3))  # (N, 32 * width): 2048 at width 64
