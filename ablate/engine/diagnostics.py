"""Why deep plain nets fail: measurements of a network at initialisation and after training.

Each follows its paper; every result is plain JSON (lists and floats), stored with the trial.

At initialisation (`at_init`), on the network the training starts from (the seed and
`build_model` reproduce it exactly, as `ablate.engine.train` builds it):

    layers     per conv/linear layer, the L2 norm of the gradient of the cross-entropy on real
               images, batch norm in training mode (Yang et al., ICLR 2019: batch norm makes a
               plain net's gradients explode with depth at initialisation)
    blocks     signal propagation per block (Brock et al., ICLR 2021; timm's `extract_spp_stats`):
               the average squared channel mean and the average channel variance of each block's
               output, and the variance of its residual branch (the body; a plain block's whole path)
    shattered  shattered gradients (Balduzzi et al., ICML 2017): along lines of inputs between two
               real images, the gradient of one logit w.r.t. the input; its correlation against lag,
               and the lag where it falls below 0.5. Batch norm runs in eval mode, with running
               statistics measured first on real images (a batch of near-identical points would
               corrupt statistics taken in training mode)

After training (`after_training`), on the final weights:

    lesion     each block whose input and output shapes match is removed in turn (its output
               becomes its input; Veit et al., NeurIPS 2016), nothing retrained, batch-norm
               statistics as they are; the test error each time. A plain block is lesioned the same
               way: the identity replaces it
    landscape  the loss along a filter-normalised random direction around the final weights, batch
               norm in eval mode (Li et al., NeurIPS 2018), in 1-D or 2-D; and the loss along the
               straight line from the initial to the final weights, batch-norm running statistics
               interpolated too (Goodfellow et al., ICLR 2015)

Everything runs in fp32 on the training device, in chunks, from a generator seeded by the run's seed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ablate.engine.data import Split, Splits, normalize
from ablate.engine.models import Unit, build_model
from ablate.spec.diagnostics import Diagnostics
from ablate.spec.recipe import Recipe
from ablate.spec.variants import VariantSpec

__all__ = ["at_init", "after_training", "layer_grad_norms", "signal_propagation", "shattered_gradients",
           "gradient_autocorrelation", "line_gradients", "lesion", "lesionable_blocks", "filter_normalized_direction", "landscape_1d",
           "landscape_2d", "interpolation", "loss_of", "error_of", "calibrate_bn", "LINE_POINTS", "ALPHAS_1D", "ALPHAS_2D",
           "INTERPOLATION"]

#: Inputs per line of the shattered-gradient measurement (Balduzzi et al. use 256 on a 1-D input);
#: `images` inputs make images // LINE_POINTS lines, each between two real images.
LINE_POINTS = 128
#: Li et al. 2018 plot [-1, 1] (51 points); 7 points in thirds (0 among them, exactly) keep the 1-D
#: slice cheap enough for the quick study (docs/benchmarks.md, "Diagnostics").
ALPHAS_1D = tuple(i / 3 - 1 for i in range(7))
ALPHAS_2D = tuple(i / 3 - 1 for i in range(7))  # 7 x 7 = 49 passes: sized for a GPU
#: Goodfellow et al. 2015 go a little past both ends; here 0 (initial) to 1 (final) in sixths, both ends exact.
INTERPOLATION = tuple(i / 6 for i in range(7))
_CHUNK = 128  # examples per forward (and backward) pass: a batch-norm batch at init, memory elsewhere
_SEED_OFFSET = 7919  # the diagnostics' generator: seeded from the run's seed, apart from training's streams


def _inputs(images: torch.Tensor, info: Any, recipe: Recipe) -> torch.Tensor:
    x = normalize(images, info)
    if recipe.resize is not None and recipe.resize != info.size:
        x = F.interpolate(x, size=(recipe.resize, recipe.resize), mode="bilinear", align_corners=False)
    return x


def _probe(split: Split, n: int, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """n examples of a split: a seeded random draw, or the first n without a generator."""
    n = min(n, len(split.labels))
    if gen is None:
        return split.images[:n], split.labels[:n]
    idx = torch.randperm(len(split.labels), generator=gen)[:n].to(split.images.device)
    return split.images[idx], split.labels[idx]


def _chunks(*tensors: torch.Tensor, size: int = _CHUNK):
    for i in range(0, len(tensors[0]), size):
        yield tuple(t[i:i + size] for t in tensors)


# ---------------------------------------------------------------- at initialisation


def layer_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[dict[str, Any]]:
    """Yang et al. 2019: per conv/linear layer (in forward order), the L2 norm of the gradient of
    the mean cross-entropy, batch norm in training mode (each chunk a batch). The model's gradients
    are left set; its batch-norm running statistics are updated as training would."""
    model.train()
    model.zero_grad(set_to_none=True)
    chunks = list(_chunks(x, y))
    for cx, cy in chunks:
        (F.cross_entropy(model(cx), cy) * len(cy) / len(y)).backward()
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return [{"layer": name, "index": i, "grad_norm": float(m.weight.grad.norm())} for i, (name, m) in enumerate(layers, 1)]


def _channel_stats(t: torch.Tensor) -> tuple[float, float]:
    """Brock et al. 2021: (average squared channel mean, average channel variance) of [N, C, H, W]."""
    t = t.detach().float()
    mean = t.mean(dim=(0, 2, 3))
    var = t.var(dim=(0, 2, 3), unbiased=False)
    return float((mean ** 2).mean()), float(var.mean())


def _units(model: nn.Module) -> list[tuple[str, Unit]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, Unit)]


class _Spp:
    """Forward hooks that record Brock et al.'s statistics of every block while they are set."""

    def __init__(self, model: nn.Module):
        self.units = _units(model)
        self.sums = {name: [0.0, 0.0, 0.0] for name, _ in self.units}
        self.passes = 0
        self.handles: list[Any] = []
        for name, unit in self.units:
            self.handles += [unit.register_forward_hook(lambda _m, _i, out, name=name: self._out(name, out)),
                             unit.body.register_forward_hook(lambda _m, _i, out, name=name: self._branch(name, out))]

    def _out(self, name: str, out: torch.Tensor) -> None:
        sq, var = _channel_stats(out)
        self.sums[name][0] += sq
        self.sums[name][1] += var
        self.passes += name == self.units[-1][0]

    def _branch(self, name: str, out: torch.Tensor) -> None:
        self.sums[name][2] += _channel_stats(out)[1]

    def result(self) -> list[dict[str, Any]]:
        for h in self.handles:
            h.remove()
        n = max(1, self.passes)
        return [{"block": name, "index": i, "mean_sq": s[0] / n, "variance": s[1] / n, "branch_variance": s[2] / n}
                for i, (name, _), s in zip(range(1, len(self.units) + 1), self.units, self.sums.values())]


def signal_propagation(model: nn.Module, x: torch.Tensor) -> list[dict[str, Any]]:
    """Per block: its output's average squared channel mean and average channel variance, and the
    variance of its residual branch (the body's output), averaged over chunks, batch norm in
    training mode (as at the start of training)."""
    spp = _Spp(model)
    model.train()
    try:
        with torch.no_grad():
            for (cx,) in _chunks(x):
                model(cx)
    finally:
        blocks = spp.result()
    return blocks


def _bns(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))]


def calibrate_bn(model: nn.Module, x: torch.Tensor) -> None:
    """Batch-norm running statistics measured on real images (their exact average over chunks:
    momentum None), then eval mode; the model's weights are untouched."""
    with _measuring_bn(model):
        model.train()
        with torch.no_grad():
            for (cx,) in _chunks(x):
                model(cx)
    model.eval()


class _measuring_bn:
    """While set, batch norm's running statistics become the average of the batches seen (from scratch)."""

    def __init__(self, model: nn.Module):
        self.bns = _bns(model)

    def __enter__(self) -> None:
        self.saved = [m.momentum for m in self.bns]
        for m in self.bns:
            m.reset_running_stats()
            m.momentum = None

    def __exit__(self, *exc: object) -> None:
        for m, mom in zip(self.bns, self.saved):
            m.momentum = mom


def gradient_autocorrelation(grads: torch.Tensor, max_lag: int) -> list[float]:
    """[points, ...] gradients along a line -> their correlation at lags 0..max_lag: the mean
    cosine between the gradients at inputs `lag` apart. White noise gives ~0 at every lag >= 1; a
    gradient that does not change along the line (a linear net) gives 1 at every lag."""
    g = grads.reshape(len(grads), -1).double()
    g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return [float((g[: len(g) - k] * g[k:]).sum(1).mean()) for k in range(max_lag + 1)]


def line_gradients(model: nn.Module, a: torch.Tensor, b: torch.Tensor, target: int, points: int) -> torch.Tensor:
    """d logit[target] / d input at `points` inputs evenly spaced from a to b (eval mode: each
    input's output depends on it alone, so one backward of the sum gives every input's gradient)."""
    t = torch.linspace(0, 1, points, device=a.device, dtype=a.dtype).view(-1, 1, 1, 1)
    line = (1 - t) * a + t * b
    out = []
    for (chunk,) in _chunks(line):
        chunk = chunk.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model(chunk)[:, target].sum(), chunk)
        out.append(g.detach())
    return torch.cat(out)


def shattered_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, images: int, gen: torch.Generator) -> dict[str, Any]:
    """Balduzzi et al. 2017 on images: lines between pairs of real images, `images` inputs in all;
    the correlation of the input gradient against lag (mean over lines), and the first lag where it
    falls below 0.5 (None: not within the lags measured). The model must be in eval mode with
    calibrated batch norm (`calibrate_bn`)."""
    points = min(LINE_POINTS, images)
    lines = max(1, images // points)
    pairs = torch.randperm(len(y), generator=gen)[: 2 * lines].tolist()
    lines = len(pairs) // 2
    max_lag = points // 2
    curves = []
    for i in range(lines):
        a, b = x[pairs[2 * i]], x[pairs[2 * i + 1]]
        curves.append(gradient_autocorrelation(line_gradients(model, a, b, int(y[pairs[2 * i]]), points), max_lag))
    corr = [sum(c[k] for c in curves) / lines for k in range(max_lag + 1)]
    below = next((k for k, r in enumerate(corr) if r < 0.5), None)
    return {"lags": list(range(max_lag + 1)), "correlation": corr, "lag_below_half": below, "lines": lines, "points": points}


def at_init(spec: VariantSpec, recipe: Recipe, data: Splits, seed: int, settings: Diagnostics,
            device: torch.device) -> dict[str, Any]:
    """The initialisation measurements of the run with `seed` (its initial network rebuilt exactly
    as training builds it). Leaves the global RNG as it found it."""
    rng = torch.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = build_model(spec, data.info).to(device)
    finally:
        torch.set_rng_state(rng)
    gen = torch.Generator().manual_seed(seed + _SEED_OFFSET)
    images, labels = _probe(data.train, settings.images, gen)
    x = _inputs(images, data.info, recipe)
    # One pass does three things: the gradient norms, the block statistics (hooks) and the running
    # statistics for the shattered gradients (batch norm in training mode sees the real images).
    spp = _Spp(model)
    try:
        with _measuring_bn(model):
            out = {"layers": layer_grad_norms(model, x, labels)}
    finally:
        out["blocks"] = spp.result()
    model.zero_grad(set_to_none=True)
    model.eval()
    out["shattered"] = shattered_gradients(model, x, labels, settings.images, gen)
    return _finite(out)


# ---------------------------------------------------------------- after training


def error_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Error of `model` in eval mode on inputs x (fraction)."""
    model.eval()
    wrong = 0
    with torch.no_grad():
        for cx, cy in _chunks(x, y, size=4 * _CHUNK):
            wrong += int((model(cx).argmax(1) != cy).sum())
    return wrong / len(y)


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy of `model` in eval mode on inputs x."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for cx, cy in _chunks(x, y, size=4 * _CHUNK):
            total += float(F.cross_entropy(model(cx).float(), cy, reduction="sum"))
    return total / len(y)


def lesionable_blocks(model: nn.Sequential, x: torch.Tensor) -> list[tuple[str, int]]:
    """(stage, index) of every block whose output has its input's shape (Veit et al.: only those can
    be removed; the downsampling blocks cannot)."""
    shapes: dict[tuple[str, int], bool] = {}
    handles = []
    for stage, mod in model.named_children():
        if not stage.startswith("stage"):
            continue
        for i, unit in enumerate(mod):
            handles.append(unit.register_forward_hook(
                lambda _m, inp, out, key=(stage, i): shapes.__setitem__(key, tuple(inp[0].shape) == tuple(out.shape))))
    model.eval()
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return [key for key, same in shapes.items() if same]


def _path(model: nn.Sequential) -> list[tuple[tuple[str, int] | None, nn.Module]]:
    """The network as one chain: the stem, every block (keyed by stage and index), the head."""
    out: list[tuple[tuple[str, int] | None, nn.Module]] = []
    for name, mod in model.named_children():
        if name.startswith("stage"):
            out += [((name, i), unit) for i, unit in enumerate(mod)]
        else:
            out.append((None, mod))
    return out


def lesion(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Veit et al. 2016: the error with each lesionable block replaced by the identity in turn
    (nothing retrained, batch norm as it is), against the whole network's error.

    The network is a chain, so removing block j changes nothing before it: each chunk of inputs
    runs through the whole chain once, keeping every block's input, and each lesion runs only the
    blocks after j from block j's input (half the passes of rerunning the whole net each time)."""
    keys = lesionable_blocks(model, x)
    path = _path(model)
    at = {key: j for j, (key, _) in enumerate(path) if key is not None}
    wrong = {key: 0 for key in keys}
    base = 0
    model.eval()
    with torch.no_grad():
        for cx, cy in _chunks(x, y):
            inputs, h = [], cx
            for _, mod in path:
                inputs.append(h)
                h = mod(h)
            base += int((h.argmax(1) != cy).sum())
            for key in keys:
                h = inputs[at[key]]  # block j is the identity: its output is its input
                for _, mod in path[at[key] + 1:]:
                    h = mod(h)
                wrong[key] += int((h.argmax(1) != cy).sum())
    n, err = len(y), base / len(y)
    rows = [{"block": f"{stage}.{i}", "error": wrong[(stage, i)] / n, "increase": wrong[(stage, i)] / n - err} for stage, i in keys]
    return {"error": err, "blocks": rows}


def filter_normalized_direction(state: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Li et al. 2018, Sec. 4: a Gaussian direction with each filter (a slice along dim 0 of a conv
    or linear weight) rescaled to the norm of the weight's filter; biases, batch-norm parameters and
    buffers zero (batch norm is left as it is, in eval mode)."""
    out = {}
    for k, w in state.items():
        if w.dim() <= 1 or not w.is_floating_point():
            out[k] = torch.zeros_like(w)
            continue
        d = torch.randn(w.shape, generator=gen, dtype=torch.float32).to(device=w.device, dtype=w.dtype)
        dims = tuple(range(1, w.dim()))
        norm = lambda t: torch.linalg.vector_norm(t, dim=dims, keepdim=True)  # noqa: E731
        d = d * (norm(w) / norm(d).clamp_min(1e-12))
        out[k] = d
    return out


def _moved(state: dict[str, torch.Tensor], steps: list[tuple[float, dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if v.is_floating_point():
            v = v.clone()
            for alpha, d in steps:
                v.add_(d[k], alpha=alpha)
        out[k] = v
    return out


def landscape_1d(model: nn.Module, x: torch.Tensor, y: torch.Tensor, direction: dict[str, torch.Tensor],
                 alphas: tuple[float, ...] = ALPHAS_1D) -> list[dict[str, float]]:
    """Loss at theta + alpha * direction (eval mode); the model is restored afterwards."""
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        out = []
        for a in alphas:
            model.load_state_dict(_moved(theta, [(a, direction)]))
            out.append({"alpha": a, "loss": loss_of(model, x, y)})
        return out
    finally:
        model.load_state_dict(theta)


def landscape_2d(model: nn.Module, x: torch.Tensor, y: torch.Tensor, d1: dict[str, torch.Tensor], d2: dict[str, torch.Tensor],
                 alphas: tuple[float, ...] = ALPHAS_2D) -> list[dict[str, float]]:
    """Loss at theta + a * d1 + b * d2 on a grid (Li et al. 2018, Fig. 5); the model is restored."""
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        out = []
        for a in alphas:
            for b in alphas:
                model.load_state_dict(_moved(theta, [(a, d1), (b, d2)]))
                out.append({"alpha": a, "beta": b, "loss": loss_of(model, x, y)})
        return out
    finally:
        model.load_state_dict(theta)


def interpolation(model: nn.Module, start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], x: torch.Tensor,
                  y: torch.Tensor, ts: tuple[float, ...] = INTERPOLATION) -> list[dict[str, float]]:
    """Goodfellow et al. 2015: loss at (1 - t) * start + t * end, batch-norm running statistics
    interpolated too (eval mode); the model is left at `end`."""
    out = []
    try:
        for t in ts:
            model.load_state_dict({k: torch.lerp(s, end[k], t) if s.is_floating_point() else end[k] for k, s in start.items()})
            out.append({"alpha": t, "loss": loss_of(model, x, y)})
    finally:
        model.load_state_dict(end)
    return out


def after_training(spec: VariantSpec, recipe: Recipe, data: Splits, seed: int, final: dict[str, torch.Tensor],
                   settings: Diagnostics, device: torch.device) -> dict[str, Any]:
    """The lesion and the landscape of the run with `seed`, from its final state dict."""
    rng = torch.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = build_model(spec, data.info).to(device)  # its initial weights, for the interpolation
    finally:
        torch.set_rng_state(rng)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    final = {k: v.to(device) for k, v in final.items()}
    model.load_state_dict(final)
    out: dict[str, Any] = {}
    if settings.lesion:
        images, labels = _probe(data.test, settings.images, None)  # the first test examples: the same for every run
        out["lesion"] = lesion(model, _inputs(images, data.info, recipe), labels)
    if settings.landscape != "none":
        gen = torch.Generator().manual_seed(seed + 2 * _SEED_OFFSET)
        images, labels = _probe(data.train, settings.images, gen)  # training loss, as Li et al. plot it
        x = _inputs(images, data.info, recipe)
        d1 = filter_normalized_direction(final, gen)
        land: dict[str, Any] = {"1d": landscape_1d(model, x, labels, d1)}
        if settings.landscape == "2d":
            land["2d"] = landscape_2d(model, x, labels, d1, filter_normalized_direction(final, gen))
        land["interpolation"] = interpolation(model, initial, final, x, labels)
        out["landscape"] = land
    return _finite(out)


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity (a diverging landscape point): None in their place."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
