"""The GPU campaign: every GPU measurement ablate needs, as one command that fits a 10-minute window.

    python3 benchmarks/gpu_campaign.py --out DIR [--smoke] [--budget-s 480]

Runs with plain `python3` and `PYTHONPATH` (no uv) on any torch >= 2.4; docs/gpu.md has the exact
command for a lent GPU machine. Writes DIR/campaign.json (rewritten atomically after every part and
every finished measurement, so a kill keeps what was measured), DIR/campaign.md (a short table with
the issue's targets) and DIR/campaign.log. Scratch files (the study's database, test output) go to
--work, a temporary folder by default, so that DIR holds only those three files.

Parts, each a top-level key of campaign.json with its status ("ok", "error", "timeout",
"skipped"), its budget and its seconds:

    environment  device, versions, a measured bf16 matmul peak (for MFU)
    engine       the engine against the seed-style pipeline (ablate.engine.bench.run_bench)
    levers       bf16 vs fp32, channels_last, cuDNN autotuning, torch.compile (compile time stated)
    packing      fused K = 1, 2, 4, 8 and 1, 2, 4 worker processes on one GPU, against one run
    study        a degradation study on full Fashion-MNIST through `ablate run` and `ablate export`
    fmnist94     ResNet-20 on full Fashion-MNIST to 94% test accuracy, timed
    tests        the test files that exercise CUDA paths, with pytest -x

Every part has its own share of --budget-s (a part that finishes early leaves its time to the
rest). A part that raises or runs out of time is recorded with a one-line error and the rest
still run. Whatever could hang or blow up runs in a child process with a timeout: torch.compile,
the worker processes, the study, pytest.

--smoke shrinks every part to seconds on a CPU (tiny nets, the bundled Fashion-MNIST subset) with
the same keys; tests/test_gpu_campaign.py runs it. The CUDA paths' logic runs there too: bf16
autocast, channels_last, torch.compile (with the aot_eager backend: Dynamo and AOTAutograd trace
the same graphs; inductor's C++ build takes minutes on a small CPU, --compile-backend inductor
asks for it anyway).

ABLATE_CAMPAIGN_FAIL=PART[,PART...] makes the named parts raise at their start: how the tests
check that a failing part is recorded, not fatal.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from ablate.spec.variants import VariantSpec, get_variant  # noqa: E402 (after the path)

FAIL_ENV = "ABLATE_CAMPAIGN_FAIL"
PARTS = ("environment", "engine", "levers", "packing", "study", "fmnist94", "tests")
# Shares of the budget, from estimates for one H200 (480 s: about 54 s a unit). The study trains 18
# runs on 60k images; levers include compiling ResNet-56 with inductor (a minute or more); the
# environment imports torch and starts CUDA. A part's budget is its share of what is left when it
# starts, so time a part leaves goes to the rest.
WEIGHTS = {"environment": 0.3, "engine": 1.2, "levers": 1.8, "packing": 1.2, "study": 2.4, "fmnist94": 1.0, "tests": 1.0}
TARGET_ACCURACY = 0.94
PRECISION = "bf16"  # what "auto" means on CUDA; explicit, so that the smoke run takes the same path on a CPU


# --- Sizes: what each part trains, for a GPU and for the smoke run --------------------------


@dataclass(frozen=True)
class EngineCase:
    key: str  # the name for the case; the targets look rows up by it
    variant: str | VariantSpec
    dataset: str
    size: int | None  # train at this resolution (None: the dataset's)
    batch: int
    images: int  # training images per epoch; the bench times the second of two epochs


@dataclass(frozen=True)
class Sizes:
    engine: tuple[EngineCase, ...]
    baseline_workers: int  # the seed-style DataLoader's worker processes (ablate bench's default)
    peak_n: int  # side of the square bf16 matmul timed for the peak
    lever_variant: str | VariantSpec
    lever_dataset: str
    lever_batch: int
    lever_steps: tuple[int, int]  # untimed warm-up steps, timed steps
    pack_variant: str | VariantSpec
    pack_dataset: str
    pack_images: int  # per epoch and run; a multiple of pack_batch
    pack_batch: int
    pack_epochs: int  # the first is not timed
    fuse_ks: tuple[int, ...]
    processes: tuple[int, ...]
    study: dict[str, Any]  # study_toml()'s arguments
    fm_variant: str | VariantSpec
    fm_recipe: dict[str, Any]  # Recipe keys
    test_files: tuple[str, ...]
    compile_backend: str


TINY = VariantSpec(depth=8, width=4)
# Width 8, not 4: torch 2.15's CPU weight gradient of a 1x1 stride-2 convolution in channels_last
# with fewer than 8 input channels (this net's projection shortcut at width 4) corrupts the heap.
TINY_IMAGENET = VariantSpec(stem="imagenet", depth=10, blocks=(1, 1, 1, 1), width=8, shortcut="B")

FULL = Sizes(
    engine=(
        EngineCase("resnet-20", "resnet-20", "cifar10", None, 128, 20480),
        EngineCase("resnet-56", "resnet-56", "cifar10", None, 128, 20480),
        EngineCase("resnet-110", "resnet-110", "cifar10", None, 128, 10240),
        EngineCase("resnet-18-224", "resnet-18", "fashion-mnist", 224, 128, 5120),
    ),
    baseline_workers=2, peak_n=8192,
    lever_variant="resnet-56", lever_dataset="cifar10", lever_batch=128, lever_steps=(15, 60),
    pack_variant="resnet-20", pack_dataset="cifar10", pack_images=10240, pack_batch=128, pack_epochs=3,
    fuse_ks=(1, 2, 4, 8), processes=(1, 2, 4),
    # One epoch: 18 runs (6 fused units of 3 seeds) of 60k images, estimated at a minute or two;
    # --study-epochs 2 where the window is larger.
    study=dict(depths=(20, 56, 110), width=16, epochs=1, seeds=3, batch_size=128),
    # ResNet-20 to 94%: one-cycle over 20 epochs of batches of 256, airbench-style label smoothing.
    fm_variant="resnet-20",
    fm_recipe=dict(epochs=20, batch_size=256, lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4,
                   schedule="onecycle", label_smoothing=0.1, augment=("crop", "flip")),
    test_files=("tests/test_cuda.py", "tests/test_train.py", "tests/test_fused.py", "tests/test_checkpoint.py"),
    compile_backend="inductor",
)

SMOKE = Sizes(
    engine=(
        EngineCase("resnet-20", TINY, "synthetic", None, 32, 128),
        EngineCase("resnet-18-224", TINY_IMAGENET, "fashion-mnist", 32, 16, 64),
    ),
    baseline_workers=1, peak_n=256,
    lever_variant=TINY, lever_dataset="synthetic", lever_batch=32, lever_steps=(2, 3),
    pack_variant=TINY, pack_dataset="synthetic", pack_images=64, pack_batch=32, pack_epochs=2,
    fuse_ks=(1, 2, 4, 8), processes=(1,),  # one child: the barrier and the window, at half the smoke cost of two
    # The synthetic stripes: width-4 nets learn them in 32 steps, so the verdict has numbers to read.
    study=dict(dataset="synthetic", depths=(8, 14), width=4, epochs=2, seeds=2, batch_size=32, train_subset=512,
               test_subset=256),
    fm_variant=TINY,
    fm_recipe=dict(epochs=2, batch_size=64, lr=0.1, schedule="onecycle", augment=("crop", "flip"),
                   train_subset=256, test_subset=256),
    test_files=("tests/test_cuda.py",),
    compile_backend="aot_eager",
)


def spec_of(variant: str | VariantSpec) -> VariantSpec:
    return get_variant(variant) if isinstance(variant, str) else variant


# --- The campaign: budgets, records, atomic writes -----------------------------------------


class PartTimeout(BaseException):
    """A part ran past its budget. BaseException, so that no `except Exception` on the way swallows it."""


class Terminated(BaseException):
    """SIGTERM (the caller's timeout): record the part in progress, write, and stop."""


class PartError(Exception):
    """A part's own failure, with a one-line message."""


@contextlib.contextmanager
def alarm(seconds: float):
    """Raise PartTimeout in this (main) thread after `seconds`: a hard stop for in-process parts,
    which spend their time in Python loops that the signal interrupts."""
    def ring(signum, frame):
        raise PartTimeout(f"ran past its budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class Child:
    rc: int | None  # None: killed at its timeout
    seconds: float
    output: str  # stdout and stderr, the last 4000 characters

    @property
    def timed_out(self) -> bool:
        return self.rc is None

    def last_line(self) -> str:
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        return lines[-1][:300] if lines else ""


@dataclass
class Campaign:
    out: Path
    work: Path
    sizes: Sizes
    smoke: bool
    budget_s: float
    device: str  # what --device said: auto, cpu, cuda
    data_dir: str | None
    study_workers: int
    grace_s: float = 5.0  # the alarm rings this long after a part's deadline (children stop at it first)
    started: float = field(default_factory=time.monotonic)
    results: dict[str, Any] = field(default_factory=dict)
    part_deadline: float = math.inf

    def __post_init__(self) -> None:
        self.results["campaign"] = {"smoke": self.smoke, "budget_s": self.budget_s, "status": "running",
                                    "fail_env": os.environ.get(FAIL_ENV), "work": str(self.work)}

    # Time ---------------------------------------------------------------------------------
    def left(self) -> float:
        """Seconds left to the part in progress (never more than the campaign's)."""
        return max(0.0, min(self.part_deadline, self.started + self.budget_s) - time.monotonic())

    def part_budget(self, name: str) -> float:
        remaining = [p for p in PARTS[PARTS.index(name):]]
        share = WEIGHTS[name] / sum(WEIGHTS[p] for p in remaining)
        return max(0.0, self.started + self.budget_s - time.monotonic()) * share

    # Records ------------------------------------------------------------------------------
    def save(self) -> None:
        self.results["campaign"]["wall_s"] = round(time.monotonic() - self.started, 1)
        self.results["targets"] = targets(self.results)
        write_atomically(self.out / "campaign.json", json.dumps(self.results, indent=2, default=str) + "\n")
        write_atomically(self.out / "campaign.md", markdown(self.results))

    def log(self, message: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f} s] {message}"
        print(line, file=sys.stderr, flush=True)
        with open(self.out / "campaign.log", "a") as file:
            file.write(line + "\n")

    def run_part(self, name: str, body: Callable[[Campaign, dict[str, Any]], None]) -> None:
        budget = self.part_budget(name)
        record: dict[str, Any] = {"status": "running", "budget_s": round(budget, 1)}
        self.results[name] = record
        if budget < (1 if self.smoke else 10):
            record.update(status="skipped", error=f"no time left ({budget:.0f} s of the budget)")
            self.save()
            return
        self.part_deadline = time.monotonic() + budget
        self.log(f"{name}: starting, budget {budget:.0f} s")
        self.save()
        t0 = time.monotonic()
        try:
            # The alarm is a backstop a little after the deadline: children are given the time
            # left and stopped by their own timeouts first, which keeps their partial output.
            with alarm(budget + self.grace_s):
                if name in os.environ.get(FAIL_ENV, "").split(","):
                    raise PartError(f"failure injected by {FAIL_ENV}")
                body(self, record)
            record["status"] = "ok"
        except PartTimeout as exc:
            record.update(status="timeout", error=str(exc))
        except Terminated:
            record.update(status="killed", error="the campaign was terminated (SIGTERM) during this part")
            raise
        except Exception as exc:
            record.update(status="error", error=one_line(exc))
            record["traceback"] = traceback.format_exc().splitlines()[-12:]
        finally:
            record["seconds"] = round(time.monotonic() - t0, 1)
            self.part_deadline = math.inf
            self.log(f"{name}: {record['status']} in {record['seconds']} s" + (f" ({record['error']})" if "error" in record else ""))
            self.save()

    # Children -----------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        return env

    def spawn(self, args: list[str], name: str) -> tuple[subprocess.Popen, Path]:
        log = self.work / f"{name}.out"
        with open(log, "w") as sink:
            proc = subprocess.Popen(args, cwd=ROOT, env=self.env(), stdout=sink, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        return proc, log

    def finish(self, proc: subprocess.Popen, log: Path, timeout: float, t0: float) -> Child:
        """Wait for a child up to `timeout`; at the timeout SIGTERM its process group (ablate run stops
        at the next step and keeps what it stored), then SIGKILL what is left."""
        rc: int | None
        try:
            try:
                rc = proc.wait(timeout=max(0.1, timeout))
            except subprocess.TimeoutExpired:
                rc = None
        finally:  # also on PartTimeout or SIGTERM: no child outlives its part
            if proc.poll() is None:
                stop_group(proc)
        return Child(rc, round(time.monotonic() - t0, 1), log.read_text(errors="replace")[-4000:])

    def run(self, args: list[str], name: str, timeout: float) -> Child:
        t0 = time.monotonic()
        proc, log = self.spawn(args, name)
        return self.finish(proc, log, timeout, t0)

    def child(self, kind: str, arguments: dict[str, Any], name: str, timeout: float) -> dict[str, Any]:
        """This script as a child doing `kind` (child_main); its JSON result, or PartError."""
        result = self.work / f"{name}.json"
        result.unlink(missing_ok=True)
        done = self.run(self.child_args(kind, arguments, result), name, timeout)
        if done.timed_out:
            raise PartError(f"{name}: no result within {timeout:.0f} s; last output: {done.last_line()}")
        if done.rc != 0 or not result.is_file():
            raise PartError(f"{name}: exited {done.rc}: {done.last_line()}")
        return json.loads(result.read_text())

    def child_args(self, kind: str, arguments: dict[str, Any], result: Path) -> list[str]:
        payload = {"device": self.device, "smoke": self.smoke, **arguments}
        return [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--child-args", json.dumps(payload),
                "--child-result", str(result), "--out", str(self.out)]


def stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
            return


# --- Shared measurement helpers -------------------------------------------------------------


def resolve(device: str):
    from ablate.engine.train import resolve_device

    return resolve_device(device)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def input_size(dataset: str, size: int | None):
    """The dataset metadata at the resolution the network sees."""
    from ablate.spec.catalog import dataset_info

    info = dataset_info(dataset)
    return info if size is None else dataclasses.replace(info, size=size)


def macs_per_image(variant: str | VariantSpec, dataset: str, size: int | None = None) -> int:
    from ablate.engine.models import measure

    return measure(spec_of(variant), input_size(dataset, size))[1]


def mfu(images_per_second: float, macs: int, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: 3 passes (forward, two backward) x 2 FLOPs per MAC per image."""
    if not peak_tflops:
        return None
    return images_per_second * 6 * macs / (peak_tflops * 1e12)


def random_splits(dataset: str, images: int, device, seed: int = 0, test: int = 256):
    """Random uint8 images of a dataset's shape, on the device: throughput does not depend on pixel values."""
    import torch

    from ablate.engine.data import Split, Splits
    from ablate.spec.catalog import dataset_info

    info = dataset_info(dataset)
    gen = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        x = torch.randint(0, 256, (n, info.channels, info.size, info.size), generator=gen, dtype=torch.uint8)
        return Split(x.to(device), torch.randint(0, info.classes, (n,), generator=gen).to(device))

    return Splits(train=split(images), val=None, test=split(test), info=info, source="random")


def bf16_peak_tflops(device, n: int, repeats: int = 20) -> float:
    """The best of three timings of `repeats` n x n x n bf16 matmuls: what MFU is measured against."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    c = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):  # cuBLAS heuristics, clocks
        torch.mm(a, b, out=c)
    sync(device)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b, out=c)
        sync(device)
        best = min(best, (time.perf_counter() - t0) / repeats)
    return 2 * n**3 / best / 1e12


def step_rate(variant: str | VariantSpec, dataset: str, *, device, batch: int, warmup: int, steps: int, bf16: bool,
              channels_last: bool, cudnn_benchmark: bool, compile_backend: str | None = None) -> dict[str, float]:
    """Training steps (forward, backward, SGD) of one net on one fixed batch already on the device,
    set up as the engine does (ablate.engine.train), with each lever settable: the model's own
    throughput, without the data path. The warm-up pays for autotuning and compilation."""
    import torch
    import torch.nn.functional as F

    from ablate.engine.models import build_model

    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cudnn.allow_tf32 = bf16  # as the engine: fp32 means fp32, no TF32
    torch.backends.cuda.matmul.allow_tf32 = False
    info = input_size(dataset, None)
    torch.manual_seed(0)
    model = build_model(spec_of(variant), info).to(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    net = torch.compile(model, backend=compile_backend) if compile_backend else model
    x = torch.randn(batch, info.channels, info.size, info.size, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, info.classes, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    t1 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = time.perf_counter() - t1
    return {"images_per_second": batch * steps / seconds, "warmup_seconds": t1 - t0, "step_ms": 1000 * seconds / steps}


# --- The parts ------------------------------------------------------------------------------


def part_environment(c: Campaign, rec: dict[str, Any]) -> None:
    import torch

    from ablate.engine.bench import device_name

    dev = resolve(c.device)
    rec.update(device=str(dev), device_name=device_name(dev), cpu=device_name(torch.device("cpu")), cpus=os.cpu_count(),
               python=platform.python_version(), torch=torch.__version__, torchvision=version("torchvision"),
               numpy=version("numpy"), optuna=version("optuna"), pytest=version("pytest"), cuda=torch.version.cuda,
               cudnn=torch.backends.cudnn.version(),
               date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), commit=git_commit())
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        rec.update(gpu_memory_gib=round(props.total_memory / 2**30, 1), gpus=torch.cuda.device_count())
    c.save()
    rec["bf16_peak_tflops"] = round(bf16_peak_tflops(dev, c.sizes.peak_n), 3)
    rec["peak_matmul"] = f"{c.sizes.peak_n}^3 bf16, best of 3 x 20"


def version(package: str) -> str | None:
    """An installed package's version without importing it (torchvision takes seconds)."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None  # a copy of the tree without git
    if done.returncode != 0:
        return None
    return done.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def peak(c: Campaign) -> float | None:
    """The bf16 peak, on CUDA only: on a CPU the engine trains in fp32 (and bf16 matmuls are slow
    there), so an MFU against it would mean nothing."""
    env = c.results.get("environment", {})
    return env.get("bf16_peak_tflops") if str(env.get("device", "")).startswith("cuda") else None


def part_engine(c: Campaign, rec: dict[str, Any]) -> None:
    """ablate bench's measurement (run_bench) per case: baseline, then engine, in this process."""
    from ablate.engine.bench import run_bench

    rec["baseline_workers"] = c.sizes.baseline_workers
    rec["cases"] = []
    for case in c.sizes.engine:
        c.log(f"engine: {case.key}")
        r = run_bench(case.variant, case.dataset, device=c.device, batch_size=case.batch, images=case.images, size=case.size,
                      random_data=True, workers=c.sizes.baseline_workers, epochs=2)
        macs = macs_per_image(case.variant, case.dataset, case.size)
        rec["cases"].append({
            "case": case.key, "variant": r.variant, "dataset": r.dataset, "size": r.size, "batch": r.batch_size,
            "images": r.images, "engine_ips": round(r.engine_ips, 1), "baseline_ips": round(r.baseline_ips, 1),
            "ratio": round(r.ratio, 2), "macs": macs, "engine_mfu": rounded(mfu(r.engine_ips, macs, peak(c)), 4),
            "baseline_mfu": rounded(mfu(r.baseline_ips, macs, peak(c)), 4), "load": r.load,
        })
        c.save()


def rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


LEVERS = (  # name, bf16, channels_last, cudnn.benchmark: the first is the engine's own setting
    ("engine (bf16, channels_last, cudnn.benchmark)", True, True, True),
    ("fp32 (no TF32)", False, True, True),
    ("NCHW (no channels_last)", True, False, True),
    ("no cudnn.benchmark", True, True, False),
)


def part_levers(c: Campaign, rec: dict[str, Any]) -> None:
    """Each lever off in turn against the engine's setting; torch.compile on top, in a child process."""
    s = c.sizes
    dev = resolve(c.device)
    warmup, steps = s.lever_steps
    rec.update(variant=spec_of(s.lever_variant).name, dataset=s.lever_dataset, batch=s.lever_batch, steps=steps, configs=[])
    for name, bf16, channels_last, benchmark in LEVERS:
        r = step_rate(s.lever_variant, s.lever_dataset, device=dev, batch=s.lever_batch, warmup=warmup, steps=steps,
                      bf16=bf16, channels_last=channels_last, cudnn_benchmark=benchmark)
        rec["configs"].append({"config": name, "bf16": bf16, "channels_last": channels_last, "cudnn_benchmark": benchmark,
                               "images_per_second": round(r["images_per_second"], 1), "step_ms": round(r["step_ms"], 3)})
        c.save()
    engine = rec["configs"][0]["images_per_second"]
    for row in rec["configs"][1:]:  # what the lever buys: the engine's rate over the rate without it
        row["lever_buys"] = round(engine / row["images_per_second"], 2)
    c.save()
    args = {"variant": variant_arg(s.lever_variant), "dataset": s.lever_dataset, "batch": s.lever_batch,
            "warmup": warmup, "steps": steps, "backend": s.compile_backend}
    r = c.child("compile", args, "levers-compile", timeout=c.left())
    rec["compile"] = {"backend": s.compile_backend, "images_per_second": round(r["images_per_second"], 1),
                      "compile_seconds": round(r["compile_seconds"], 1), "lever_buys": round(r["images_per_second"] / engine, 2)}


def variant_arg(variant: str | VariantSpec) -> str | dict[str, Any]:
    """A variant for a child's JSON arguments: its name, or its spec's fields."""
    return variant if isinstance(variant, str) else dataclasses.asdict(variant)


def variant_from(arg: str | dict[str, Any]) -> str | VariantSpec:
    if isinstance(arg, str):
        return arg
    return VariantSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in arg.items()})


def pack_recipe(s: Sizes, epochs: int | None = None):
    from ablate.engine.train import Recipe

    return Recipe(epochs=epochs or s.pack_epochs, batch_size=s.pack_batch, schedule="constant", precision=PRECISION)


def part_packing(c: Campaign, rec: dict[str, Any]) -> None:
    """K runs fused into one network (train_runs), then P processes training one run each at once;
    images/s summed over the runs, against one run alone (fused K = 1)."""
    from ablate.engine.train import train_runs

    s = c.sizes
    dev = resolve(c.device)
    spec = spec_of(s.pack_variant)
    rec.update(variant=spec.name, dataset=s.pack_dataset, images=s.pack_images, batch=s.pack_batch, epochs=s.pack_epochs,
               fused=[], processes=[])
    data = random_splits(s.pack_dataset, s.pack_images, dev)
    one = None
    for k in s.fuse_ks:
        c.log(f"packing: fused K = {k}")
        results = train_runs(spec, pack_recipe(s), data, seeds=list(range(k)), device=dev)
        bad = [r for r in results if isinstance(r, Exception) or r.diverged]
        if bad:
            raise PartError(f"fused K = {k}: a run did not finish ({getattr(bad[0], 'reason', bad[0])})")
        ips = sum(r.images_per_second for r in results)
        one = one or ips
        rec["fused"].append({"k": k, "images_per_second": round(ips, 1), "over_one": round(ips / one, 2)})
        c.save()
    del data
    for p in s.processes:
        c.log(f"packing: {p} process(es)")
        row = worker_processes(c, p)
        row["over_one"] = round(row["images_per_second"] / one, 2) if one else None
        rec["processes"].append(row)
        c.save()


def worker_processes(c: Campaign, count: int) -> dict[str, Any]:
    """`count` children, each training one run of the packing net on the same device; they warm up,
    wait at a barrier (files), then train at once. Summed steady images/s, and the images of all
    over the window from the first start to the last end (which counts the stragglers)."""
    s = c.sizes
    gate = Path(tempfile.mkdtemp(prefix=f"barrier{count}-", dir=c.work))
    t0 = time.monotonic()
    children = []
    try:
        for i in range(count):
            args = {"variant": variant_arg(s.pack_variant), "dataset": s.pack_dataset, "images": s.pack_images,
                    "batch": s.pack_batch, "epochs": s.pack_epochs, "seed": i, "threads": max(1, (os.cpu_count() or 1) // count),
                    "ready": str(gate / f"ready{i}"), "go": str(gate / "go")}
            result = c.work / f"worker{count}-{i}.json"
            proc, log = c.spawn(c.child_args("worker", args, result), f"worker{count}-{i}")
            children.append((proc, log, result))
        while len(list(gate.glob("ready*"))) < count:
            if any(proc.poll() is not None for proc, _, _ in children):
                break  # one died before the barrier: collected below
            if c.left() < 1:
                raise PartError(f"{count} processes: not all ready within the budget")
            time.sleep(0.01)
        (gate / "go").touch()
        done = [c.finish(proc, log, c.left(), t0) for proc, log, _ in children]
    finally:
        for proc, _, _ in children:
            if proc.poll() is None:
                stop_group(proc)
    for child, (_, _, result) in zip(done, children):
        if child.rc != 0 or not result.is_file():
            raise PartError(f"{count} processes: a worker {'timed out' if child.timed_out else f'exited {child.rc}'}: {child.last_line()}")
    runs = [json.loads(result.read_text()) for _, _, result in children]
    window = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    return {"processes": count, "images_per_second": round(sum(r["images_per_second"] for r in runs), 1),
            "window_images_per_second": round(sum(r["images"] for r in runs) / window, 1)}


def study_toml(name: str, *, dataset: str = "fashion-mnist", depths: tuple[int, ...], width: int, epochs: int, seeds: int,
               batch_size: int, train_subset: int | None = None, test_subset: int | None = None) -> str:
    """The campaign's degradation study: plain and residual CIFAR-stem nets (option A) at `depths`,
    `seeds` final runs each, no search (a search would not fit the window). Precision auto: bf16
    on a GPU; fp32 in the smoke run on a CPU, where bf16 is slow and the other parts run it."""
    subsets = "".join(f"{k} = {v}\n" for k, v in (("train_subset", train_subset), ("test_subset", test_subset)) if v is not None)
    return (
        f'name = "{name}"\n'
        f'description = "GPU campaign: plain vs residual at {", ".join(map(str, depths))} layers, {epochs} epoch(s), {seeds} seeds"\n'
        f'dataset = "{dataset}"\n'
        f'[fixed]\nblock = "basic"\nactivation = "post"\nshortcut = "A"\nstem = "cifar"\nwidth = {width}\n'
        f'[grid]\nconnection = ["plain", "residual"]\ndepth = [{", ".join(map(str, depths))}]\n'
        f'[train]\nepochs = {epochs}\nbatch_size = {batch_size}\nlr = 0.1\nmomentum = 0.9\nweight_decay = 1e-4\n'
        f'schedule = "onecycle"\naugment = ["crop", "flip"]\nprecision = "auto"\n{subsets}'
        f'[seeds]\ncount = {seeds}\n'
    )


def part_study(c: Campaign, rec: dict[str, Any]) -> None:
    """`ablate run` on a SQLite file, then `ablate export`'s findings: the verdict as the report has it."""
    name = "campaign-degradation"
    folder = c.work / "study"
    folder.mkdir(parents=True, exist_ok=True)
    toml = folder / f"{name}.toml"
    toml.write_text(study_toml(name, **c.sizes.study))
    db = folder / "study.db"
    db.unlink(missing_ok=True)  # a new study every time: never continue an earlier campaign's
    storage = f"sqlite:///{db}"
    data = ["--data-dir", c.data_dir] if c.data_dir else []
    run = ["run", str(toml), "--storage", storage, "--device", c.device, "--no-report", "--workers", str(c.study_workers), *data]
    rec.update(study=c.sizes.study, workers=c.study_workers, command=f"python3 -m ablate {' '.join(run)}")
    export_time = 20  # ablate export imports pandas, scipy and Optuna: keep that much for it
    done = c.run([sys.executable, "-m", "ablate", *run], "study-run", timeout=max(1.0, c.left() - export_time))
    rec.update(wall_s=done.seconds, rc=done.rc, output_tail=done.output[-1500:])
    c.save()
    if done.timed_out:
        raise PartError(f"ablate run did not finish within {done.seconds:.0f} s (stopped; finished trials are stored)")
    if done.rc != 0:
        raise PartError(f"ablate run exited {done.rc}: {done.last_line()}")
    out_dir = folder / "export"
    export = c.run([sys.executable, "-m", "ablate", "export", name, "--storage", storage, "--format", "csv",
                    "--out-dir", str(out_dir)], "study-export", timeout=c.left())
    if export.rc != 0:
        raise PartError(f"ablate export {'timed out' if export.timed_out else f'exited {export.rc}'}: {export.last_line()}")
    rec["verdict"] = read_csv(out_dir / f"{name}-findings.csv", lambda col: col in ("topic", "answer", "difference", "p_adjusted", "real"))
    rec["variants"] = read_csv(out_dir / f"{name}-variants.csv", lambda col: col in ("variant", "params", "macs") or "error" in col)


def read_csv(path: Path, keep: Callable[[str], bool]) -> list[dict[str, Any]]:
    if not path.is_file():
        raise PartError(f"ablate export wrote no {path.name}")
    with open(path, newline="") as file:
        return [{k: number(v) for k, v in row.items() if keep(k)} for row in csv.DictReader(file)]


def number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "": None}.get(text, text)


def part_fmnist94(c: Campaign, rec: dict[str, Any]) -> None:
    """ResNet-20 on all of Fashion-MNIST (the files must be on disk) until the recipe ends; the time
    from the start of training to the first epoch at 94% test accuracy, and the best reached."""
    from ablate.engine.train import Recipe, load_data, train

    dev = resolve(c.device)
    spec = spec_of(c.sizes.fm_variant)
    recipe = Recipe(precision=PRECISION, **c.sizes.fm_recipe)
    t0 = time.monotonic()
    data = load_data("fashion-mnist", recipe, device=dev, data_dir=c.data_dir, download=False)
    rec.update(variant=spec.name, recipe=c.sizes.fm_recipe, data=data.source, train_images=len(data.train),
               test_images=len(data.test), load_seconds=round(time.monotonic() - t0, 1), epochs=[],
               best_accuracy=None, seconds_to_target=None)
    start = time.monotonic()

    def on_epoch(epoch) -> None:
        accuracy, elapsed = 1 - epoch.test_error, time.monotonic() - start
        rec["epochs"].append({"epoch": epoch.epoch, "test_accuracy": round(accuracy, 4), "elapsed_s": round(elapsed, 2),
                              "images_per_second": round(epoch.images_per_second, 1)})
        rec["best_accuracy"] = max(rec["best_accuracy"] or 0, round(accuracy, 4))
        if accuracy >= TARGET_ACCURACY and rec["seconds_to_target"] is None:
            rec["seconds_to_target"] = round(elapsed, 2)
        c.save()

    result = train(spec, recipe, data, device=dev, seed=0, callback=on_epoch)
    if result.diverged:
        raise PartError(f"diverged: {result.reason}")


def part_tests(c: Campaign, rec: dict[str, Any]) -> None:
    """Each test file with pytest -x in a child, one after the other, while time is left."""
    if importlib.util.find_spec("pytest") is None:
        raise PartError("pytest is not installed here; add its wheels (gpu-wheels DIR pytest pluggy iniconfig) and install them with the rest")
    rec["files"] = []
    for path in c.sizes.test_files:
        done = c.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", path], f"tests-{Path(path).stem}",
                     timeout=c.left())
        rec["files"].append({"file": path, "rc": done.rc, "seconds": done.seconds, "summary": done.last_line(),
                             **({"output_tail": done.output[-1500:]} if done.rc not in (0, 5) else {})})
        c.save()
    failed = [f["file"] for f in rec["files"] if f["rc"] not in (0, 5)]  # 5: nothing collected
    if failed:
        raise PartError(f"failed or timed out: {', '.join(failed)}")


PART_BODIES = {"environment": part_environment, "engine": part_engine, "levers": part_levers, "packing": part_packing,
               "study": part_study, "fmnist94": part_fmnist94, "tests": part_tests}


# --- Children ---------------------------------------------------------------------------------


def child_compile(args: dict[str, Any]) -> dict[str, Any]:
    """The engine's setting plus torch.compile: compile time is the warm-up's time less the same
    steps at the compiled rate."""
    dev = resolve(args["device"])
    r = step_rate(variant_from(args["variant"]), args["dataset"], device=dev, batch=args["batch"], warmup=args["warmup"],
                  steps=args["steps"], bf16=True, channels_last=True, cudnn_benchmark=True, compile_backend=args["backend"])
    steady = args["warmup"] * args["batch"] / r["images_per_second"]
    return {**r, "compile_seconds": max(0.0, r["warmup_seconds"] - steady)}


def child_worker(args: dict[str, Any]) -> dict[str, Any]:
    """One run of the packing net: warm up (CUDA context, cuDNN autotuning), wait for the barrier, train."""
    import torch

    from ablate.engine.train import Recipe, train

    torch.set_num_threads(args["threads"])
    dev = resolve(args["device"])
    spec = spec_of(variant_from(args["variant"]))
    data = random_splits(args["dataset"], args["images"], dev, seed=args["seed"])
    recipe = Recipe(epochs=args["epochs"], batch_size=args["batch"], schedule="constant", precision=PRECISION)
    train(spec, dataclasses.replace(recipe, epochs=1), data, device=dev, seed=args["seed"])
    Path(args["ready"]).touch()
    go = Path(args["go"])
    while not go.exists():
        time.sleep(0.005)
    start = time.time()  # wall clock: compared across processes
    result = train(spec, recipe, data, device=dev, seed=args["seed"])
    end = time.time()
    if result.diverged:
        raise RuntimeError(f"diverged: {result.reason}")
    return {"start": start, "end": end, "images": args["epochs"] * len(data.train), "images_per_second": result.images_per_second}


def child_main(kind: str, arguments: str, result: Path) -> None:
    args = json.loads(arguments)
    value = {"compile": child_compile, "worker": child_worker}[kind](args)
    write_atomically(result, json.dumps(value))


# --- Targets and the Markdown table -----------------------------------------------------------


def find(rows: list[dict[str, Any]] | None, key: str, value: Any) -> dict[str, Any] | None:
    return next((r for r in rows or [] if r.get(key) == value), None)


def _get(results: dict[str, Any], part: str, rows: str, key: str, value: Any, field_: str) -> float | None:
    row = find(results.get(part, {}).get(rows), key, value)
    return None if row is None else row.get(field_)


# (what the issue asks, how to read it from the results, the bound, "min" (at least) or "max" (at most)).
TARGETS: tuple[tuple[str, Callable[[dict[str, Any]], float | None], float, str], ...] = (
    ("engine / seed pipeline, ResNet-20 (x)", lambda r: _get(r, "engine", "cases", "case", "resnet-20", "ratio"), 10, "min"),
    ("engine / seed pipeline, ResNet-110 (x)", lambda r: _get(r, "engine", "cases", "case", "resnet-110", "ratio"), 3, "min"),
    ("ResNet-18 at 224 px, MFU", lambda r: _get(r, "engine", "cases", "case", "resnet-18-224", "engine_mfu"), 0.30, "min"),
    ("4 packed trials (processes) / one run (x)", lambda r: _get(r, "packing", "processes", "processes", 4, "over_one"), 2.5, "min"),
    ("fused K = 8 ResNet-20 / one run (x)", lambda r: _get(r, "packing", "fused", "k", 8, "over_one"), 4, "min"),
    ("degradation study on full Fashion-MNIST, wall (s)", lambda r: study_wall(r), 600, "max"),
    ("94% on Fashion-MNIST, seconds", lambda r: r.get("fmnist94", {}).get("seconds_to_target"), 30, "max"),
)


def study_wall(results: dict[str, Any]) -> float | None:
    study = results.get("study", {})
    return study.get("wall_s") if study.get("status") == "ok" else None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, read, bound, kind in TARGETS:
        try:
            value = read(results)
        except (TypeError, KeyError, AttributeError):
            value = None
        met = None if value is None else (value >= bound if kind == "min" else value <= bound)
        rows.append({"target": name, "bound": f"{'>=' if kind == 'min' else '<='} {bound}", "measured": value, "met": met})
    return rows


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value).replace("|", "/")


def table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(col)) for col in columns) + " |" for row in rows]
    return lines


def markdown(results: dict[str, Any]) -> str:
    """campaign.md: the status of every part, the targets, then each part's figures."""
    run, env = results.get("campaign", {}), results.get("environment", {})
    lines = [f"# GPU campaign{' (smoke)' if run.get('smoke') else ''}", "",
             f"{env.get('device_name', '?')} ({env.get('device', '?')}), torch {env.get('torch', '?')}, CUDA {env.get('cuda')}, "
             f"Python {env.get('python', '?')}, {env.get('cpus', '?')} CPUs; bf16 matmul peak {cell(env.get('bf16_peak_tflops'))} "
             f"TFLOPS; commit {env.get('commit')}; {env.get('date', '?')}; budget {run.get('budget_s')} s, wall {run.get('wall_s')} s.", ""]
    parts = [{"part": p, **{k: results.get(p, {}).get(k) for k in ("status", "seconds", "budget_s", "error")}} for p in PARTS]
    lines += table([p for p in parts if p["status"] is not None], ["part", "status", "seconds", "budget_s", "error"]) + [""]
    lines += ["## Targets (issue 24)", ""]
    if run.get("smoke"):
        lines += ["Smoke run: tiny nets on a few hundred images; its figures are not comparable with the targets.", ""]
    lines += table([{**t, "met": {True: "yes", False: "NO", None: "not measured"}[t["met"]]} for t in results.get("targets", [])],
                   ["target", "bound", "measured", "met"]) + [""]
    sections = (
        ("engine", "cases", "Engine against the seed-style pipeline (images/s; MFU against the bf16 peak)",
         ["case", "variant", "size", "batch", "engine_ips", "baseline_ips", "ratio", "macs", "engine_mfu", "baseline_mfu"]),
        ("levers", "configs", "Levers on the training step (one fixed batch on the device)",
         ["config", "images_per_second", "step_ms", "lever_buys"]),
        ("packing", "fused", "Fused runs: images/s summed over K runs", ["k", "images_per_second", "over_one"]),
        ("packing", "processes", "Worker processes on one device: images/s summed",
         ["processes", "images_per_second", "window_images_per_second", "over_one"]),
        ("study", "verdict", "Study verdict (ablate export, findings)", ["topic", "answer", "difference", "p_adjusted", "real"]),
        ("fmnist94", "epochs", "Fashion-MNIST to 94%", ["epoch", "test_accuracy", "elapsed_s", "images_per_second"]),
        ("tests", "files", "Tests", ["file", "rc", "seconds", "summary"]),
    )
    for part, rows, title, columns in sections:
        if results.get(part, {}).get(rows):
            lines += [f"## {title}", ""] + table(results[part][rows], columns) + [""]
    compile_ = results.get("levers", {}).get("compile")
    if compile_:
        lines += [f"torch.compile ({compile_['backend']}): {cell(compile_['images_per_second'])} images/s, "
                  f"{compile_['lever_buys']}x the engine's setting, compile time {compile_['compile_seconds']} s.", ""]
    study = results.get("study", {})
    if study.get("wall_s") is not None:
        lines += [f"Study: `{study.get('command')}` took {study['wall_s']} s (rc {study.get('rc')}).", ""]
    return "\n".join(lines)


# --- Main -----------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for campaign.json, campaign.md and campaign.log")
    parser.add_argument("--smoke", action="store_true", help="every part in seconds on any device (tiny nets, subsets)")
    parser.add_argument("--budget-s", type=float, default=480, help="seconds for all parts together (default 480)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--data-dir", help="where Fashion-MNIST is (default $ABLATE_DATA, then ablate's usual places)")
    parser.add_argument("--work", type=Path, help="folder for scratch files (default: a new temporary folder)")
    parser.add_argument("--study-workers", type=int, default=1, help="ablate run --workers for the study (default 1)")
    parser.add_argument("--study-epochs", type=int, help="epochs of the study (default 1; smoke 2)")
    parser.add_argument("--compile-backend", help="torch.compile backend for the compile lever (default inductor; smoke aot_eager)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-args", help=argparse.SUPPRESS)
    parser.add_argument("--child-result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.budget_s <= 0 or args.study_workers < 1 or (args.study_epochs is not None and args.study_epochs < 1):
        parser.error("--budget-s, --study-workers and --study-epochs must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        child_main(args.child, args.child_args, args.child_result)
        return 0
    if args.smoke:
        # One CPU thread a process, children included (they inherit it): on a small machine shared
        # with other work, two threads wait for each other at every parallel region and the smoke
        # run gets 10-40x slower (docs/benchmarks.md, "Runs that do not count").
        os.environ["OMP_NUM_THREADS"] = "1"
    sizes = SMOKE if args.smoke else FULL
    if args.study_epochs:
        sizes = dataclasses.replace(sizes, study={**sizes.study, "epochs": args.study_epochs})
    if args.compile_backend:
        sizes = dataclasses.replace(sizes, compile_backend=args.compile_backend)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="ablate-campaign-"))
    work.mkdir(parents=True, exist_ok=True)
    c = Campaign(out=args.out, work=work, sizes=sizes, smoke=args.smoke, budget_s=args.budget_s, device=args.device,
                 data_dir=args.data_dir or os.environ.get("ABLATE_DATA"), study_workers=args.study_workers)
    (args.out / "campaign.log").write_text("")
    c.results["campaign"]["argv"] = sys.argv[1:] if argv is None else argv

    def terminated(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, terminated)
    try:
        for name in PARTS:
            c.run_part(name, PART_BODIES[name])
        c.results["campaign"]["status"] = "done"
    except Terminated:
        c.results["campaign"]["status"] = "terminated"
    c.save()
    c.log(f"done: {args.out / 'campaign.json'}, {args.out / 'campaign.md'}")
    return 0 if c.results["campaign"]["status"] == "done" else 143


if __name__ == "__main__":
    sys.exit(main())
