"""`ablate bench`: training throughput of the engine against the seed's way of training, in one run.

The baseline is written the way the seed documents (d2l, the PyTorch CIFAR tutorial, blog posts)
train a ResNet: a map-style `Dataset` that hands out one `PIL.Image` per sample (as torchvision's
CIFAR10 does), per-sample torchvision transforms, a `DataLoader` with worker processes and default
collation, fp32, and the four-line loop. The engine is the real `ablate.train.train`: the dataset as
uint8 tensors on the device, batches as index selections, augmentation on whole batches (and, on
CUDA, bf16 autocast and channels_last).

Both sides train the same network (`build_model`, same seed) with the same SGD hyperparameters on
the same uint8 images, one after the other in one process. Each runs `epochs` epochs and is timed
on the epochs after the first, which pays for worker start-up, allocator warm-up and cuDNN tuning.
Throughput does not depend on pixel values, so `random_data` benchmarks datasets that are not on
disk with random images of their shape.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from ablate.spec.catalog import DatasetInfo, dataset_info
from ablate.spec.variants import VariantSpec, get_variant

if TYPE_CHECKING:  # torch and the engine are imported where they run: `ablate --help` must not wait for torch
    import numpy as np
    import torch

    from ablate.engine.data import Split, Splits
    from ablate.engine.train import Recipe

DEFAULT_IMAGES = 5120  # ResNet-20, CIFAR-sized, 2-core CPU: about 15 s per epoch and side
TEST_IMAGES = 256  # the engine evaluates after every epoch; keep that cost small (not timed)


@dataclass(frozen=True)
class BenchResult:
    """Throughputs in training images per second, and everything that produced them."""

    variant: str
    dataset: str
    data: str  # "random" or the directory the files were read from
    device: str  # cpu, cuda, cuda:1
    device_name: str  # the CPU model or the GPU name
    torch: str
    cpus: int  # os.cpu_count()
    threads: int  # torch.get_num_threads() in this process
    date: str  # ISO 8601
    batch_size: int
    images: int  # training images per epoch
    size: int  # the resolution the network trains at
    epochs: int  # per side; the first is not timed
    workers: int  # the baseline DataLoader's worker processes
    augment: tuple[str, ...]
    seed: int
    load: tuple[float, float]  # 1-minute load average before and after (lags by about a minute)
    others_cpu: float | None  # CPU cores that other processes kept busy during the run, on average (Linux)
    engine_ips: float
    baseline_ips: float

    @property
    def ratio(self) -> float:
        """Engine over baseline: above 1 the engine is faster."""
        return self.engine_ips / self.baseline_ips

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "ratio": self.ratio}


def run_bench(
    variant: str | VariantSpec,
    dataset: str,
    *,
    device: str = "auto",
    batch_size: int = 128,
    images: int = DEFAULT_IMAGES,
    size: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    random_data: bool = False,
    workers: int = 2,
    epochs: int = 2,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> BenchResult:
    """Train `variant` on `images` images of `dataset` with the seed-style baseline, then with the
    engine, and return both throughputs.

    `variant` is a registered name or any `VariantSpec`. `size` trains at that resolution (the
    engine's `Recipe.resize`; the baseline's `transforms.Resize`). Without `random_data` the
    dataset must be on disk (nothing is downloaded): `DataError` otherwise. Invalid settings
    raise ValueError naming the setting.
    """
    import torch

    from ablate.engine.train import Recipe, input_info, resolve_device, train

    spec = get_variant(variant) if isinstance(variant, str) else variant
    info = dataset_info(dataset)
    dev = resolve_device(device)
    for key, value, low in (("batch_size", batch_size, 2), ("images", images, 2), ("epochs", epochs, 2), ("workers", workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{key}: {value!r} is not valid; use an integer >= {low}"
                             + (" (the first epoch is warm-up and is not timed)" if key == "epochs" else ""))
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 1024):
        raise ValueError(f"size: {size!r} is not valid; use a side length in pixels from 8 to 1024")
    say = log or (lambda message: None)
    recipe = Recipe(
        epochs=epochs, batch_size=batch_size, schedule="constant", augment=info.augment,
        resize=None if size is None or size == info.size else size,
    )
    data = _random_splits(info, images, seed, dev) if random_data else _disk_splits(info, images, data_dir, seed, dev)
    load_before, busy_before, t0 = os.getloadavg()[0], _others_busy(), time.perf_counter()

    say(f"baseline: {spec.name}, {images} images x {epochs} epochs, DataLoader with {workers} workers")
    baseline_ips = baseline_throughput(spec, recipe, data.train, info, dev, workers=workers, seed=seed)
    say(f"engine: {spec.name}, {images} images x {epochs} epochs")
    result = train(spec, recipe, data, device=dev, seed=seed)
    busy_after, wall = _others_busy(), time.perf_counter() - t0
    others = None if busy_before is None or busy_after is None else max(0.0, (busy_after - busy_before) / wall)
    if result.diverged or result.images_per_second is None or len(result.history) < epochs:
        raise RuntimeError(f"the engine's run did not finish: {result.reason}; try another --seed")
    return BenchResult(
        variant=spec.name, dataset=info.name, data=data.source, device=str(dev), device_name=device_name(dev),
        torch=torch.__version__, cpus=os.cpu_count() or 0, threads=torch.get_num_threads(),
        date=date.today().isoformat(), batch_size=batch_size, images=len(data.train), size=input_info(info, recipe).size,
        epochs=epochs, workers=workers, augment=tuple(recipe.augment), seed=seed,
        load=(load_before, os.getloadavg()[0]), others_cpu=others, engine_ips=result.images_per_second, baseline_ips=baseline_ips,
    )


def _others_busy() -> float | None:
    """CPU seconds the whole machine has been busy, less this process's and its reaped children's
    (the baseline's workers): what other processes used. None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as file:
            ticks = [int(v) for v in file.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # user nice system idle iowait irq softirq steal: less idle, iowait
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK") - (own.user + own.system + own.children_user + own.children_system)


def _random_splits(info: DatasetInfo, images: int, seed: int, device: torch.device) -> Splits:
    import torch

    from ablate.engine.data import Split, Splits

    gen = torch.Generator().manual_seed(seed)
    shape = (info.channels, info.size, info.size)

    def split(n: int) -> Split:
        x = torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8)
        y = torch.randint(0, info.classes, (n,), generator=gen)
        return Split(x.to(device), y.to(device))

    return Splits(train=split(images), val=None, test=split(TEST_IMAGES), info=info, source="random")


def _disk_splits(info: DatasetInfo, images: int, data_dir, seed: int, device: torch.device) -> Splits:
    from ablate.engine.data import Split, Splits, load_dataset

    if info.name == "synthetic":  # generated, at most its official size
        images = min(images, info.train_size)
    data = load_dataset(info.name, data_dir=data_dir, device=device, train_subset=images, seed=seed, download=False)
    test = Split(data.test.images[:TEST_IMAGES], data.test.labels[:TEST_IMAGES])
    return Splits(train=data.train, val=None, test=test, info=info, source=data.source)


def device_name(device: torch.device) -> str:
    """The GPU name, or the CPU model from /proc/cpuinfo."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --- The baseline, as the seed documents train ------------------------------------------------


class PILImages:
    """uint8 images handed out one `PIL.Image` at a time, as torchvision's CIFAR10 and MNIST do (a
    map-style dataset: `DataLoader` needs only `__getitem__` and `__len__`)."""

    def __init__(self, images: np.ndarray, labels: list[int], transform: Callable):
        self.images = images  # [N, H, W, C], or [N, H, W] for one channel (PIL mode "L")
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def baseline_loader(split: Split, info: DatasetInfo, recipe: Recipe, *, workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader over `split` with per-sample torchvision transforms, as in d2l / the tutorials."""
    import numpy as np
    import torch
    from torchvision import transforms  # seconds to import; only the baseline needs it

    ops: list = []
    if "crop" in recipe.augment:
        ops.append(transforms.RandomCrop(info.size, padding=4))
    if "flip" in recipe.augment:
        ops.append(transforms.RandomHorizontalFlip())
    if recipe.resize is not None:  # d2l: `transforms.Resize(224)` to feed ImageNet-sized nets
        ops.append(transforms.Resize(recipe.resize))
    ops += [transforms.ToTensor(), transforms.Normalize(info.mean, info.std)]
    hwc = split.images.cpu().permute(0, 2, 3, 1).numpy()
    hwc = np.ascontiguousarray(hwc[..., 0] if info.channels == 1 else hwc)
    dataset = PILImages(hwc, split.labels.cpu().tolist(), transforms.Compose(ops))
    # drop_last as the engine: a last batch of one image would break BatchNorm.
    drop_last = len(dataset) >= 2 * recipe.batch_size
    return torch.utils.data.DataLoader(dataset, batch_size=recipe.batch_size, shuffle=True,
                                       num_workers=workers, drop_last=drop_last)


def baseline_throughput(
    spec: VariantSpec, recipe: Recipe, split: Split, info: DatasetInfo, device: torch.device, *, workers: int, seed: int = 0
) -> float:
    """Training images per second of the seed-style loop, over the epochs after the first (fp32)."""
    import torch
    import torch.nn.functional as F

    from ablate.engine.models import build_model

    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False  # the seed's scripts leave it off
    try:
        torch.manual_seed(seed)
        net = build_model(spec, info).to(device)
        loader = baseline_loader(split, info, recipe, workers=workers)
        opt = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                              nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)
        net.train()
        seen, seconds = 0, 0.0
        for epoch in range(recipe.epochs):
            t0 = time.perf_counter()  # includes starting the workers: they restart every epoch
            n = 0
            for X, y in loader:
                X, y = X.to(device), y.to(device)
                loss = F.cross_entropy(net(X), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                n += len(y)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if epoch > 0:  # the first epoch is warm-up
                seen, seconds = seen + n, seconds + time.perf_counter() - t0
        return seen / seconds
    finally:
        torch.backends.cudnn.benchmark = benchmark


# --- Fused runs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FuseBenchResult:
    """Training images per second summed over K runs of one variant (seeds seed..seed+K-1), three ways."""

    variant: str
    dataset: str
    data: str
    device: str
    device_name: str
    torch: str
    cpus: int
    threads: int
    date: str
    batch_size: int
    images: int
    size: int
    epochs: int
    runs: int  # K
    seed: int
    load: tuple[float, float]  # 1-minute load average before and after
    others_cpu: float | None
    fused_ips: float  # one network of K runs (ablate.train.train_runs)
    sequential_ips: float  # K runs of `train`, one after another
    concurrent_ips: float | None  # K processes at once, each with threads // K threads (CPU only)

    @property
    def speedup(self) -> float:
        """Fused over one after another: above 1 fusion is faster."""
        return self.fused_ips / self.sequential_ips

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "speedup": self.speedup}


def _one_run(spec: VariantSpec, recipe: Recipe, info: DatasetInfo, images: int, data_dir, random_data: bool,
             device: str, seed: int, data_seed: int, threads: int) -> float:
    """One `train` in a process of its own (for the concurrent case): its steady images/s."""
    import torch

    from ablate.engine.train import resolve_device, train

    torch.set_num_threads(threads)
    dev = resolve_device(device)
    data = _random_splits(info, images, data_seed, dev) if random_data else _disk_splits(info, images, data_dir, data_seed, dev)
    return train(spec, recipe, data, device=dev, seed=seed).images_per_second


def run_fuse_bench(
    variant: str | VariantSpec,
    dataset: str,
    *,
    runs: int,
    device: str = "auto",
    batch_size: int = 128,
    images: int = DEFAULT_IMAGES,
    size: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    random_data: bool = False,
    epochs: int = 2,
    seed: int = 0,
    concurrent: bool = True,
    log: Callable[[str], None] | None = None,
) -> FuseBenchResult:
    """K = `runs` runs of `variant`, seeds seed..seed+K-1, trained as one fused network, then one
    after another, then (on a CPU, with `concurrent`) as K processes at once; images/s summed over
    the K runs, each timed on its epochs after the first, as `run_bench` does."""
    import multiprocessing

    import torch

    from ablate.engine.train import Recipe, input_info, resolve_device, train, train_runs

    spec = get_variant(variant) if isinstance(variant, str) else variant
    info = dataset_info(dataset)
    dev = resolve_device(device)
    for key, value, low in (("fuse", runs, 2), ("batch_size", batch_size, 2), ("images", images, 2), ("epochs", epochs, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{key}: {value!r} is not valid; use an integer >= {low}")
    say = log or (lambda message: None)
    recipe = Recipe(epochs=epochs, batch_size=batch_size, schedule="constant", augment=info.augment,
                    resize=None if size is None or size == info.size else size)
    data = _random_splits(info, images, seed, dev) if random_data else _disk_splits(info, images, data_dir, seed, dev)
    seeds = [seed + k for k in range(runs)]
    load_before, busy_before, t0 = os.getloadavg()[0], _others_busy(), time.perf_counter()

    def finished(results) -> list:
        bad = [r for r in results if isinstance(r, Exception) or r.diverged or r.images_per_second is None]
        if bad:
            raise RuntimeError(f"a run did not finish ({getattr(bad[0], 'reason', bad[0])}); try another --seed")
        return results

    say(f"fused: {runs} runs of {spec.name} as one network, {len(data.train)} images x {epochs} epochs")
    fused = sum(r.images_per_second for r in finished(train_runs(spec, recipe, data, seeds=seeds, device=dev)))
    say(f"one after another: {runs} runs of {spec.name}")
    alone = finished([train(spec, recipe, data, device=dev, seed=s) for s in seeds])
    sequential = runs / sum(1 / r.images_per_second for r in alone)  # K runs' images over their summed time
    parallel = None
    if concurrent and dev.type == "cpu":
        threads = max(1, torch.get_num_threads() // runs)
        say(f"concurrent: {runs} processes of {threads} thread(s) each")
        with multiprocessing.get_context("spawn").Pool(runs) as pool:
            parallel = sum(pool.starmap(_one_run, [(spec, recipe, info, images, data_dir, random_data, str(dev), s, seed, threads)
                                                   for s in seeds]))
    busy_after, wall = _others_busy(), time.perf_counter() - t0
    others = None if busy_before is None or busy_after is None else max(0.0, (busy_after - busy_before) / wall)
    return FuseBenchResult(
        variant=spec.name, dataset=info.name, data=data.source, device=str(dev), device_name=device_name(dev),
        torch=torch.__version__, cpus=os.cpu_count() or 0, threads=torch.get_num_threads(), date=date.today().isoformat(),
        batch_size=batch_size, images=len(data.train), size=input_info(info, recipe).size, epochs=epochs, runs=runs,
        seed=seed, load=(load_before, os.getloadavg()[0]), others_cpu=others, fused_ips=fused, sequential_ips=sequential,
        concurrent_ips=parallel,
    )
