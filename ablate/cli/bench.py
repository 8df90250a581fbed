"""`ablate bench`: the engine's training throughput against a seed-style DataLoader baseline."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from ablate.cli.common import console, err, fail
from ablate.engine.bench import DEFAULT_IMAGES, BenchResult, FuseBenchResult, run_bench, run_fuse_bench

__all__ = ["bench"]


def _log(message: str) -> None:
    err.print(Text(message, style="dim"), highlight=False)


def _print_fuse(r: FuseBenchResult) -> None:
    table = Table(title=Text(f"{r.runs} runs of {r.variant} on {r.dataset} ({r.size} px), {r.device}: training images/s summed over the runs"))
    table.add_column("", justify="left")
    table.add_column("value", justify="right")
    table.add_row(f"fused (one network of {r.runs} runs)", f"{r.fused_ips:,.1f}")
    table.add_row("one after another", f"{r.sequential_ips:,.1f}")
    if r.concurrent_ips is not None:
        table.add_row(f"{r.runs} processes at once", f"{r.concurrent_ips:,.1f}")
    table.add_row("[bold]speedup (fused / one after another)[/]", f"[bold]{r.speedup:.2f}x[/]")
    table.add_section()
    for key in ("device_name", "torch", "cpus", "threads", "batch_size", "images", "epochs", "data", "seed", "date"):
        table.add_row(key, str(getattr(r, key)))
    table.add_row("load (1 min, before / after)", f"{r.load[0]:.2f} / {r.load[1]:.2f}")
    if r.others_cpu is not None:
        table.add_row("CPU cores used by other processes", f"{r.others_cpu:.2f}")
    console(120).print(table)
def bench(
    variant: Annotated[str, typer.Option(help="Registered variant name (see ablate.spec.variants.list_variants).")] = "resnet-20",
    dataset: Annotated[str, typer.Option(help="Dataset whose image shape and classes are used.")] = "cifar10",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Training batch size, both sides.")] = 128,
    images: Annotated[int, typer.Option(help="Training images per epoch.")] = DEFAULT_IMAGES,
    size: Annotated[int | None, typer.Option(help="Train at this resolution (e.g. 224); default the dataset's.", show_default=False)] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data dir (default $ABLATE_DATA, else ~/.cache/ablate/data).", show_default=False)] = None,
    random_data: Annotated[bool, typer.Option("--random-data", help="Random uint8 images of the dataset's shape instead of its files.")] = False,
    workers: Annotated[int, typer.Option(help="The baseline DataLoader's worker processes.")] = 2,
    epochs: Annotated[int, typer.Option(help="Epochs per side; the first is warm-up, not timed.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed for the network, data order and augmentation.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object instead of a table.")] = False,
    fuse: Annotated[int | None, typer.Option("--fuse", help="Instead: K runs (seeds) fused into one network against K runs one after another and K processes at once.", show_default=False)] = None,
) -> None:
    """Training throughput (images/s) of the engine against a seed-style DataLoader baseline."""
    from ablate.engine.data import DataError

    try:
        if fuse is not None:
            f = run_fuse_bench(variant, dataset, runs=fuse, device=device, batch_size=batch_size, images=images, size=size,
                               data_dir=data_dir, random_data=random_data, epochs=epochs, seed=seed,
                               log=_log)
            if as_json:
                sys.stdout.write(json.dumps(f.to_dict(), indent=2) + "\n")
            else:
                _print_fuse(f)
            return
        r = run_bench(variant, dataset, device=device, batch_size=batch_size, images=images, size=size,
                      data_dir=data_dir, random_data=random_data, workers=workers, epochs=epochs, seed=seed,
                      log=_log)
    except DataError as exc:
        raise fail(f"pass --random-data to benchmark {dataset} on random images of its shape (throughput does "
                    f"not depend on pixel values), or put its files on disk: {' '.join(str(exc).split())}") from None
    except ValueError as exc:
        raise fail(str(exc)) from None
    if as_json:
        sys.stdout.write(json.dumps(r.to_dict(), indent=2) + "\n")
        return
    _print_bench(r)


def _print_bench(r: BenchResult) -> None:
    table = Table(title=Text(f"{r.variant} on {r.dataset} ({r.size} px), {r.device}: training images/s"))
    table.add_column("", justify="left")
    table.add_column("value", justify="right")
    table.add_row("engine", f"{r.engine_ips:,.1f}")
    table.add_row("baseline (DataLoader, per-sample PIL transforms, fp32)", f"{r.baseline_ips:,.1f}")
    table.add_row("[bold]ratio (engine / baseline)[/]", f"[bold]{r.ratio:.2f}x[/]")
    table.add_section()
    for key in ("device_name", "torch", "cpus", "threads", "batch_size", "images", "epochs", "workers", "augment",
                "data", "seed", "date"):
        value = getattr(r, key)
        table.add_row(key, ", ".join(value) if isinstance(value, tuple) else str(value))
    table.add_row("load (1 min, before / after)", f"{r.load[0]:.2f} / {r.load[1]:.2f}")
    if r.others_cpu is not None:
        table.add_row("CPU cores used by other processes", f"{r.others_cpu:.2f}")
    console(120).print(table)
