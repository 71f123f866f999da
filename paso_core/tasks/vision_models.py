"""Image classifiers for the vision task: a small CNN, a small ViT, GroupNorm ResNets, and
one BatchNorm ResNet (``resnet20``) for the local-SGD study.

None but ``resnet20`` uses BatchNorm, and none uses dropout by default. PASO treats training as the
recurrence ``x_{t+1} = U(x_t, s_t, grad L(x_t; batch_t))`` and solves it by fixed-point
iteration over steps evaluated on different workers. BatchNorm's running statistics are
extra state updated by every *forward* pass, not a function of the parameters: workers
evaluating guessed iterates would each update them differently, so the fixed point (and
the exactness check against serial training) would not exist; the step-parallel methods
refuse ``resnet20`` for that reason. Local SGD needs a BatchNorm model instead: the QSR
seed re-estimates BatchNorm statistics before each evaluation, and that path must be
exercised. Dropout is harmless only
because the task seeds it per step; it is off here to keep the models simple.

:func:`vision_blocks` cuts each model into the ordered blocks pipeline stages run; the
blocks hold the model's own modules, so composing them is the model's forward, op for op.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

MODELS = ("cnn", "vit", "resnet18", "resnet101", "inception_v3", "resnet20")
#: Models with BatchNorm: running statistics are state outside the parameters.
BATCHNORM_MODELS = ("resnet20",)


# --------------------------------------------------------------------------- CNN
def _pool_schedule(image_size: int, blocks: int) -> list[bool]:
    """Pool after a block while the feature map is still at least 4 pixels wide."""
    pools, size = [], image_size
    for _ in range(blocks):
        pool = size >= 4
        pools.append(pool)
        size = size // 2 if pool else size
    return pools


class SmallCNN(nn.Module):
    """conv3x3-ReLU(-maxpool) blocks (32, 64, 128 channels) and a 2-layer MLP head.

    Pooling stops at 2x2 maps so the same definition serves 8x8 digits and 32x32 CIFAR.
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int,
                 widths: tuple[int, ...] = (32, 64, 128), hidden: int = 256) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size, channels = image_size, in_channels
        for width, pool in zip(widths, _pool_schedule(image_size, len(widths))):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * size * size, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# --------------------------------------------------------------------------- ViT
class SmallViT(nn.Module):
    """Pre-norm ViT: conv patch embedding, class token, learned positions, class-token head.

    Built from ``nn.TransformerEncoderLayer`` (``norm_first=True``, ``dropout=0``) so it
    needs nothing beyond torch and has no stochastic layers.
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int, patch_size: int,
                 dim: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: int = 2) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} is not divisible by patch_size={patch_size}")
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=dim, nhead=heads, dim_feedforward=dim * mlp_ratio, dropout=0.0,
                activation="gelu", batch_first=True, norm_first=True,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)  # pre-norm blocks leave the residual stream unnormalised
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = vit_embed(self.patch_embed, self.cls_token, self.pos_embed, x)
        for block in self.blocks:
            h = block(h)
        return vit_classify(self.norm, self.head, h)


def vit_embed(patch_embed: nn.Module, cls_token: torch.Tensor, pos_embed: torch.Tensor,
              x: torch.Tensor) -> torch.Tensor:
    """Patch tokens, class token prepended, positions added: B x (N+1) x dim."""
    tokens = patch_embed(x).flatten(2).transpose(1, 2)  # B x N x dim
    cls = cls_token.expand(tokens.shape[0], -1, -1)
    return torch.cat([cls, tokens], dim=1) + pos_embed


def vit_classify(norm: nn.Module, head: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Logits from the class token of the (unnormalised) residual stream."""
    return head(norm(h[:, 0]))


class ViTEmbed(nn.Module):
    """Block 0 of a SmallViT. It registers the ViT's own conv and class/position parameters
    (the same objects, not copies), so the stage that runs it owns and trains them."""

    def __init__(self, vit: SmallViT) -> None:
        super().__init__()
        self.patch_embed = vit.patch_embed
        self.cls_token = vit.cls_token
        self.pos_embed = vit.pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return vit_embed(self.patch_embed, self.cls_token, self.pos_embed, x)


class ViTHead(nn.Module):
    """Last block of a SmallViT: final norm and linear head on the class token."""

    def __init__(self, vit: SmallViT) -> None:
        super().__init__()
        self.norm = vit.norm
        self.head = vit.head

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return vit_classify(self.norm, self.head, h)


def vit_patch_size(image_size: int) -> int:
    """4 for 32x32 (64 patches), 2 for 8x8 (16 patches): image_size / 8, at least 2.

    (Before, 8x8 digits got 1-pixel patches, 64 tokens of one value each: 4x the attention
    cost, and a ViT that barely learned digits in a few hundred steps.)"""
    return min(image_size, max(2, image_size // 8))


# --------------------------------------------------------------------------- ResNet-18
def group_norm_factory(max_groups: int = 32) -> Callable[[int], nn.Module]:
    """A ``norm_layer`` for torchvision ResNets: GroupNorm with up to 32 groups."""

    def make(channels: int) -> nn.Module:
        return nn.GroupNorm(math.gcd(max_groups, channels), channels)

    return make


def resnet18_groupnorm(in_channels: int, num_classes: int) -> nn.Module:
    """torchvision ResNet-18 with GroupNorm and a CIFAR stem (3x3 stride-1 conv1, no maxpool).

    Why GroupNorm: BatchNorm keeps running mean/variance buffers that every forward pass
    in train mode updates. They are not a function of the parameters, so PASO workers that
    evaluate different guessed iterates would leave different buffers, the step recurrence
    would no longer be ``x_{t+1} = U(x_t, grad)`` and PASO with ``tol = 0`` could not match
    serial training. BatchNorm also makes each sample's output depend on the rest of the
    *shard*, so data-parallel shards would not reproduce the global batch. GroupNorm
    normalises each sample on its own and has no buffers. Why the CIFAR stem: the ImageNet
    stem (7x7 stride 2 + maxpool) shrinks a 32x32 image to 8x8 before the first block.
    """
    import torchvision

    model = torchvision.models.resnet18(
        weights=None, num_classes=num_classes, norm_layer=group_norm_factory()
    )
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
    model.maxpool = nn.Identity()
    return model


def resnet101_groupnorm(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """torchvision ResNet-101 (the PipeOptim seed's), GroupNorm for the reasons above; the
    ImageNet stem for images of 64 pixels and more (Tiny-ImageNet), the CIFAR stem below."""
    import torchvision

    model = torchvision.models.resnet101(weights=None, num_classes=num_classes, norm_layer=group_norm_factory())
    if image_size < 64 or in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    return model


#: Inception-V3's stem and its two 3x3 stride-2 reductions need at least 75x75 pixels.
INCEPTION_MIN_SIZE = 75


class InceptionStem(nn.Module):
    """Inception-V3's layers before ``Mixed_5b``, after upsampling small images to 75x75
    (Tiny-ImageNet's 64x64 are too small for the stem, as for every Inception-V3 user of it)."""

    def __init__(self, model: nn.Module, image_size: int) -> None:
        super().__init__()
        self.size = max(INCEPTION_MIN_SIZE, image_size)
        self.layers = nn.Sequential(model.Conv2d_1a_3x3, model.Conv2d_2a_3x3, model.Conv2d_2b_3x3, model.maxpool1,
                                    model.Conv2d_3b_1x1, model.Conv2d_4a_3x3, model.maxpool2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < self.size:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.layers(x)


INCEPTION_MIXED = ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                   "Mixed_7a", "Mixed_7b", "Mixed_7c")


class InceptionV3(nn.Module):
    """torchvision's Inception-V3 (the PipeOptim seed's second model) as a plain chain: stem,
    the eleven Mixed blocks, pool + dropout + fc; no auxiliary head, its own BatchNorm, and a
    1-channel first convolution for grayscale inputs."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        import torchvision

        net = torchvision.models.inception_v3(weights=None, num_classes=num_classes, aux_logits=False,
                                              init_weights=True, transform_input=False)
        if in_channels != 3:
            net.Conv2d_1a_3x3 = torchvision.models.inception.BasicConv2d(in_channels, 32, kernel_size=3, stride=2)
        self.stem = InceptionStem(net, image_size)
        for name in INCEPTION_MIXED:
            setattr(self, name, getattr(net, name))
        self.head = nn.Sequential(net.avgpool, net.dropout, nn.Flatten(1), net.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _, block in _inception_blocks(self):
            x = block(x)
        return x


# --------------------------------------------------------------------------- ResNet-20 (BatchNorm)
class BasicBlockBN(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut (1x1 conv + BN when the shape changes), ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetBN(nn.Module):
    """The CIFAR ResNet of He et al. (2016), 6n+2 layers with BatchNorm; n=3 is ResNet-20.

    Three stages of ``n`` basic blocks (16, 32, 64 channels, stride 2 between stages), global
    average pooling and a linear head: 8x8 digits end at 2x2 maps, CIFAR-10 at 8x8.
    """

    def __init__(self, in_channels: int, num_classes: int, blocks_per_stage: int = 3,
                 widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, channels = [], widths[0]
        for i, width in enumerate(widths):
            blocks = [BasicBlockBN(channels if j == 0 else width, width, 2 if i and j == 0 else 1)
                      for j in range(blocks_per_stage)]
            stages.append(nn.Sequential(*blocks))
            channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def has_batchnorm(model: nn.Module) -> bool:
    """True when a module keeps BatchNorm running statistics."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# --------------------------------------------------------------------------- factory
def build_vision_model(name: str, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """A freshly initialised classifier; the caller seeds the RNG for a reproducible init."""
    if name == "cnn":
        return SmallCNN(in_channels, image_size, num_classes)
    if name == "vit":
        return SmallViT(in_channels, image_size, num_classes, patch_size=vit_patch_size(image_size))
    if name == "resnet18":
        return resnet18_groupnorm(in_channels, num_classes)
    if name == "resnet101":
        return resnet101_groupnorm(in_channels, image_size, num_classes)
    if name == "inception_v3":
        return InceptionV3(in_channels, image_size, num_classes)
    if name == "resnet20":
        return ResNetBN(in_channels, num_classes)
    raise ValueError(f"model={name!r} is not a vision model; choose one of: {', '.join(MODELS)}")


# --------------------------------------------------------------------------- blocks
def _cnn_blocks(model: SmallCNN) -> list[tuple[str, nn.Module]]:
    """One block per conv stage (conv, ReLU, and its pool if any), then the MLP head."""
    stages: list[list[nn.Module]] = []
    for layer in model.features:
        if isinstance(layer, nn.Conv2d):
            stages.append([])
        stages[-1].append(layer)
    blocks = [(f"stage{i}", nn.Sequential(*layers)) for i, layers in enumerate(stages)]
    return blocks + [("head", model.head)]


def _vit_blocks(model: SmallViT) -> list[tuple[str, nn.Module]]:
    """Patch embedding (with class token and positions), each encoder layer, norm + head."""
    layers = [(f"blocks.{i}", block) for i, block in enumerate(model.blocks)]
    return [("embed", ViTEmbed(model)), *layers, ("head", ViTHead(model))]


def _resnet_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """torchvision ResNet's forward cut at its stages: stem, layer1..4, pool + flatten + fc."""
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    head = nn.Sequential(model.avgpool, nn.Flatten(1), model.fc)  # = torch.flatten(x, 1)
    layers = [(name, getattr(model, name)) for name in ("layer1", "layer2", "layer3", "layer4")]
    return [("stem", stem), *layers, ("head", head)]


def _deep_resnet_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """A deep ResNet (101 layers) cut at every bottleneck, so 4 stages can be balanced."""
    stem, *layers, head = _resnet_blocks(model)
    bottlenecks = [(f"{name}.{i}", b) for name, layer in layers for i, b in enumerate(layer)]
    return [stem, *bottlenecks, head]


def _inception_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Inception-V3: the stem, each Mixed block, then pool + dropout + flatten + fc."""
    return [("stem", model.stem), *[(name, getattr(model, name)) for name in INCEPTION_MIXED], ("head", model.head)]


def vision_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The ordered blocks of one of our classifiers (see :meth:`VisionTask.model_blocks`)."""
    import torchvision

    if isinstance(model, SmallCNN):
        return _cnn_blocks(model)
    if isinstance(model, SmallViT):
        return _vit_blocks(model)
    if isinstance(model, torchvision.models.ResNet):
        return _deep_resnet_blocks(model) if sum(len(layer) for layer in (model.layer1, model.layer2, model.layer3,
                                                                  model.layer4)) > 8 else _resnet_blocks(model)
    if isinstance(model, InceptionV3):
        return _inception_blocks(model)
    if isinstance(model, ResNetBN):
        return [(name, getattr(model, name)) for name in ("stem", "layer1", "layer2", "layer3", "head")]
    raise TypeError(f"no block layout for vision model {type(model).__name__}; "
                    "known: SmallCNN, SmallViT, torchvision ResNet, InceptionV3, ResNetBN")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
