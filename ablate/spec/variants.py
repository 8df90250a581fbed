"""The variant family: one frozen, validated spec per network, its name, and the registry.

A spec is pure data. `ablate.models.build_model` turns it into an `nn.Module`; nothing here
imports torch, so studies can be read and validated without it.

The axes and their values are the study-file vocabulary (see README):

    connection  plain | residual      shortcuts removed or kept; nothing else changes
    activation  post | pre            He et al. 2016 unit, or full pre-activation (He et al. 2016b)
    block       basic | bottleneck    two 3x3 convs, or 1x1-3x3-1x1 with expansion 4
    depth       int                   weighted layers, as the papers count them
    shortcut    A | B | C             He et al. 2016 options (residual nets only)
    stem        cifar | imagenet      3x3 conv + 3 stages, or 7x7/2 conv + max-pool + 4 stages
    width       int                   base width (16 CIFAR, 64 ImageNet by default)
    blocks      ints, optional        explicit blocks per stage, overriding the depth rule
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ablate.spec.limits import BLOCKS_REASON, MAX_BLOCKS_PER_STAGE, MAX_WIDTH, WIDTH_REASON

CONNECTIONS = ("plain", "residual")
ACTIVATIONS = ("post", "pre")
BLOCKS = ("basic", "bottleneck")
SHORTCUTS = ("A", "B", "C")
STEMS = ("cifar", "imagenet")
AXES = ("connection", "activation", "block", "depth", "shortcut", "stem", "width", "blocks")

#: Weighted layers in one block (a stage of n blocks adds this many times n).
LAYERS_PER_BLOCK = {"basic": 2, "bottleneck": 3}
#: Bottleneck blocks output 4x their 3x3 width (He et al. 2016, Sec. 4.1).
EXPANSION = {"basic": 1, "bottleneck": 4}
#: Number of stages per stem: widths w, 2w, 4w (CIFAR) or w, 2w, 4w, 8w (ImageNet).
STAGES = {"cifar": 3, "imagenet": 4}
DEFAULT_WIDTH = {"cifar": 16, "imagenet": 64}


def default_shortcut(stem: str, block: str) -> str:
    """The papers' shortcut option: A for the basic CIFAR nets (He et al. 2016, Sec. 4.2); B (project
    only where the shape changes) on ImageNet (Table 3) and for the CIFAR bottleneck nets of
    He et al. 2016b, whose first unit widens 16 to 64 channels: zero-padding would leave three
    quarters of that shortcut empty. Pre-activation ResNet-164 then counts 1.70M parameters, as
    the paper's 1.7M (with option A it would be 1.66M).
    """
    return "A" if stem == "cifar" and block == "basic" else "B"

#: He et al. 2016, Table 1: blocks per stage of the ImageNet nets; ResNet-200 from He et al. 2016b.
IMAGENET_TABLE = {
    "basic": {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)},
    "bottleneck": {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)},
}


def _cifar_depths_near(block: str, depth: int, count: int = 2) -> list[int]:
    """Valid CIFAR-stem depths (6n+2 or 9n+2, n >= 1) nearest to `depth`."""
    step = 3 * LAYERS_PER_BLOCK[block]
    n = min(MAX_BLOCKS_PER_STAGE, max(1, (depth - 2 + step // 2) // step))  # integers: no float rounding of huge depths
    candidates = {step * k + 2 for k in range(max(1, n - 2), min(MAX_BLOCKS_PER_STAGE, n + 2) + 1)}
    return sorted(sorted(candidates, key=lambda d: (abs(d - depth), d))[:count])


def _choices(field: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{field}: {value!r} is not valid; use one of {', '.join(map(repr, valid))}")


@dataclass(frozen=True)
class VariantSpec:
    """One network of the family. Construct with keywords; invalid combinations raise ValueError.

    After construction every field is resolved: `width`, `shortcut` and `blocks` get their
    defaults, `depth` is derived from explicit `blocks`, and a plain net's `shortcut` is None
    (shortcut options only exist where there are shortcuts), so two specs describing the same
    network compare equal and grids dedupe by equality.
    """

    connection: str = "residual"
    activation: str = "post"
    block: str = "basic"
    depth: int | None = None
    shortcut: str | None = None
    stem: str = "cifar"
    width: int | None = None
    blocks: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        _choices("connection", self.connection, CONNECTIONS)
        _choices("activation", self.activation, ACTIVATIONS)
        _choices("block", self.block, BLOCKS)
        _choices("stem", self.stem, STEMS)
        if self.shortcut is not None:
            _choices("shortcut", self.shortcut, SHORTCUTS)
        set_("shortcut", None if self.connection == "plain" else self.shortcut or default_shortcut(self.stem, self.block))

        width = DEFAULT_WIDTH[self.stem] if self.width is None else self.width
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width: {self.width!r} is not valid; use a positive integer (default {DEFAULT_WIDTH[self.stem]})")
        if width > MAX_WIDTH:
            raise ValueError(f"width: {width} is too wide; use at most {MAX_WIDTH} ({WIDTH_REASON})")
        set_("width", width)

        stages = STAGES[self.stem]
        per_block = LAYERS_PER_BLOCK[self.block]
        if self.blocks is not None:
            blocks = self.blocks
            if isinstance(blocks, (str, bytes)) or not all(
                isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in blocks
            ) or len(tuple(blocks)) != stages:
                raise ValueError(
                    f"blocks: {blocks!r} is not valid; the {self.stem} stem has {stages} stages, "
                    f"so give {stages} positive integers, e.g. {list((2,) * stages)}"
                )
            blocks = tuple(blocks)
            if max(blocks) > MAX_BLOCKS_PER_STAGE:
                raise ValueError(f"blocks: {max(blocks)} blocks in one stage is too many; use at most {MAX_BLOCKS_PER_STAGE} per stage ({BLOCKS_REASON})")
            implied = per_block * sum(blocks) + 2
            if self.depth is not None and self.depth != implied:
                raise ValueError(
                    f"depth: {self.depth} disagrees with blocks={list(blocks)}, which give "
                    f"{per_block} x {sum(blocks)} + 2 = {implied} layers with {self.block} blocks; "
                    f"drop depth or set it to {implied}"
                )
            set_("depth", implied)
            set_("blocks", blocks)
            return
        if self.depth is None:
            raise ValueError("depth: missing; give the number of weighted layers (e.g. 20) or explicit blocks per stage")
        depth = self.depth
        if isinstance(depth, bool) or not isinstance(depth, int):
            raise ValueError(f"depth: {depth!r} is not valid; use an integer number of weighted layers")
        deepest = max_depth(self.stem, self.block)
        if depth > deepest:
            raise ValueError(
                f"depth: {depth} is too deep; a {self.block} {'CIFAR' if self.stem == 'cifar' else 'ImageNet'}-stem net "
                f"has at most {deepest} layers ({MAX_BLOCKS_PER_STAGE} blocks per stage: {BLOCKS_REASON})"
            )
        set_("blocks", _depth_rule(self.stem, self.block, depth))

    # Derived values are properties, never fields to keep in sync.
    @property
    def name(self) -> str:
        return variant_name(self)

    @property
    def stage_widths(self) -> tuple[int, ...]:
        """Width of the 3x3 convs of each stage (a bottleneck stage outputs 4x this)."""
        return tuple(self.width * 2**i for i in range(STAGES[self.stem]))

    @property
    def out_channels(self) -> int:
        return self.stage_widths[-1] * EXPANSION[self.block]

    def axes(self) -> dict[str, object]:
        """The spec as plain data (blocks as a list), e.g. for JSON or Optuna params."""
        d = asdict(self)
        d["blocks"] = list(self.blocks)
        return d


def max_depth(stem: str, block: str) -> int:
    """The deepest net the bounds allow: every stage at `MAX_BLOCKS_PER_STAGE` blocks."""
    return LAYERS_PER_BLOCK[block] * STAGES[stem] * MAX_BLOCKS_PER_STAGE + 2


def _depth_rule(stem: str, block: str, depth: int) -> tuple[int, ...]:
    """Blocks per stage for a depth: 6n+2 / 9n+2 on CIFAR, the papers' tables on ImageNet."""
    if stem == "cifar":
        step = 3 * LAYERS_PER_BLOCK[block]
        rule = "6n+2" if block == "basic" else "9n+2"
        if depth < step + 2 or (depth - 2) % step:
            near = ", ".join(map(str, _cifar_depths_near(block, depth)))
            raise ValueError(
                f"depth: {depth} is not valid for a {block} CIFAR-stem net, whose depth is {rule} "
                f"(three stages of n blocks, n >= 1); nearest valid depths: {near}"
            )
        return ((depth - 2) // step,) * 3
    table = IMAGENET_TABLE[block]
    if depth not in table:
        other = "bottleneck" if block == "basic" else "basic"
        hint = f" ({depth} is a {other} depth: set block = \"{other}\")" if depth in IMAGENET_TABLE[other] else ""
        raise ValueError(
            f"depth: {depth} is not valid for a {block} ImageNet-stem net{hint}; valid depths: "
            f"{', '.join(map(str, table))}; or give explicit blocks per stage"
        )
    return table[depth]


def default_block(stem: str, depth: int) -> str:
    """The block a bare depth means in the papers: used only to keep names short.

    ImageNet: bottleneck from ResNet-50 up (He et al. 2016, Table 1). CIFAR: basic, except the
    bottleneck nets of He et al. 2016b, which are 9n+2 deep and from 164 layers up (164, 1001).
    """
    if stem == "imagenet":
        return "bottleneck" if depth >= 50 else "basic"
    return "bottleneck" if depth >= 164 and (depth - 2) % 9 == 0 else "basic"


def default_stem(depth: int) -> str:
    """The stem a bare depth means: the ImageNet table depths, else CIFAR."""
    return "imagenet" if any(depth in t for t in IMAGENET_TABLE.values()) else "cifar"


def variant_name(spec: VariantSpec) -> str:
    """Short, stable, unique, readable: `resnet-56`, `plain-20`, `preact-resnet-164`, `resnet-50`.

    Axes that differ from what the bare depth means in the papers are appended, in a fixed order:
    block, stem, width (`-w8`), shortcut option (`-optB`), custom blocks (`-b2-2-2-2`).
    The name is a function of the spec alone, so it is the same in every study.
    """
    parts = ["preact"] if spec.activation == "pre" else []
    parts += [("plain" if spec.connection == "plain" else "resnet"), str(spec.depth)]
    if spec.block != default_block(spec.stem, spec.depth):
        parts.append(spec.block)
    if spec.stem != default_stem(spec.depth):
        parts.append(spec.stem)
    if spec.width != DEFAULT_WIDTH[spec.stem]:
        parts.append(f"w{spec.width}")
    if spec.shortcut is not None and spec.shortcut != default_shortcut(spec.stem, spec.block):
        parts.append(f"opt{spec.shortcut}")
    try:
        custom = _depth_rule(spec.stem, spec.block, spec.depth) != spec.blocks
    except ValueError:
        custom = True
    if custom:
        parts.append("b" + "-".join(map(str, spec.blocks)))
    return "-".join(parts)


def make_variant(axes: dict[str, object]) -> VariantSpec:
    """A spec from a mapping of axis names (e.g. a study-file table); unknown axes are an error."""
    unknown = sorted(set(axes) - set(AXES))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown axis; valid axes: {', '.join(AXES)}")
    kwargs = dict(axes)
    if "blocks" in kwargs and isinstance(kwargs["blocks"], list):
        kwargs["blocks"] = tuple(kwargs["blocks"])
    return VariantSpec(**kwargs)


def _registry() -> dict[str, VariantSpec]:
    specs = []
    for depth in (20, 32, 44, 56, 110, 1202):  # He et al. 2016, Table 6 and Figure 6
        specs.append(VariantSpec(connection="residual", depth=depth))
        specs.append(VariantSpec(connection="plain", depth=depth))
    # He et al. 2016b, Table 3 (110 basic) and Table 2/3 (164, 1001 bottleneck).
    specs.append(VariantSpec(activation="pre", depth=110))
    specs.append(VariantSpec(activation="pre", block="bottleneck", depth=164))
    specs.append(VariantSpec(activation="pre", block="bottleneck", depth=1001))
    for depth in (18, 34):
        specs.append(VariantSpec(stem="imagenet", depth=depth))
    for depth in (50, 101, 152):
        specs.append(VariantSpec(stem="imagenet", block="bottleneck", depth=depth))
    registry = {spec.name: spec for spec in specs}
    assert len(registry) == len(specs), "registered variant names must be unique"
    return registry


REGISTRY: dict[str, VariantSpec] = _registry()


def list_variants() -> list[str]:
    """Names of the reference variants, like torchvision's `list_models`."""
    return list(REGISTRY)


def get_variant(name: str) -> VariantSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"variant: unknown name {name!r}; registered: {', '.join(REGISTRY)}") from None


SPEC_FIELDS = tuple(f.name for f in fields(VariantSpec))
assert SPEC_FIELDS == AXES
