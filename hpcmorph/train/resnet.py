"""ResNet18's trunk (He et al. 2016), built in a page: the stem, four stages of two basic blocks.

The same modules, names and initialisation as torchvision's ``resnet18(weights=None)``, created in
the same order, so that a seed gives exactly the weights torchvision's would (a test compares the
two): a model saved by either loads into the other. Written out rather than imported because
importing torchvision loads its detection operators and through them ``torch._dynamo``, about 2 s
of CPU per process, paid by every rank of every stage for a model that needs none of it.
"""

from __future__ import annotations

import torch
from torch import nn

#: Basic blocks per stage, and the channels of each stage.
BLOCKS = (2, 2, 2, 2)
WIDTHS = (64, 128, 256, 512)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3 x 3 convolutions with batch norms and a shortcut: relu(bn2(conv2(relu(bn1(conv1(x))))) + x),
    the shortcut a strided 1 x 1 convolution and batch norm (``downsample``) where the shape changes."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` basic blocks, the first changing ``inplanes`` channels to ``planes`` at ``stride``."""
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
    return nn.Sequential(BasicBlock(inplanes, planes, stride, downsample),
                         *(BasicBlock(planes, planes) for _ in range(1, blocks)))


class ResNet18Trunk(nn.Module):
    """conv1 (7 x 7, stride 2), bn1, relu, maxpool (3 x 3, stride 2), layer1-4 (64, 128, 256, 512
    channels; strides 1, 2, 2, 2): images (B, 3, H, W) to a feature map (B, 512, ~H/32, ~W/32)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, WIDTHS[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = WIDTHS[0]
        for i, (planes, blocks) in enumerate(zip(WIDTHS, BLOCKS)):
            setattr(self, f"layer{i + 1}", stage(inplanes, planes, blocks, 1 if i == 0 else 2))
            inplanes = planes
        # torchvision builds its 1000-class head here, which draws from the generator; drawing the same
        # numbers keeps the initialisation below identical to torchvision's for any seed.
        nn.Linear(WIDTHS[-1], 1000)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
