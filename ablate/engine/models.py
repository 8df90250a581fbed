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

Horizontal fusion (Wang et al., "Horizontally Fused Training Array", MLSys 2021): `runs=K` builds
K copies of the network side by side as one, from the same functions. Every convolution is a
grouped convolution with K groups, batch norm runs over K*C channels, the head is a batched
matmul (`GroupedLinear`) and option A pads inside each run's channel slice. Run k owns channel
slice k of every tensor, so the runs never mix: each run's parameters are slice k along dim 0 of
every parameter (`fuse_states` / `split_state`), and its input is slice k of the channel axis.
With K = 1 every layer is the ordinary one.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from ablate.engine.data import DatasetInfo
from ablate.spec.variants import EXPANSION, VariantSpec


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
    """Option A: identity, subsampled by the stride, with zero channels appended (no parameters).
    Fused (`runs` > 1), each run's channel slice gets its own zero channels."""

    def __init__(self, stride: int, extra_channels: int, runs: int = 1):
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels
        self.runs = runs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if not self.extra_channels:
            return x
        if self.runs == 1:
            return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        n, c, h, w = x.shape
        padded = F.pad(x.reshape(n, self.runs, c // self.runs, h, w), (0, 0, 0, 0, 0, self.extra_channels))
        return padded.reshape(n, -1, h, w)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}" + (f", runs={self.runs}" if self.runs > 1 else "")


class GroupedLinear(nn.Linear):
    """The head's linear layer for `groups` fused runs: input [N, groups * in], output
    [N, groups * out], run g's rows of the weight ([groups * out, in]) applied to its input slice.
    With one group it is `nn.Linear` itself, state dict and initialisation included."""

    def __init__(self, in_features: int, out_features: int, groups: int = 1):
        super().__init__(in_features, out_features * groups)  # weight [groups * out, in]: fan-in per run
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:
            return F.linear(x, self.weight, self.bias)
        g, n = self.groups, x.shape[0]
        w = self.weight.view(g, -1, self.in_features)  # [g, out, in]
        # One batched matmul: [g, N, in] @ [g, in, out] + bias -> [g, N, out] -> [N, g * out]
        y = torch.baddbmm(self.bias.view(g, 1, -1), x.view(n, g, -1).transpose(0, 1), w.transpose(1, 2))
        return y.transpose(0, 1).reshape(n, -1)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", groups={self.groups}" if self.groups > 1 else "")


# Channel counts below are per run; `runs` multiplies them (grouped convs, wider batch norm).


def _conv(cin: int, cout: int, k: int, stride: int = 1, runs: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin * runs, cout * runs, k, stride=stride, padding=k // 2, bias=False, groups=runs)


def _bn(c: int, runs: int = 1) -> nn.BatchNorm2d:
    # Per-channel statistics: over K*C channels each run's channels see only that run's batch.
    return nn.BatchNorm2d(c * runs)


def _bn_relu(c: int, runs: int = 1) -> nn.Sequential:
    return nn.Sequential(_bn(c, runs), nn.ReLU(inplace=True))


def _basic_body(cin: int, width: int, stride: int, pre: bool, stride_on: str, runs: int) -> list[nn.Module]:
    layers = [_conv(cin, width, 3, stride, runs), *_bn_relu(width, runs), _conv(width, width, 3, runs=runs)]
    return layers if pre else [*layers, _bn(width, runs)]


#: Where a downsampling bottleneck unit puts its stride, by stem. CIFAR: on the first 1x1 conv, as
#: He et al.'s own CIFAR code does (resnet-1k-layers, for ResNet-164 and -1001); the 3x3 then runs
#: at the lower resolution, so MACs differ from the other placement (preact-resnet-164: ~1.3%).
#: ImageNet: on the 3x3 conv, as torchvision does ("ResNet V1.5"), so ResNet-50.. match it tensor
#: for tensor; the 2016 paper's own ImageNet nets had it on the 1x1 as well.
BOTTLENECK_STRIDE_ON = {"cifar": "1x1", "imagenet": "3x3"}


def _bottleneck_body(cin: int, width: int, stride: int, pre: bool, stride_on: str, runs: int) -> list[nn.Module]:
    out = width * EXPANSION["bottleneck"]
    s1, s3 = (stride, 1) if stride_on == "1x1" else (1, stride)
    layers = [
        _conv(cin, width, 1, s1, runs), *_bn_relu(width, runs),
        _conv(width, width, 3, s3, runs), *_bn_relu(width, runs),
        _conv(width, out, 1, runs=runs),
    ]
    return layers if pre else [*layers, _bn(out, runs)]


_BODIES = {"basic": _basic_body, "bottleneck": _bottleneck_body}


def _shortcut(spec: VariantSpec, cin: int, cout: int, stride: int, runs: int) -> nn.Module | None:
    if spec.connection == "plain":
        return None
    changes_shape = stride != 1 or cin != cout
    if spec.shortcut == "C" or (spec.shortcut == "B" and changes_shape):
        proj = _conv(cin, cout, 1, stride, runs)
        # Post-activation projections are conv-BN (torchvision's `downsample`); pre-activation
        # ones are a bare conv, since their input is already normalised (He et al. 2016b code).
        return proj if spec.activation == "pre" else nn.Sequential(proj, _bn(cout, runs))
    if changes_shape:  # option A
        return PadShortcut(stride, cout - cin, runs)
    return nn.Identity()


def _unit(spec: VariantSpec, cin: int, width: int, stride: int, runs: int) -> Unit:
    pre = spec.activation == "pre"
    cout = width * EXPANSION[spec.block]
    body = nn.Sequential(*_BODIES[spec.block](cin, width, stride, pre, BOTTLENECK_STRIDE_ON[spec.stem], runs))
    return Unit(
        body=body,
        shortcut=_shortcut(spec, cin, cout, stride, runs),
        preact=_bn_relu(cin, runs) if pre else None,
        post=None if pre else nn.ReLU(inplace=True),
    )


def _stage(spec: VariantSpec, cin: int, width: int, count: int, stride: int, runs: int) -> tuple[nn.Sequential, int]:
    """A free function (no `self.inplanes` to mutate): returns the stage and its output width."""
    units = []
    for i in range(count):
        units.append(_unit(spec, cin, width, stride if i == 0 else 1, runs))
        cin = width * EXPANSION[spec.block]
    return nn.Sequential(*units), cin


def _stem(spec: VariantSpec, in_channels: int, runs: int) -> nn.Sequential:
    w = spec.width
    # Pre-activation stems end at the conv (plus max-pool): every unit starts with its own BN-ReLU
    # (He et al. 2016b; timm's ResNetV2 does the same on ImageNet).
    act = [] if spec.activation == "pre" else [*_bn_relu(w, runs)]
    if spec.stem == "cifar":
        return nn.Sequential(_conv(in_channels, w, 3, runs=runs), *act)
    return nn.Sequential(
        nn.Conv2d(in_channels * runs, w * runs, 7, stride=2, padding=3, bias=False, groups=runs), *act,
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )


def _init(model: nn.Module) -> None:
    # "msra" initialisation, as He et al. (and torchvision) use.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.groups > 1:  # torch counts the fan-out of all groups; a run's is 1/groups of it
                with torch.no_grad():
                    m.weight.mul_(math.sqrt(m.groups))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_model(spec: VariantSpec, info: DatasetInfo, runs: int = 1) -> nn.Sequential:
    """The network of `spec` for a dataset's input channels and classes.

    `runs` > 1 fuses that many copies into one network (the module docstring): input
    [N, runs * channels, H, W], output [N, runs * classes]. Its initial weights are drawn as one
    network's; to start each run from its own seed, build the runs alone and `fuse_states` them.
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs: {runs!r} is not valid; use an integer >= 1")
    parts: OrderedDict[str, nn.Module] = OrderedDict(stem=_stem(spec, info.channels, runs))
    cin = spec.width
    for i, (width, count) in enumerate(zip(spec.stage_widths, spec.blocks)):
        parts[f"stage{i + 1}"], cin = _stage(spec, cin, width, count, 1 if i == 0 else 2, runs)
    final = [*_bn_relu(cin, runs)] if spec.activation == "pre" else []  # He et al. 2016b: BN-ReLU before pooling
    parts["head"] = nn.Sequential(*final, nn.AdaptiveAvgPool2d(1), nn.Flatten(), GroupedLinear(cin, info.classes, runs))
    model = nn.Sequential(parts)
    _init(model)
    return model


def fuse_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The state dict of the fused network of `len(states)` runs from each run's own
    (`build_model(spec, info).state_dict()`): every tensor is the runs' tensors stacked along
    dim 0. Scalars (BatchNorm's step counters, equal in runs trained together) are the first's."""
    first = states[0]
    return {k: torch.cat([s[k] for s in states]) if v.dim() else v.clone() for k, v in first.items()}


def split_state(state: dict[str, torch.Tensor], runs: int) -> list[dict[str, torch.Tensor]]:
    """Each run's ordinary `build_model` state dict from a fused network's: the inverse of `fuse_states`."""
    return [{k: v.chunk(runs)[i].clone() if v.dim() else v.clone() for k, v in state.items()} for i in range(runs)]


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
