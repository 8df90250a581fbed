"""What the diagnostics (ablate.engine.diagnostics) add to the quick study's training, in one process.

For each variant of studies/quick.toml: two seeds trained as one fused pair (as `--fuse auto` does on
a CPU), then both seeds' diagnostics with the study's [diagnostics] settings (or `images` given as
the argument). Two ratios of diagnostics to training:

- MACs: multiply-accumulates of every conv and linear layer actually run, counted by a forward hook,
  a pass that builds a graph counted three times (forward and backward, the usual rule): exact and
  untouched by other jobs on the machine;
- CPU: process time (less disturbed by other jobs than wall time, but not immune).

    uv run python benchmarks/diagnostics_ratio.py [images]
"""

import dataclasses
import pathlib
import sys
import tempfile
import time

import torch
from torch import nn

from ablate.engine import diagnostics as D
from ablate.engine.checkpoint import read
from ablate.engine.train import load_data, train_runs
from ablate.spec.study import load_study

MACS = [0]


def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        macs = output.numel() * (module.in_channels // module.groups) * kh * kw
    else:
        macs = output.numel() * module.in_features
    MACS[0] += macs * (3 if torch.is_grad_enabled() and output.requires_grad else 1)


def hook_all() -> None:
    orig = nn.Module.__call__

    def call(self, *a, **k):
        out = orig(self, *a, **k)
        if isinstance(self, (nn.Conv2d, nn.Linear)):
            count(self, a, out)
        return out

    nn.Module.__call__ = call


def main() -> None:
    st = load_study("studies/quick.toml")
    settings = st.diagnostics if len(sys.argv) < 2 else dataclasses.replace(st.diagnostics, images=int(sys.argv[1]))
    data = load_data(st.data, st.recipe, device="cpu")
    dev = torch.device("cpu")
    hook_all()
    tot = {"train_macs": 0, "diag_macs": 0, "train_cpu": 0.0, "diag_cpu": 0.0}
    for v in st.variants:
        tmp = pathlib.Path(tempfile.mkdtemp())
        cks = [tmp / "1.pt", tmp / "2.pt"]
        MACS[0], t0 = 0, time.process_time()
        train_runs(v, st.recipe, data, seeds=[1, 2], checkpoints=cks, device=dev)
        train_macs, train_cpu = MACS[0], time.process_time() - t0
        MACS[0], t0 = 0, time.process_time()
        for seed, ck in zip([1, 2], cks):
            D.at_init(v, st.recipe, data, seed, settings, dev)
            D.after_training(v, st.recipe, data, seed, read(ck)["model"], settings, dev)
        diag_macs, diag_cpu = MACS[0], time.process_time() - t0
        for k, x in (("train_macs", train_macs), ("diag_macs", diag_macs), ("train_cpu", train_cpu), ("diag_cpu", diag_cpu)):
            tot[k] += x
        print(f"{v.name}: MACs {diag_macs / train_macs:.1%}, CPU {diag_cpu:.1f} s / {train_cpu:.1f} s = {diag_cpu / train_cpu:.1%}", flush=True)
    print(f"quick study, images={settings.images}: MACs {tot['diag_macs'] / tot['train_macs']:.1%} of training, "
          f"CPU {tot['diag_cpu'] / tot['train_cpu']:.1%}")


if __name__ == "__main__":
    main()
