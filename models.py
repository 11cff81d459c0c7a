"""The networks, from random init (no pretrained weights: competition rule): torchvision's
ResNet18/34, built here module for module; a head that computes in float32; the seed's xavier
init; a pretext network's backbone loaded into a task's (04 --init jigsaw).
"""
import torch

import common

# The ResNets are built here, module for module as torchvision builds them (the same state_dict
# keys, the same init drawn in the same order: bit-identical weights for a seed), so a torch stage
# does not import torchvision (about 2 s of every process's start).
ARCHS = ("resnet34", "resnet18")
RESNET_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
WIDTH = 64             # channels of a ResNet's first stage (the recipe's; doubled at each stage)
HEAD = "fc."           # the head's parameters (the final linear layer), by state_dict key prefix


class Float32Linear(torch.nn.Linear):
    """A head that computes in float32 under bf16 autocast: the outputs are the features 05
    writes (the 8 views' mean, max, min, var; a year), and bf16 keeps 8 bits of them (a year to
    within about 4). The same parameters and state_dict keys as the Linear it replaces."""

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return torch.nn.functional.linear(x.float(), self.weight.float(), self.bias.float())


class BasicBlock(torch.nn.Module):
    """torchvision's BasicBlock: two 3x3 convolutions and a shortcut (a 1x1 one where the shape
    changes)."""

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(torch.nn.Module):
    """torchvision's ResNet18/34 at any first-stage width (64: torchvision's own)."""

    def __init__(self, blocks, outputs, width=WIDTH):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        planes = width
        for i, n in enumerate(blocks):
            stride = 1 if i == 0 else 2
            layer = [BasicBlock(planes // stride, planes, stride)] + [BasicBlock(planes, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
            planes *= 2
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes // 2, outputs)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_model(arch, outputs, width=None):
    """A network from random init with `outputs` outputs, its first stage `width` channels wide
    (None: WIDTH, the recipe's)."""
    if arch not in ARCHS:
        common.fail(f"--arch {arch}: choose one of {ARCHS}")
    model = ResNet(RESNET_BLOCKS[arch], outputs, width or WIDTH)
    model.fc.__class__ = Float32Linear      # in place: no new parameters, no RNG drawn
    return model


def xavier_init(model, gain=0.02):
    """The seed's init: xavier_normal (gain 0.02) for every convolution and linear layer, zero
    biases; BatchNorm as torchvision makes it (weight 1, bias 0)."""
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)


def load_backbone(model, state):
    """Copy every weight but the head's (the pretext head has 81 outputs, a task's 1-20)."""
    body = {k: v for k, v in state.items() if not k.startswith(HEAD)}
    missing, unexpected = model.load_state_dict(body, strict=False)
    left = [k for k in missing if not k.startswith(HEAD)]
    if left or unexpected:
        common.fail(f"backbone does not fit: missing {left[:3]}, unexpected {unexpected[:3]}")

