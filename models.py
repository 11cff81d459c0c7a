"""The networks, from random init (no pretrained weights: competition rule): torchvision's
ResNet18/34, built here module for module, and its EfficientNet-B0; a head that computes in float32
and may also take photo inputs; the seed's xavier init; a pretext network's backbone loaded into a
task's (04 --init jigsaw).
"""
import torch

import common

# The ResNets are built here, module for module as torchvision builds them (the same state_dict
# keys, the same init drawn in the same order: bit-identical weights for a seed), so a torch stage
# does not import torchvision (about 2 s of every process's start); EfficientNet-B0 imports it
# when asked for.
ARCHS = ("resnet34", "resnet18", "efficientnet_b0")
RESNET_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
WIDTH = 64             # channels of a ResNet's first stage (the recipe's; doubled at each stage)


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
    """torchvision's ResNet18/34 at any first-stage width (64: torchvision's own), whose head may
    also take photo inputs (variants.photo_inputs), concatenated to the pooled features."""

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

    def forward(self, x, extra=None):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(with_extra(torch.flatten(self.avgpool(x), 1), extra))


def efficientnet_b0(outputs):
    """torchvision's EfficientNet-B0, its head taking photo inputs as ResNet's."""
    import torchvision

    class EfficientNet(torchvision.models.EfficientNet):
        def forward(self, x, extra=None):
            return self.classifier(with_extra(torch.flatten(self.avgpool(self.features(x)), 1), extra))

    model = torchvision.models.efficientnet_b0(weights=None, num_classes=outputs)
    model.__class__ = EfficientNet
    return model


def with_extra(features, extra):
    return features if extra is None else torch.cat([features, extra.to(features.dtype)], 1)


def build_model(arch, outputs, inputs=0, width=None):
    """A network from random init with `outputs` outputs, its head also taking `inputs` photo
    inputs (0: the pixels only, the recipe); a ResNet's first stage `width` channels wide (None:
    WIDTH, the recipe's)."""
    width = width or WIDTH
    if arch not in ARCHS:
        common.fail(f"--arch {arch}: choose one of {ARCHS}")
    if arch in RESNET_BLOCKS:
        model = ResNet(RESNET_BLOCKS[arch], outputs, width)
    elif width != WIDTH:
        common.fail(f"--width {width}: {arch} has the one width ({WIDTH}); widths are for ResNets")
    else:
        model = efficientnet_b0(outputs)
    if inputs:       # a wider head (drawn after the backbone: a network without inputs is unchanged)
        _, linear = head(model)
        wider = torch.nn.Linear(linear.in_features + inputs, outputs)
        if hasattr(model, "fc"):
            model.fc = wider
        else:
            model.classifier[1] = wider
    head(model)[1].__class__ = Float32Linear      # in place: no new parameters, no RNG drawn
    return model


def xavier_init(model, gain=0.02):
    """The seed's init: xavier_normal (gain 0.02) for every convolution and linear layer, zero
    biases; BatchNorm as torchvision makes it (weight 1, bias 0)."""
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)


def head(model):
    """The final linear layer's (name prefix, module): fc for ResNets, classifier.1 otherwise."""
    return ("fc.", model.fc) if hasattr(model, "fc") else ("classifier.1.", model.classifier[1])


def load_backbone(model, state):
    """Copy every weight but the head's (the pretext head has 81 outputs, a task's 1-20)."""
    prefix, _ = head(model)
    body = {k: v for k, v in state.items() if not k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(body, strict=False)
    left = [k for k in missing if not k.startswith(prefix)]
    if left or unexpected:
        common.fail(f"backbone does not fit: missing {left[:3]}, unexpected {unexpected[:3]}")

