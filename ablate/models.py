"""One builder for the whole family: `build_model(spec, info)` -> `nn.Module`.

Every ablation axis is a table lookup or one branch, never a class per combination:

    connection  `Unit.shortcut is None` for plain nets, so `out + shortcut(x)` becomes `out`
    activation  post: conv-BN-ReLU ... BN, add, ReLU          (He et al. 2016, Fig. 2/5)
                pre:  BN-ReLU-conv ... conv, add (identity)  (He et al. 2016b, Fig. 1b/4e)
    block       the body's convs come from `_BODIES`
    shortcut    `_shortcut`: A zero-pad, B project on shape change, C project always
    stem        `_stem`; the stages and the head do not care which

The network is an `nn.Sequential` with children `stem`, `stage1` .. `stageN`, `head`, so code
that wants per-stage figures (gradient norms) finds the stages by name.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from ablate.data import DatasetInfo
from ablate.variants import EXPANSION, VariantSpec


class Unit(nn.Module):
    """One building unit: y = post(body(x) + shortcut(x)), or y = post(body(x)) without shortcut.

    For pre-activation units `preact` (BN-ReLU) comes first. Where the shortcut is not the
    identity (it projects or pads), it takes the pre-activated input, as in He et al. 2016b's
    code ("both_preact"); an identity shortcut carries x itself, keeping the path clean.
    """

    def __init__(self, body: nn.Module, shortcut: nn.Module | None, preact: nn.Module | None, post: nn.Module | None):
        super().__init__()
        self.preact = preact
        self.body = body
        self.shortcut = shortcut
        self.post = post
        self._split_after_preact = preact is not None and not isinstance(shortcut, (nn.Identity, type(None)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.preact is None else self.preact(x)
        out = self.body(h)
        if self.shortcut is not None:
            out = out + self.shortcut(h if self._split_after_preact else x)
        return out if self.post is None else self.post(out)


class PadShortcut(nn.Module):
    """Option A: identity, subsampled by the stride, with zero channels appended (no parameters)."""

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels)) if self.extra_channels else x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


def _bn_relu(c: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True))


def _basic_body(cin: int, width: int, stride: int, pre: bool, stride_on: str) -> list[nn.Module]:
    layers = [_conv(cin, width, 3, stride), *_bn_relu(width), _conv(width, width, 3)]
    return layers if pre else [*layers, nn.BatchNorm2d(width)]


#: Where a downsampling bottleneck unit puts its stride, by stem. CIFAR: on the first 1x1 conv, as
#: He et al.'s own CIFAR code does (resnet-1k-layers, for ResNet-164 and -1001); the 3x3 then runs
#: at the lower resolution, so MACs differ from the other placement (preact-resnet-164: ~1.3%).
#: ImageNet: on the 3x3 conv, as torchvision does ("ResNet V1.5"), so ResNet-50.. match it tensor
#: for tensor; the 2016 paper's own ImageNet nets had it on the 1x1 as well.
BOTTLENECK_STRIDE_ON = {"cifar": "1x1", "imagenet": "3x3"}


def _bottleneck_body(cin: int, width: int, stride: int, pre: bool, stride_on: str) -> list[nn.Module]:
    out = width * EXPANSION["bottleneck"]
    s1, s3 = (stride, 1) if stride_on == "1x1" else (1, stride)
    layers = [
        _conv(cin, width, 1, s1), *_bn_relu(width),
        _conv(width, width, 3, s3), *_bn_relu(width),
        _conv(width, out, 1),
    ]
    return layers if pre else [*layers, nn.BatchNorm2d(out)]


_BODIES = {"basic": _basic_body, "bottleneck": _bottleneck_body}


def _shortcut(spec: VariantSpec, cin: int, cout: int, stride: int) -> nn.Module | None:
    if spec.connection == "plain":
        return None
    changes_shape = stride != 1 or cin != cout
    if spec.shortcut == "C" or (spec.shortcut == "B" and changes_shape):
        proj = _conv(cin, cout, 1, stride)
        # Post-activation projections are conv-BN (torchvision's `downsample`); pre-activation
        # ones are a bare conv, since their input is already normalised (He et al. 2016b code).
        return proj if spec.activation == "pre" else nn.Sequential(proj, nn.BatchNorm2d(cout))
    if changes_shape:  # option A
        return PadShortcut(stride, cout - cin)
    return nn.Identity()


def _unit(spec: VariantSpec, cin: int, width: int, stride: int) -> Unit:
    pre = spec.activation == "pre"
    cout = width * EXPANSION[spec.block]
    body = nn.Sequential(*_BODIES[spec.block](cin, width, stride, pre, BOTTLENECK_STRIDE_ON[spec.stem]))
    return Unit(
        body=body,
        shortcut=_shortcut(spec, cin, cout, stride),
        preact=_bn_relu(cin) if pre else None,
        post=None if pre else nn.ReLU(inplace=True),
    )


def _stage(spec: VariantSpec, cin: int, width: int, count: int, stride: int) -> tuple[nn.Sequential, int]:
    """A free function (no `self.inplanes` to mutate): returns the stage and its output width."""
    units = []
    for i in range(count):
        units.append(_unit(spec, cin, width, stride if i == 0 else 1))
        cin = width * EXPANSION[spec.block]
    return nn.Sequential(*units), cin


def _stem(spec: VariantSpec, in_channels: int) -> nn.Sequential:
    w = spec.width
    # Pre-activation stems end at the conv (plus max-pool): every unit starts with its own BN-ReLU
    # (He et al. 2016b; timm's ResNetV2 does the same on ImageNet).
    act = [] if spec.activation == "pre" else [*_bn_relu(w)]
    if spec.stem == "cifar":
        return nn.Sequential(_conv(in_channels, w, 3), *act)
    return nn.Sequential(
        nn.Conv2d(in_channels, w, 7, stride=2, padding=3, bias=False), *act,
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )


def _init(model: nn.Module) -> None:
    # "msra" initialisation, as He et al. (and torchvision) use.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_model(spec: VariantSpec, info: DatasetInfo) -> nn.Sequential:
    """The network of `spec` for a dataset's input channels and classes."""
    parts: OrderedDict[str, nn.Module] = OrderedDict(stem=_stem(spec, info.channels))
    cin = spec.width
    for i, (width, count) in enumerate(zip(spec.stage_widths, spec.blocks)):
        parts[f"stage{i + 1}"], cin = _stage(spec, cin, width, count, stride=1 if i == 0 else 2)
    final = [*_bn_relu(cin)] if spec.activation == "pre" else []  # He et al. 2016b: BN-ReLU before pooling
    parts["head"] = nn.Sequential(*final, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, info.classes))
    model = nn.Sequential(parts)
    _init(model)
    return model


def stages(model: nn.Module) -> dict[str, nn.Module]:
    """The named stages of a built model: `stem`, `stage1`.. and `head`, in order."""
    return dict(model.named_children())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: nn.Module, info: DatasetInfo) -> int:
    """Multiply-accumulates of convolutions and linear layers for one image (the papers' "FLOPs").

    Counted from the layer shapes seen in one forward pass on the meta device (no memory, no
    arithmetic), so it costs the same for ResNet-1202 as for ResNet-20.
    """
    if next(model.parameters()).device.type != "meta":
        model = copy.deepcopy(model).to("meta")  # never move the caller's model
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    # In eval mode: BatchNorm in training mode refuses one value per channel, which is what an
    # ImageNet stem leaves of a 28 or 32 px image by its last stage at batch 1 (and eval mode skips
    # the batch statistics, which made counting several times slower).
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.empty(1, info.channels, info.size, info.size, device="meta"))
    finally:
        model.train(training)
        for h in handles:
            h.remove()
    return total


@lru_cache(maxsize=4096)
def measure(spec: VariantSpec, info: DatasetInfo) -> tuple[int, int]:
    """(trainable parameters, MACs per image) of a variant on a dataset, without allocating it."""
    with torch.device("meta"):
        model = build_model(spec, info)
    return count_params(model), count_macs(model, info)
