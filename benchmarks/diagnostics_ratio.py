"""Ratio of diagnostics CPU time (process time: less sensitive to other jobs than wall time) to training time, within one process: the quick study's recipe, each variant
trained as a fused pair of seeds (as --fuse auto does on a CPU), then both seeds' diagnostics."""
import sys, time, tempfile, pathlib, dataclasses, torch
from ablate.spec.study import load_study
from ablate.engine.train import load_data, train_runs
from ablate.engine import diagnostics as D
from ablate.engine.checkpoint import read
st = load_study("studies/quick.toml")
data = load_data(st.data, st.recipe, device="cpu")
dev = torch.device("cpu")
images = [int(a) for a in sys.argv[1].split(",")]
tot_train = 0; tot = {n: 0.0 for n in images}
for v in st.variants:
    tmp = pathlib.Path(tempfile.mkdtemp())
    cks = [tmp / "1.pt", tmp / "2.pt"]
    t0 = time.process_time(); train_runs(v, st.recipe, data, seeds=[1, 2], checkpoints=cks, device=dev); tt = time.process_time() - t0
    tot_train += tt
    line = f"{v.name}: train pair {tt:.1f}s"
    for n in images:
        s = dataclasses.replace(st.diagnostics, images=n)
        t0 = time.process_time()
        for seed, ck in zip([1, 2], cks):
            D.at_init(v, st.recipe, data, seed, s, dev)
            D.after_training(v, st.recipe, data, seed, read(ck)["model"], s, dev)
        td = time.process_time() - t0; tot[n] += td
        line += f"; images={n}: diagnostics {td:.1f}s ({td / tt:.1%})"
    print(line, flush=True)
print("all variants: " + "; ".join(f"images={n}: {tot[n] / tot_train:.1%} of training" for n in images))
