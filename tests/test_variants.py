"""The variant family: specs, names, the registry, the builder, parameter and MAC counts."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ablate.engine.data import DATASETS
from ablate.engine.models import PadShortcut, Unit, build_model, count_macs, count_params, measure
from ablate.spec.variants import AXES, REGISTRY, VariantSpec, get_variant, list_variants, make_variant

CIFAR = DATASETS["cifar10"]
IMAGENET = dataclasses.replace(CIFAR, name="imagenet", size=224, classes=1000)


def info_for(spec: VariantSpec):
    return IMAGENET if spec.stem == "imagenet" else CIFAR


# ---------------------------------------------------------------- specs and validation


def test_defaults_are_resolved():
    spec = VariantSpec(depth=20)
    assert (spec.connection, spec.activation, spec.block, spec.shortcut, spec.stem, spec.width) == (
        "residual", "post", "basic", "A", "cifar", 16,
    )
    assert spec.blocks == (3, 3, 3)
    assert VariantSpec(stem="imagenet", depth=18).width == 64
    assert VariantSpec(stem="imagenet", depth=18).shortcut == "B"


def test_spec_is_frozen_and_hashable():
    spec = VariantSpec(depth=56)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.depth = 20  # type: ignore[misc]
    assert len({spec, VariantSpec(depth=56), VariantSpec(depth=56, blocks=(9, 9, 9))}) == 1


def test_plain_nets_ignore_shortcut_options():
    nets = {VariantSpec(connection="plain", depth=20, shortcut=s) for s in "ABC"}
    assert len(nets) == 1 and next(iter(nets)).shortcut is None


@pytest.mark.parametrize(
    "kwargs, field, hint",
    [
        (dict(depth=21), "depth", "nearest valid depths: 20, 26"),
        (dict(depth=21, block="bottleneck"), "depth", "nearest valid depths: 20, 29"),
        (dict(depth=2), "depth", "nearest valid depths: 8, 14"),
        (dict(depth=34, stem="imagenet", block="bottleneck"), "depth", "valid depths: 50, 101, 152, 200"),
        (dict(depth=20, stem="imagenet"), "depth", "valid depths: 18, 34"),
        (dict(depth=20, width=0), "width", "positive integer"),
        (dict(depth=20, width=-3), "width", "positive integer"),
        (dict(depth=20, connection="skip"), "connection", "'plain', 'residual'"),
        (dict(depth=20, activation="mid"), "activation", "'post', 'pre'"),
        (dict(depth=20, block="wide"), "block", "'basic', 'bottleneck'"),
        (dict(depth=20, shortcut="D"), "shortcut", "'A', 'B', 'C'"),
        (dict(depth=20, stem="vgg"), "stem", "'cifar', 'imagenet'"),
        (dict(depth="20"), "depth", "integer"),
        (dict(), "depth", "missing"),
        (dict(blocks=(1, 2)), "blocks", "give 3 positive integers"),
        (dict(blocks=(1, 0, 1)), "blocks", "give 3 positive integers"),
        (dict(depth=20, blocks=(1, 1, 1)), "depth", "set it to 8"),
    ],
)
def test_impossible_combinations_name_the_field_and_the_fix(kwargs, field, hint):
    with pytest.raises(ValueError) as info:
        VariantSpec(**kwargs)
    message = str(info.value)
    assert message.startswith(f"{field}:"), message
    assert hint in message, message


def test_unknown_axis_is_rejected():
    with pytest.raises(ValueError, match=r"^colour: unknown axis; valid axes: connection"):
        make_variant({"depth": 20, "colour": "red"})


def test_explicit_blocks_define_depth():
    spec = VariantSpec(stem="imagenet", block="bottleneck", blocks=(2, 2, 2, 2))
    assert spec.depth == 26
    assert spec.name == "resnet-26-bottleneck-imagenet-b2-2-2-2"
    assert VariantSpec(blocks=(1, 2, 3)).depth == 2 * 6 + 2


# ---------------------------------------------------------------- names and registry


def test_registry_names():
    expected = {
        *(f"resnet-{d}" for d in (20, 32, 44, 56, 110, 1202)),
        *(f"plain-{d}" for d in (20, 32, 44, 56, 110, 1202)),
        "preact-resnet-110", "preact-resnet-164", "preact-resnet-1001",
        *(f"resnet-{d}" for d in (18, 34, 50, 101, 152)),
    }
    assert set(list_variants()) == expected
    for name in list_variants():
        assert get_variant(name).name == name
    with pytest.raises(ValueError, match="unknown name 'resnet-19'"):
        get_variant("resnet-19")


def test_names_are_unique_over_a_large_grid():
    grid = itertools.product(("plain", "residual"), ("post", "pre"), ("basic", "bottleneck"),
                             (8, 11, 20, 29, 56, 110, 164, 1001, 18, 50), "ABC", ("cifar", "imagenet"), (8, 16, 64))
    specs = set()
    for c, a, b, d, s, st, w in grid:
        try:
            specs.add(VariantSpec(connection=c, activation=a, block=b, depth=d, shortcut=s, stem=st, width=w))
        except ValueError:
            pass
    names = {spec.name for spec in specs}
    assert len(specs) > 200
    assert len(names) == len(specs)


def test_names_read_like_the_papers():
    assert VariantSpec(connection="plain", depth=20).name == "plain-20"
    assert VariantSpec(activation="pre", block="bottleneck", depth=164).name == "preact-resnet-164"
    assert VariantSpec(activation="pre", block="basic", depth=164).name == "preact-resnet-164-basic"
    assert VariantSpec(block="bottleneck", depth=56).name == "resnet-56-bottleneck"
    assert VariantSpec(depth=56, shortcut="B").name == "resnet-56-optB"
    assert VariantSpec(connection="plain", depth=8, width=8).name == "plain-8-w8"
    assert VariantSpec(depth=50).name == "resnet-50-cifar"


# ---------------------------------------------------------------- parameter and MAC counts


@pytest.mark.parametrize(
    "name, millions",
    # He et al. 2016, Table 6 (to the paper's rounding).
    [("resnet-20", 0.27), ("resnet-32", 0.46), ("resnet-44", 0.66), ("resnet-56", 0.85),
     ("resnet-110", 1.7), ("resnet-1202", 19.4), ("preact-resnet-164", 1.7)],
)
def test_params_match_the_papers(name, millions):
    params, _ = measure(get_variant(name), CIFAR)
    digits = 2 if millions < 1 else 1
    assert round(params / 1e6, digits) == millions


def test_preact_1001_params():
    # He et al. 2016b print 10.2M. No shortcut option reproduces that exactly: projection (B,
    # used here, as for ResNet-164) gives 10.33M and zero-padding (A) 10.29M. Within 1.5%.
    params, _ = measure(get_variant("preact-resnet-1001"), CIFAR)
    assert params == 10_327_706
    assert abs(params / 10.2e6 - 1) < 0.015


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110, 1202])
def test_plain_twins_count_the_same_as_option_a(depth):
    assert measure(get_variant(f"plain-{depth}"), CIFAR) == measure(get_variant(f"resnet-{depth}"), CIFAR)


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
@pytest.mark.parametrize("classes", [1000, 10])
def test_imagenet_nets_match_torchvision(depth, classes):
    ours = build_model(get_variant(f"resnet-{depth}"), dataclasses.replace(IMAGENET, classes=classes))
    theirs = getattr(torchvision.models, f"resnet{depth}")(num_classes=classes)
    assert count_params(ours) == count_params(theirs)
    # Parameter for parameter: the same tensor shapes in the same order.
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in theirs.parameters()]


@pytest.mark.parametrize(
    "name, size, giga",
    [("resnet-20", 32, 0.0406), ("resnet-56", 32, 0.1255), ("resnet-110", 32, 0.2529), ("resnet-18", 224, 1.82)],
)
def test_macs_match_the_reference_figures(name, size, giga):
    info = dataclasses.replace(info_for(get_variant(name)), size=size)
    _, macs = measure(get_variant(name), info)
    assert abs(macs / 1e9 - giga) / giga < 0.005


def test_cifar_bottleneck_strides_on_its_first_1x1_as_he_et_al_code_does():
    # resnet-1k-layers (He et al. 2016b's code) strides the first 1x1 conv of a downsampling
    # bottleneck unit; torchvision's ImageNet nets (ResNet V1.5) stride the 3x3.
    def first_unit_convs(model):
        return [m for m in model.stage2[0].body if isinstance(m, nn.Conv2d)]

    cifar = first_unit_convs(build_model(get_variant("preact-resnet-164"), CIFAR))
    assert [(c.kernel_size[0], c.stride[0]) for c in cifar] == [(1, 2), (3, 1), (1, 1)]
    imagenet = first_unit_convs(build_model(get_variant("resnet-50"), IMAGENET))
    assert [(c.kernel_size[0], c.stride[0]) for c in imagenet] == [(1, 1), (3, 2), (1, 1)]
    # The placement changes the MACs (the 3x3 runs at the lower resolution): 244.5M, not 248.0M.
    assert measure(get_variant("preact-resnet-164"), CIFAR)[1] == 244_500_992


def flop_counter_macs(model: nn.Module, info) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, info.channels, info.size, info.size, device="meta"))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("name", list_variants())
def test_macs_agree_with_torch_flop_counter(name):
    spec = get_variant(name)
    info = info_for(spec)
    with torch.device("meta"):
        model = build_model(spec, info)
    assert count_macs(model, info) == flop_counter_macs(model, info)


def test_count_macs_leaves_the_model_where_it_was():
    model = build_model(VariantSpec(depth=8, width=4), CIFAR)
    count_macs(model, CIFAR)
    assert next(model.parameters()).device.type == "cpu"


# ---------------------------------------------------------------- structure


def units(model: nn.Module) -> list[Unit]:
    return [m for m in model.modules() if isinstance(m, Unit)]


def check_structure(spec: VariantSpec, model: nn.Module) -> None:
    children = [name for name, _ in model.named_children()]
    assert children == ["stem", *(f"stage{i + 1}" for i in range(len(spec.blocks))), "head"]
    assert [len(getattr(model, f"stage{i + 1}")) for i in range(len(spec.blocks))] == list(spec.blocks)
    us = units(model)
    assert len(us) == sum(spec.blocks)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    projections = [m for u in us if u.shortcut is not None for m in u.shortcut.modules() if isinstance(m, nn.Conv2d)]
    # Weighted layers as the papers count them: the convs on the main path plus the classifier.
    assert len(convs) - len(projections) + len(linears) == spec.depth
    for u in us:
        if spec.connection == "plain":
            assert u.shortcut is None  # no shortcut path at all
        elif spec.shortcut == "C":
            assert any(isinstance(m, nn.Conv2d) for m in u.shortcut.modules())
        else:
            assert isinstance(u.shortcut, (nn.Identity, PadShortcut, nn.Sequential, nn.Conv2d))
            if spec.shortcut == "A":
                assert not any(True for _ in u.shortcut.parameters())
        if spec.activation == "pre":
            assert isinstance(u.preact[0], nn.BatchNorm2d)  # each unit starts with BN ...
            assert isinstance(u.preact[1], nn.ReLU)
            assert isinstance(u.body[0], nn.Conv2d)
            assert not isinstance(u.body[-1], (nn.BatchNorm2d, nn.ReLU))  # ... and ends with a conv
            assert u.post is None  # identity after the addition
        else:
            assert u.preact is None
            assert isinstance(u.body[0], nn.Conv2d) and isinstance(u.body[-1], nn.BatchNorm2d)
            assert isinstance(u.post, nn.ReLU)  # add, then ReLU
    head = list(model.head)
    if spec.activation == "pre":
        assert isinstance(head[0], nn.BatchNorm2d) and isinstance(head[1], nn.ReLU)  # final BN-ReLU
    else:
        assert isinstance(head[0], nn.AdaptiveAvgPool2d)


def forward_backward(spec: VariantSpec, info, batch: int = 2, dtype: torch.dtype = torch.float32) -> None:
    torch.manual_seed(0)
    model = build_model(spec, info).to(dtype)
    check_structure(spec, model)
    x = torch.randn(batch, info.channels, info.size, info.size, dtype=dtype)
    out = model(x)
    assert out.shape == (batch, info.classes)
    assert torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


@pytest.mark.parametrize("name", list_variants())
def test_every_registered_variant_builds_runs_and_backpropagates(name):
    spec = get_variant(name)
    # Small inputs keep this fast; the structure does not depend on the resolution.
    info = dataclasses.replace(info_for(spec), size=32 if spec.stem == "imagenet" else 16)
    # Plain-1202's gradients at initialisation reach ~1e88 (see the next test): beyond float32,
    # so its backward pass is checked in float64.
    forward_backward(spec, info, dtype=torch.float64 if name == "plain-1202" else torch.float32)


def stage_grad_norms(name: str) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(get_variant(name), dataclasses.replace(CIFAR, size=16)).double()
    model(torch.randn(2, 3, 16, 16, dtype=torch.float64)).logsumexp(1).mean().backward()
    return {stage: torch.sqrt(sum((p.grad**2).sum() for p in m.parameters())).item() for stage, m in model.named_children()}


def test_gradients_explode_through_deep_plain_nets_but_not_residual_ones():
    # The diagnostic the reports plot: at initialisation, the gradient reaching the first stage of
    # a plain BN net grows geometrically with depth; shortcuts keep it within a few powers of ten.
    plain, residual = stage_grad_norms("plain-1202"), stage_grad_norms("resnet-1202")
    assert plain["stem"] / plain["head"] > 1e50
    assert plain["stem"] > torch.finfo(torch.float32).max  # why float32 cannot hold them
    assert residual["stem"] / residual["head"] < 1e3


SAMPLE = [
    dict(connection=c, activation=a, block=b, shortcut=s, stem=st, depth=d, width=w)
    for c, a, (b, st, d), s, w in itertools.product(
        ("plain", "residual"), ("post", "pre"),
        (("basic", "cifar", 8), ("bottleneck", "cifar", 11), ("basic", "imagenet", 18), ("bottleneck", "imagenet", 50)),
        "ABC", (4,),
    )
]


@pytest.mark.parametrize("axes", SAMPLE, ids=lambda a: "-".join(str(v) for v in a.values()))
@pytest.mark.parametrize("dataset", ["fashion-mnist", "cifar100"])
def test_axis_combinations_build_and_train_a_step(axes, dataset):
    forward_backward(VariantSpec(**axes), DATASETS[dataset])


def test_plain_net_is_the_residual_net_without_shortcuts():
    info = DATASETS["fashion-mnist"]
    plain = build_model(VariantSpec(connection="plain", depth=20, width=4), info)
    residual = build_model(VariantSpec(connection="residual", depth=20, width=4), info)
    assert [(n, p.shape) for n, p in plain.named_parameters()] == [(n, p.shape) for n, p in residual.named_parameters()]
    # Same weights: the outputs differ only by the shortcut additions.
    residual.load_state_dict(plain.state_dict())
    x = torch.randn(3, 1, 28, 28)
    plain.eval(), residual.eval()
    assert not torch.allclose(plain(x), residual(x))
    for u in units(residual):
        u.shortcut = None
    assert torch.allclose(plain(x), residual(x))


def test_option_a_shortcut_pads_and_subsamples():
    pad = PadShortcut(stride=2, extra_channels=3)
    x = torch.arange(2 * 2 * 4 * 4, dtype=torch.float32).reshape(2, 2, 4, 4)
    y = pad(x)
    assert y.shape == (2, 5, 2, 2)
    assert torch.equal(y[:, :2], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 2:]) == 0


def test_option_b_projects_only_where_the_shape_changes():
    model = build_model(VariantSpec(depth=20, shortcut="B"), CIFAR)
    kinds = [type(u.shortcut).__name__ for u in units(model)]
    assert kinds == ["Identity"] * 3 + ["Sequential"] + ["Identity"] * 2 + ["Sequential"] + ["Identity"] * 2


def test_axes_are_the_study_vocabulary():
    assert set(VariantSpec(depth=20).axes()) == set(AXES)


# ---------------------------------------------------------------- every variant on every dataset


@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("name", [n for n in list_variants() if REGISTRY[n].stem == "imagenet"])
def test_imagenet_stem_nets_are_measured_at_every_datasets_resolution(name, dataset):
    """At 28 or 32 px an ImageNet stem leaves a 1x1 map by the last stage: MACs are counted in eval
    mode (BatchNorm in training mode refuses one value per channel at batch 1), and agree with
    torch's flop counter there too. CIFAR-stem nets never go below 4x4 on these datasets."""
    spec, info = get_variant(name), DATASETS[dataset]
    params, macs = measure(spec, info)
    with torch.device("meta"):
        model = build_model(spec, info)
    assert count_macs(model, info) == macs and count_params(model) == params
    assert model.training  # counting leaves the caller's model in the mode it was in
    assert macs == flop_counter_macs(model.eval(), info)


def test_ablate_variants_lists_resnet18_on_cifar10_and_fashion_mnist(tmp_path):
    from typer.testing import CliRunner

    from ablate.cli import app

    for dataset in ("cifar10", "fashion-mnist"):
        path = tmp_path / f"{dataset}.toml"
        path.write_text(f'name = "r18"\ndataset = "{dataset}"\n[fixed]\nstem = "imagenet"\n[grid]\ndepth = [18, 34]\n')
        result = CliRunner().invoke(app, ["variants", str(path), "--json"])
        assert result.exit_code == 0, result.output
        assert [r["name"] for r in json.loads(result.stdout)] == ["resnet-18", "resnet-34"]
