"""The report: its tables on studies written to a temporary SQLite storage as docs/storage.md says
`ablate run` writes them, the page's escaping and self-containment, a real headless Chromium
rendering it offline, and a real (tiny) training run read back.

The fixture studies are synthetic but shaped like real results: plain nets whose training error
rises with depth, residual nets whose does not, several seeds, a searched learning rate, a
diverged, a pruned and an interrupted trial, a pre-activation pair and a basic/bottleneck pair.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
import re
import select
import shutil
import subprocess
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
from conftest import QUICK_STUDY
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from ablate import report
from ablate.analysis import stats
from ablate import storage as S
from ablate import analysis as tables
from ablate.engine.data import DATASETS, FASHION_MNIST_SYSTEM_DIR
from ablate.engine.models import measure
from ablate.spec.study import load_study as load_study_file
from ablate.analysis import ReportError, compare
from ablate.spec.variants import VariantSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "reports" / "artifacts"
VERSIONS = {"ablate": "0.1.0", "python": "3.11.9", "torch": "2.15.0", "torchvision": "0.30.0", "optuna": "5.0.0"}
RECIPE = {"epochs": 6, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4,
          "schedule": "step", "milestones": [0.5, 0.75], "gamma": 0.1, "warmup_epochs": 0.0, "warmup_lr": 0.01,
          "label_smoothing": 0.0, "augment": ["crop", "flip"], "train_subset": None, "test_subset": None, "val_size": 0,
          "resize": None, "compile": False, "points_per_epoch": 10}
STEPS_PER_EPOCH = 390  # 50,000 CIFAR-10 images in batches of 128, the last partial batch dropped
RECIPE_PARAMS = ("lr", "weight_decay", "momentum", "batch_size", "epochs", "schedule")


# =========================================================================== fixture builder


def stages_of(spec: VariantSpec) -> list[str]:
    return ["stem", *(f"stage{i + 1}" for i in range(len(spec.blocks))), "head"]


def final_errors(spec: VariantSpec, seed: int, lr: float) -> tuple[float, float]:
    """Plausible final (train, test) errors: plain nets degrade with depth, residual nets improve
    slightly; pre-activation and bottlenecks help a little; a learning rate far from 0.1 hurts."""
    rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode())])
    if spec.connection == "plain":
        train = 0.02 + 0.0012 * (spec.depth - 20)
    else:
        train = max(0.004, 0.02 - 0.00015 * (spec.depth - 20))
    if spec.activation == "pre":
        train *= 0.85
    if spec.block == "bottleneck":
        train *= 0.9
    train += 0.04 * math.log10(lr / 0.1) ** 2 + rng.normal(0, 0.0015)
    test = train + 0.055 + rng.normal(0, 0.0015)
    return float(train), float(test)


def history(spec: VariantSpec, seed: int, lr: float, epochs: int, points: int = 10, val: bool = False) -> list[dict[str, Any]]:
    """Epoch records as `ablate.engine.train.Epoch` (asdict), decaying towards the final errors, with a
    step at each lr milestone; per-stage gradient norms that vanish towards the stem of deep plain
    nets; `points` evenly spaced training points per epoch, running from the previous epoch's
    training error to this one's (none: as stored before points existed). With `val`, a
    validation error close to the test error (a held-out split of the training set)."""
    train_f, test_f = final_errors(spec, seed, lr)
    out = []
    previous = 0.9
    for e in range(1, epochs + 1):
        decay = math.exp(-(e - 1) / 1.6) * (1.3 if e <= epochs // 2 else 0.5 if e <= 3 * epochs // 4 else 0.1)
        train = train_f + (0.6 - train_f) * decay * 0.5
        test = test_f + (0.6 - test_f) * decay * 0.45
        head = 0.6 * math.exp(-e / epochs)
        names = stages_of(spec)
        norms = {}
        for i, s in enumerate(names):
            dist = len(names) - 1 - i  # stages between this one and the head
            per = 0.5 ** (spec.depth / 20) if spec.connection == "plain" else 0.9
            norms[s] = head * per ** dist
        record = {"epoch": e, "train_loss": train * 3, "train_error": train, "test_error": test,
                  "val_error": test + 0.004 * math.sin(e + seed) if val else None,
                  "lr": lr * (0.1 if e > epochs // 2 else 1), "seconds": 2.0 + spec.depth / 20,
                  "images_per_second": 50_000 / (2.0 + spec.depth / 20), "grad_norms": norms}
        if points:
            ramp = [previous + (train - previous) * (k + 0.5) / points for k in range(points)]
            record["points"] = [{"iteration": (e - 1) * STEPS_PER_EPOCH + (k + 1) * STEPS_PER_EPOCH // points,
                                 "train_loss": err * 3, "train_error": err} for k, err in enumerate(ramp)]
        out.append(record)
        previous = train
    return out


@dataclass
class Run:
    """One trial to write: a variant's unit, how it ended, and optional overrides."""

    spec: VariantSpec
    kind: str = "final"
    index: int = 0
    seed: int = 1
    lr: float = 0.1
    state: TrialState = TrialState.COMPLETE
    failure: str | None = None
    diverged_epoch: int | None = None
    stop_epoch: int | None = None  # a pruned, failed or running trial stops early
    extra: dict[str, Any] = field(default_factory=dict)


def variant_entry(spec: VariantSpec, dataset: str) -> dict[str, Any]:
    params, macs = measure(spec, DATASETS[dataset])
    return {"name": spec.name, **spec.axes(), "params": params, "macs": macs}


def distribution(key: str, value: Any, search: dict[str, Any] | None, choices: dict[str, list[Any]]):
    """As the driver declares them: searched keys by their space; fixed strings as categoricals
    whose choices are every value the study uses (Optuna needs the same choices in every trial)."""
    space = (search or {}).get("space", {})
    if key in space:
        sp = space[key]
        if "choices" in sp:
            return CategoricalDistribution(sp["choices"])
        return FloatDistribution(sp["low"], sp["high"], log=sp.get("log", False))
    if isinstance(value, bool) or isinstance(value, str):
        return CategoricalDistribution(choices[key])
    if isinstance(value, int):
        return IntDistribution(value, value)
    return FloatDistribution(value, value)


def trial_params(r: Run, recipe: dict[str, Any]) -> dict[str, Any]:
    return {**S.spec_params(r.spec), "seed": r.seed, **{k: {**recipe, "lr": r.lr}[k] for k in RECIPE_PARAMS}}


def fast_storage(url: str) -> optuna.storages.RDBStorage:
    """An SQLite storage that does not fsync every write: fixtures only, a crash loses nothing here."""
    from sqlalchemy import event

    storage = optuna.storages.RDBStorage(url)

    def pragmas(connection, _record) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA synchronous=OFF")
        cursor.close()

    event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # reconnect with the pragma
    return storage


def write_study(url: str | optuna.storages.BaseStorage, name: str, runs: list[Run], *, dataset: str = "cifar10", description: str = "",
                seeds: int = 3, search: dict[str, Any] | None = None, epochs: int = 6, study_file: str | None = None,
                units: int | None = None, variants: list[VariantSpec] | None = None, points: int = 10) -> optuna.Study:
    """A study in `url` exactly as docs/storage.md says `ablate run` stores one."""
    specs = variants or list(dict.fromkeys(r.spec for r in runs))
    study = optuna.create_study(storage=url, study_name=name, direction="minimize")
    searched = search is not None
    recipe = {**RECIPE, "epochs": epochs, "val_size": 5000 if searched else 0}  # a search needs a validation split
    metric = "val_error" if searched else "test_error"  # what the driver optimises (driver.objective_metric)
    text = study_file if study_file is not None else f'name = "{name}"\ndescription = "{description}"\ndataset = "{dataset}"\n'
    attrs = S.StudyAttrs(
        ablate_version="0.1.0", study_file=text, study_path=f"studies/{name}.toml", description=description,
        dataset=dataset, variants=[variant_entry(s, dataset) for s in specs], recipe=recipe, search=search,
        seeds=seeds, units=units if units is not None else len({(r.spec, r.kind, r.index) for r in runs}),
        objective=metric,
    )
    definition = json.dumps({"variants": attrs.variants, "recipe": recipe, "search": search, "seeds": seeds, "dataset": dataset}, sort_keys=True)
    dataclasses.replace(attrs, definition=definition).write(study)
    all_params = [trial_params(r, recipe) for r in runs]
    choices: dict[str, list[Any]] = {}
    for params in all_params:
        for k, v in params.items():
            if isinstance(v, (str, bool)) and v not in choices.setdefault(k, []):
                choices[k].append(v)
    for r, params in zip(runs, all_params):
        entry = variant_entry(r.spec, dataset)
        hist = history(r.spec, r.seed, r.lr, epochs, points, val=searched)
        if r.stop_epoch is not None:
            hist = hist[: r.stop_epoch]
        trial_recipe = {**recipe, "lr": r.lr}
        dists = {k: distribution(k, v, search, choices) for k, v in params.items()}
        a = S.TrialAttrs(variant=r.spec.name, unit=f"{r.spec.name}/{r.kind}/{r.index}", kind=r.kind, index=r.index,
                         seed=r.seed, params=entry["params"], macs=entry["macs"], device="cuda:0", versions=VERSIONS,
                         recipe=trial_recipe, failure=r.failure, diverged_epoch=r.diverged_epoch)
        if r.state != TrialState.RUNNING:
            a = dataclasses.replace(a, history=hist, seconds=sum(h["seconds"] for h in hist),
                                    images_per_second=float(np.mean([h["images_per_second"] for h in hist[1:] or hist])) if hist else None)
        if r.state == TrialState.COMPLETE:
            a = dataclasses.replace(a, train_error=hist[-1]["train_error"], test_error=hist[-1]["test_error"], val_error=hist[-1]["val_error"])
        a = dataclasses.replace(a, **r.extra)
        ua = a.to_user_attrs()
        study.add_trial(optuna.trial.create_trial(
            state=r.state, value=hist[-1][metric] if r.state == TrialState.COMPLETE else None, params=params,
            distributions=dists, user_attrs=ua, intermediate_values={h["epoch"]: h[metric] for h in hist},
        ))
    return study


def V(connection: str = "residual", depth: int = 20, **kw: Any) -> VariantSpec:
    return VariantSpec(connection=connection, depth=depth, **kw)


DEPTHS = (20, 32, 44, 56)
LR_SEARCH = {"trials": 4, "space": {"lr": {"low": 0.01, "high": 1.0, "log": True}}, "sampler": "tpe", "pruner": "median"}


def everything_specs() -> list[VariantSpec]:
    specs = [V(c, d) for c in ("plain", "residual") for d in DEPTHS]
    return specs + [V("residual", 56, activation="pre"), V("residual", 110), V("residual", 110, activation="pre"),
                    V("residual", 56, block="bottleneck")]


def everything_runs() -> list[Run]:
    """Every section of the report: degradation at 20-56 layers on CIFAR-10 (the paper's nets),
    a searched lr, 3 seeds, a diverged, a pruned, an interrupted and a running trial, a
    pre-activation pair at 56 and 110 layers and a basic/bottleneck pair at 56."""
    runs = []
    for s in everything_specs():
        for i, lr in enumerate((0.02, 0.05, 0.1, 0.3)):
            runs.append(Run(s, kind="search", index=i, seed=0, lr=lr))
        for seed in (1, 2, 3):
            runs.append(Run(s, kind="final", index=seed - 1, seed=seed, lr=0.1))
    runs.append(Run(V("plain", 56), kind="search", index=4, seed=0, lr=0.9, state=TrialState.FAIL, stop_epoch=2,
                    failure="diverged: loss became nan at epoch 3, step 1170 (lr 0.9)", diverged_epoch=3))
    runs.append(Run(V("plain", 44), kind="search", index=4, seed=0, lr=0.8, state=TrialState.PRUNED, stop_epoch=3))
    # A unit killed mid-trial: a FAIL without `failure`, retried by the next trial of the unit.
    runs.insert(0, Run(V("residual", 20), kind="final", index=0, seed=1, state=TrialState.FAIL, stop_epoch=2))
    runs.append(Run(V("residual", 110, activation="pre"), kind="final", index=3, seed=4, state=TrialState.RUNNING, stop_epoch=2))
    return runs


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> str:
    """One SQLite file holding every fixture study."""
    path = tmp_path_factory.mktemp("storage") / "studies.db"
    url = f"sqlite:///{path}"
    fast = fast_storage(url)
    write_study(fast, "everything", everything_runs(), search=LR_SEARCH, description="Everything: degradation, search, pairs",
                variants=everything_specs())
    # One seed, no search, stored before training points existed: the curves fall back to epochs.
    write_study(fast, "one-seed", [Run(V(c, d, width=8), seed=1) for c in ("plain", "residual") for d in (8, 20, 32)],
                dataset="fashion-mnist", seeds=1, description="one seed", points=0)
    # Residual only, one depth, no search, no failures: most sections do not apply.
    write_study(fast, "single", [Run(V("residual", 20), seed=s) for s in (1, 2)], seeds=2)
    # He et al. 2016b: post vs pre at 110 (basic) and 164 (bottleneck), 2 seeds.
    write_study(fast, "preact", [Run(V("residual", d, activation=a, block=b), seed=s)
                                for a in ("post", "pre") for d, b in ((110, "basic"), (164, "bottleneck")) for s in (1, 2)], seeds=2)
    # Just created: variants and units known, nothing trained yet but one trial running.
    write_study(fast, "fresh", [Run(V("plain", 20), seed=1, state=TrialState.RUNNING, stop_epoch=1)],
                variants=[V("plain", 20), V("residual", 20)], units=4, seeds=2)
    # A hostile study: markup in every string a study file or the storage can carry.
    hostile = "<script>document.title='pwned';window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">"
    write_study(fast, "hostile", [
        Run(V("plain", 20), seed=1), Run(V("plain", 32), seed=1), Run(V("residual", 20), seed=1),
        Run(V("plain", 32), seed=2, state=TrialState.FAIL, stop_epoch=1, failure=f"boom {hostile}"),
    ], seeds=1, description=f"A description with {hostile}", study_file=f'name = "hostile"\n# </pre>{hostile}\n')
    fast.engine.dispose()
    return url


# =========================================================================== tables


def load(storage: str, name: str) -> tables.StudyResults:
    return tables.load_results(name, storage)


def test_missing_study_is_a_clear_error_listing_the_studies(storage):
    with pytest.raises(ReportError) as info:
        tables.open_study("nope", storage)
    msg = str(info.value)
    assert "'nope' is not in storage" in msg and "everything" in msg and "one-seed" in msg


def test_missing_sqlite_file_is_an_error_and_is_not_created(tmp_path):
    path = tmp_path / "typo.db"
    with pytest.raises(ReportError, match="no such SQLite file"):
        report.write_report("x", f"sqlite:///{path}", tmp_path / "x.html")
    assert not path.exists()


def test_safe_url_hides_the_password():
    assert "secret" not in S.safe_url("postgresql://ablate:secret@db.example:5432/ablate")
    assert S.safe_url("sqlite:///a.db") == "sqlite:///a.db"


def test_trials_table_has_one_row_per_trial_with_axes_states_and_hyperparameters(storage):
    d = load(storage, "everything")
    t = d.trials
    assert len(t) == len(everything_runs())
    assert list(t["number"]) == list(range(len(t)))
    assert {"lr", "weight_decay", "momentum", "batch_size", "epochs", "schedule"} <= set(t.columns)
    assert t["state"].value_counts().to_dict() == {"COMPLETE": 84, "FAIL": 2, "PRUNED": 1, "RUNNING": 1}
    first = t.iloc[0]  # the interrupted unit
    assert first["state"] == "FAIL" and first["interrupted"] and pd.isna(first["failure"]) and first["variant"] == "resnet-20"
    diverged = t[t["diverged_epoch"].notna()].iloc[0]
    assert diverged["variant"] == "plain-56" and diverged["diverged_epoch"] == 3 and "nan" in diverged["failure"]
    assert not diverged["interrupted"]
    plain = t[t["variant"] == "plain-20"].iloc[0]
    assert (plain["connection"], plain["shortcut"], plain["blocks"], plain["depth"], plain["width"]) == ("plain", "none", "3-3-3", 20, 16)
    assert plain["params"] == 272_474 or plain["params"] == pytest.approx(0.27e6, rel=0.02)
    done = t[t["state"] == "COMPLETE"]
    assert (done["value"] == done["val_error"]).all() and (done["value"] != done["test_error"]).all()  # searched: on validation
    assert done["train_error"].between(0, 1).all() and done["epochs_done"].eq(6).all()
    pruned = t[t["state"] == "PRUNED"].iloc[0]
    assert pruned["epochs_done"] == 3 and not math.isnan(pruned["last_value"]) and math.isnan(pruned["value"])
    running = t[t["state"] == "RUNNING"].iloc[0]
    assert running["epochs_done"] == 2  # from its intermediate values: no history yet
    assert json.loads(done.iloc[0]["versions"]) == VERSIONS


def test_epochs_table_has_every_epoch_and_per_stage_gradient_norms(storage):
    d = load(storage, "everything")
    e = d.epochs
    assert {"grad_stem", "grad_stage1", "grad_stage2", "grad_stage3", "grad_head"} <= set(e.columns)
    one = e[e["number"] == 1]
    assert list(one["epoch"]) == [1, 2, 3, 4, 5, 6]
    running = e[e["state"] == "RUNNING"]
    assert list(running["epoch"]) == [1, 2] and running["test_error"].notna().all() and running["train_error"].isna().all()
    long = tables.grad_norms_long(e)
    assert set(long["stage"]) == {"stem", "stage1", "stage2", "stage3", "head"}
    assert len(long) == e[["grad_stem", "grad_stage1", "grad_stage2", "grad_stage3", "grad_head"]].notna().sum().sum()


def test_variant_summary_is_mean_and_std_over_final_runs_only(storage):
    d = load(storage, "everything")
    s = d.summary.set_index("variant")
    assert list(d.summary["variant"][:4]) == ["plain-20", "plain-32", "plain-44", "plain-56"]  # study order
    t = d.trials
    fin = t[(t["variant"] == "plain-56") & (t["kind"] == "final") & (t["state"] == "COMPLETE")]
    assert len(fin) == 3 and s.loc["plain-56", "seeds"] == 3
    assert s.loc["plain-56", "train_error_mean"] == pytest.approx(fin["train_error"].mean())
    assert s.loc["plain-56", "train_error_std"] == pytest.approx(fin["train_error"].std(ddof=1))
    assert s.loc["plain-56", ["complete", "failed", "pruned", "interrupted"]].tolist() == [7, 1, 0, 0]
    assert s.loc["plain-44", "pruned"] == 1
    assert s.loc["resnet-20", ["complete", "failed", "interrupted"]].tolist() == [7, 0, 1]
    assert s.loc["preact-resnet-110", "running"] == 1
    # The best searched lr is the one nearest 0.1 (the fixture's error model); as shown in the table.
    assert s.loc["plain-20", "best_lr"] == pytest.approx(0.1)
    assert s.loc["plain-20", "best_hyperparameters"] == "lr=0.1"
    assert s.loc["plain-20", "seconds_per_epoch"] == pytest.approx(3.0)
    assert s.loc["resnet-56-bottleneck", "params"] < s.loc["resnet-56", "params"]
    # Efficient front by params: the best of the cheapest is on it; plain-20, as cheap but worse, is not.
    cheapest = s[s["params"] == s["params"].min()]
    assert s.loc[cheapest["test_error_mean"].idxmin(), "front_params"] and not s.loc["plain-20", "front_params"]


def test_verdict_finds_degradation_and_its_removal(storage):
    d = load(storage, "everything")
    by = {(f.topic, f.family): f for f in d.findings}
    fam = "post-activation, basic blocks, cifar stem, width 16"
    deg = by[("degradation", fam)]
    assert deg.answer == "yes"
    c = deg.comparisons[0]
    assert (c.a, c.b, c.metric) == ("plain-20", "plain-56", "train_error") and c.difference > 0 and c.real
    assert c.method == "paired t-test" and c.ci_low > 0 and c.p_adjusted < 0.05 and c.p_adjusted >= c.p_value
    assert "95% CI" in deg.text and "paired t-test" in deg.text and "Holm-corrected p" in deg.text
    assert "from" in deg.text and "20 layers" in deg.text and "56 layers" in deg.text and "±" in deg.text
    res = by[("residual", fam + ", option A shortcuts")]
    assert res.answer == "yes" and "remove" in res.text
    pre = [f for f in d.findings if f.topic == "preact"]
    assert len(pre) == 1 and pre[0].answer == "no clear difference"  # 3 seeds cannot resolve the fixture's 0.1-point gap
    assert "110 layers" in pre[0].text and "paper: 6.37% against 6.61%" in pre[0].text
    bott = [f for f in d.findings if f.topic == "bottleneck"]
    assert len(bott) == 1 and "x the parameters" in bott[0].text


def test_one_seed_says_not_enough_seeds_to_tell(storage):
    d = load(storage, "one-seed")
    deg = [f for f in d.findings if f.topic == "degradation"]
    assert len(deg) == 1 and deg[0].answer == "not enough seeds to tell"
    assert "not enough seeds to tell" in deg[0].text and "rises" in deg[0].text  # the numbers still show the rise
    assert all(f.answer == "not enough seeds to tell" for f in d.findings)
    assert d.summary["train_error_std"].isna().all()


def test_findings_table_has_the_tests_and_holm_spans_the_report(storage):
    d = load(storage, "everything")
    f = tables.findings_table(d.findings)
    assert list(f.columns) == list(tables.FINDING_COLUMNS)
    assert {"spread", "exceeds"}.isdisjoint(f.columns)
    assert (f["ci_low"] <= f["difference"]).all() and (f["difference"] <= f["ci_high"]).all()
    assert set(f["method"]) == {"paired t-test"}  # every variant ran seeds 1-3 with the same data order
    # Holm across every comparison of the report: corrected = the step-down of all raw p-values.
    assert list(f["p_adjusted"]) == pytest.approx(stats.holm(list(f["p_value"])))
    assert (f["real"] == (f["p_adjusted"] < 0.05)).all()


def test_no_clear_difference_says_how_many_seeds_would_tell(storage):
    d = load(storage, "preact")  # 2 seeds a side: pre-activation's small gain is not detectable
    pre = [f for f in d.findings if f.topic == "preact"]
    assert [f.answer for f in pre] == ["no clear difference", "no clear difference"]
    assert "no clear difference; about" in pre[0].text and "seeds a side would detect" in pre[0].text


def test_welch_when_the_seeds_or_data_order_differ():
    summary = pd.DataFrame([
        {"variant": "a", "seeds": 3, "train_error_mean": 0.3, "train_error_std": 0.01},
        {"variant": "b", "seeds": 3, "train_error_mean": 0.4, "train_error_std": 0.01},
    ])
    values = {"a": {"train_error": {1: 0.29, 2: 0.30, 3: 0.31}}, "b": {"train_error": {1: 0.39, 2: 0.42, 3: 0.40}}}
    same = tables.Samples(values, {"a": "[128]", "b": "[128]"})
    other = tables.Samples(values, {"a": "[128]", "b": "[64]"})  # another batch size: seed k saw other batches
    row_a, row_b = summary.iloc[0], summary.iloc[1]
    assert compare(row_a, row_b, "train_error", same).method == "paired t-test"
    assert compare(row_a, row_b, "train_error", other).method == "Welch's t-test"


def test_preact_and_bottleneck_pairs_and_paper_values(storage):
    d = load(storage, "preact")
    pr = tables.pairs(d.summary, "activation", "post", "pre")
    assert sorted(zip(pr["variant_post"], pr["variant_pre"])) == [("resnet-110", "preact-resnet-110"), ("resnet-164", "preact-resnet-164")]
    resnet110 = d.summary.iloc[0].to_dict()
    p = tables.paper_error("cifar10", resnet110)  # the mean of 5 runs, not the best of them
    assert (p.error, p.std, p.source) == (6.61, 0.16, "He et al. 2016, Table 6") and "best of the 5: 6.43" in p.what
    assert p.label == "6.61% ± 0.16: He et al. 2016, Table 6, mean ± std of 5 runs (best of the 5: 6.43)"
    assert tables.paper_error("cifar10", resnet110, prefer="2016b").source == "He et al. 2016b, Table 3"
    assert tables.paper_error("cifar10", {**resnet110, "depth": 56}).what == "as reported (one number per net)"
    assert tables.paper_error("fashion-mnist", d.summary.iloc[0]) is None
    assert [f.topic for f in d.findings] == ["preact", "preact"]
    e = load(storage, "everything")
    bp = tables.pairs(e.summary, "block", "basic", "bottleneck")
    assert list(zip(bp["variant_basic"], bp["variant_bottleneck"])) == [("resnet-56", "resnet-56-bottleneck")]
    assert bp["shortcut"].tolist() == ["mixed"]  # option A basic against option B bottleneck, the papers' defaults


def test_sensitivity_and_curves(storage):
    d = load(storage, "everything")
    assert d.searched == ["lr"]
    sens = tables.sensitivity(d.trials, d.searched)
    assert set(sens["state"]) == {"COMPLETE", "PRUNED"} and (sens["key"] == "lr").all()
    assert len(sens) == 12 * 4 + 1
    cur = tables.curves(d.epochs)
    row = cur[(cur["variant"] == "plain-56") & (cur["epoch"] == 6)].iloc[0]
    assert row["n"] == 3
    s = d.summary.set_index("variant")
    assert row["train_error_mean"] == pytest.approx(s.loc["plain-56", "train_error_mean"])
    # At iteration resolution: 10 points an epoch, test error only where an epoch ends.
    it = tables.iteration_curves(d.points, d.epochs)
    p56 = it[it["variant"] == "plain-56"]
    assert list(p56["iteration"]) == [(e - 1) * 390 + (k + 1) * 39 for e in range(1, 7) for k in range(10)]
    assert (p56["n"] == 3).all() and list(p56["epoch"]) == [e for e in range(1, 7) for _ in range(10)]
    ends = p56.dropna(subset=["test_error_mean"])
    assert list(ends["iteration"]) == [390 * e for e in range(1, 7)]
    assert list(ends["test_error_mean"]) == pytest.approx(list(cur[cur["variant"] == "plain-56"].sort_values("epoch")["test_error_mean"]))
    assert p56["train_error_mean"].iloc[-1] == pytest.approx(
        np.mean([h[-1]["points"][-1]["train_error"] for h in (history(V("plain", 56), s, 0.1, 6) for s in (1, 2, 3))]))
    assert tables.iteration_curves(load(storage, "one-seed").points, d.epochs).empty  # stored without points
    g = tables.gradient_flow(d.epochs)
    p56 = g[(g["variant"] == "plain-56") & (g["epoch"] == 1)].set_index("stage")["grad_norm"]
    r56 = g[(g["variant"] == "resnet-56") & (g["epoch"] == 1)].set_index("stage")["grad_norm"]
    assert p56["stem"] / p56["head"] < r56["stem"] / r56["head"]  # vanishing towards the stem without shortcuts


# =========================================================================== the page


def sections(page: str) -> list[str]:
    return re.findall(r'<section id="([a-z]+)">', page)


def test_report_has_every_section_when_the_study_fills_them(storage, tmp_path):
    path = report.write_report("everything", storage, tmp_path / "r" / "everything.html")
    page = path.read_text()
    assert sections(page) == ["verdict", "why", "curves", "depth", "pairs", "sensitivity", "variants", "failures", "provenance"]
    assert "He et al. 2016, Table 6" in page and "diverged: loss became nan" in page and "interrupted" in page
    assert "still in progress" in page
    assert page.count("Plotly.newPlot(") == page.count('class="plotly-graph-div"') >= 7
    assert page.count("<script>") == 1 + page.count("Plotly.newPlot(")  # plotly.js once, then one per figure


def test_sections_that_do_not_apply_are_left_out(storage, tmp_path):
    page = report.write_report("single", storage, tmp_path / "single.html").read_text()
    assert sections(page) == ["verdict", "variants", "provenance"]
    assert "No comparison to draw" in page
    page = report.write_report("one-seed", storage, tmp_path / "one.html").read_text()
    assert "sensitivity" not in sections(page) and "failures" not in sections(page) and "pairs" in sections(page)
    assert "Table 6" not in page  # Fashion-MNIST: the papers' CIFAR-10 numbers do not apply
    page = report.write_report("preact", storage, tmp_path / "preact.html").read_text()
    assert sections(page) == ["verdict", "pairs", "variants", "provenance"]


def test_a_study_just_started_reports_what_there_is(storage, tmp_path):
    d = load(storage, "fresh")
    assert list(d.summary["variant"]) == ["plain-20", "resnet-20"] and d.summary["seeds"].eq(0).all()
    assert d.summary.set_index("variant").loc["resnet-20", ["complete", "running"]].tolist() == [0, 0]
    assert d.findings == [] and tables.curves(d.epochs).empty and len(d.epochs) == 1
    page = report.write_report("fresh", storage, tmp_path / "fresh.html").read_text()
    assert sections(page) == ["verdict", "variants", "provenance"]
    assert "0 of 4 units finished" in page and "1 running" in page


def test_storage_strings_are_escaped(storage, tmp_path):
    page = report.write_report("hostile", storage, tmp_path / "hostile.html").read_text()
    head, _, rest = page.partition("</head>")
    assert "<script>document.title" not in page and "<img src=x" not in page
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;" in rest  # shown as text, in the description
    assert "boom &lt;script&gt;" in rest  # and in the failure reason
    assert "# &lt;/pre&gt;&lt;script&gt;" in rest  # and in the study file


def test_page_is_self_contained(storage, tmp_path):
    page = report.write_report("everything", storage, tmp_path / "e.html").read_text()
    body = re.sub(r"<script>.*?</script>", "", page, flags=re.S)  # markup only, scripts aside
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", body, flags=re.I)
    assert "mathjax" not in body.lower() and "cdn.plot.ly" not in body
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]


def test_default_path_is_reports_study_html(storage, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = report.write_report("single", storage)
    assert path == Path("reports/single.html") and (tmp_path / "reports" / "single.html").is_file()
    assert report.default_path("../evil/name") == Path("reports/_evil_name.html")


def test_export_csv_and_parquet(storage, tmp_path):
    paths = report.export_tables("everything", storage, tmp_path / "x", "csv")
    assert [p.name for p in paths] == ["everything-trials.csv", "everything-epochs.csv", "everything-variants.csv", "everything-findings.csv",
                                       "everything-points.csv"]
    trials = pd.read_csv(paths[0])
    assert len(trials) == len(everything_runs()) and {"variant", "state", "lr", "test_error", "failure"} <= set(trials.columns)
    epochs = pd.read_csv(paths[1])
    assert {"epoch", "train_error", "grad_stem", "grad_head"} <= set(epochs.columns)
    points = pd.read_csv(paths[4])
    assert len(points) == 10 * epochs["train_error"].notna().sum() and {"iteration", "train_loss", "train_error"} <= set(points.columns)
    with pytest.raises(ReportError, match="format: 'xlsx'"):
        report.export_tables("everything", storage, tmp_path / "y", "xlsx")
    paths = report.export_tables("everything", storage, tmp_path / "y", "parquet")
    assert len(pd.read_parquet(paths[0])) == len(everything_runs())
    assert len(pd.read_parquet(paths[1])) == len(pd.read_csv(tmp_path / "x" / "everything-epochs.csv"))


# =========================================================================== a real browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Browser:
    """Headless Chromium driven over the DevTools protocol through a pipe (--remote-debugging-pipe:
    fd 3 in, fd 4 out, NUL-terminated JSON), so no websocket client or Playwright is needed.

    The network is off three ways: no proxy reachable (every request goes to 127.0.0.1:9),
    DevTools' offline emulation, and the page's own Content-Security-Policy. Every request the page
    makes, every console message and every uncaught exception is recorded.
    """

    def __init__(self, profile: Path):
        self._in_r, self._in_w = os.pipe()  # we write commands -> chromium reads fd 3
        self._out_r, self._out_w = os.pipe()  # chromium writes fd 4 -> we read
        in_r, out_w = self._in_r, self._out_w

        def fds() -> None:  # in the child: move the pipe ends to 3 and 4, above anything they may clash with
            import fcntl

            a, b = fcntl.fcntl(in_r, fcntl.F_DUPFD, 10), fcntl.fcntl(out_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [CHROMIUM, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-dev-shm-usage",
                "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "--hide-scrollbars",
                f"--user-data-dir={profile}", "--window-size=1280,900", "about:blank"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=fds, close_fds=False)
        os.close(self._in_r)
        os.close(self._out_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call("Network.emulateNetworkConditions", session=True, offline=True, latency=0, downloadThroughput=-1, uploadThroughput=-1)

    def _send(self, message: dict[str, Any]) -> None:
        os.write(self._in_w, json.dumps(message).encode() + b"\0")

    def _read(self, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out_r], [], [], left)[0]:
                return None
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited: {self.proc.stderr.read().decode(errors='replace')[-2000:] if self.proc.poll() is not None else ''}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: bool = False, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self._send(message)
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(max(0.0, deadline - time.monotonic()))
            if reply is None:
                raise TimeoutError(f"{method}: no reply in {timeout} s")
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = len(self.events)
        while True:
            for e in self.events[seen:]:
                if e.get("method") == method:
                    return e
            seen = len(self.events)
            reply = self._read(max(0.0, deadline - time.monotonic()))
            if reply is None:
                raise TimeoutError(f"{method}: not seen in {timeout} s")
            self.events.append(reply)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        self.wait_for("Page.loadEventFired")

    def errors(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, and log entries of level error."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(json.dumps(p["exceptionDetails"])[:500])
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"].get("level") in ("error", "warning"):
                out.append(f"{p['entry'].get('source')}: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path, width: int = 1280, max_height: int = 16_000) -> None:
        height = min(max_height, int(self.evaluate("document.documentElement.scrollHeight")))
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height, deviceScaleFactor=1, mobile=False)
        data = self.call("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        self.call("Emulation.clearDeviceMetricsOverride", session=True)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._in_w)
        os.close(self._out_r)
        self.proc.stderr.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (.ci/run installs it)")
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def artifact(path: Path) -> Path:
    """Keep a copy of a test artifact (screenshots) in $ABLATE_TEST_ARTIFACTS or reports/artifacts/."""
    folder = Path(os.environ.get("ABLATE_TEST_ARTIFACTS") or ARTIFACTS)
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(path, folder / path.name))


FIGURES_JS = """(() => {
  const divs = [...document.querySelectorAll('.plotly-graph-div')];
  return divs.map(d => [d.id, d.querySelectorAll('svg.main-svg').length, d.querySelectorAll('svg.main-svg g.trace').length]);
})()"""


INTERACT_JS = """(async () => {
  const out = [];
  for (const d of document.querySelectorAll('.plotly-graph-div')) {
    Plotly.Fx.hover(d, [{curveNumber: 0, pointNumber: 0}]);
    out.push(d.querySelectorAll('.hoverlayer .hovertext').length);
    await Plotly.relayout(d, {'xaxis.autorange': false, 'xaxis.range': [0, 2]});
    await Plotly.restyle(d, {visible: 'legendonly'}, [0]);
    await Plotly.relayout(d, {'xaxis.autorange': true});
  }
  return out;
})()"""


def render_in(browser: Browser, path: Path, timeout: float = 10) -> list[list[Any]]:
    """Open a report from disk and wait until every figure has drawn its SVG and its traces."""
    browser.open(path.resolve().as_uri())
    deadline = time.monotonic() + timeout
    while True:
        figures = browser.evaluate(FIGURES_JS)
        if all(svgs and traces for _, svgs, traces in figures) or time.monotonic() > deadline:
            return figures
        time.sleep(0.2)


def offline(browser: Browser) -> list[str]:
    """Requests other than the page itself (file:) and what plotly makes in memory (data:, blob:)."""
    return [u for u in browser.requests() if not u.startswith(("file:", "data:", "blob:"))]


@pytest.mark.slow
def test_report_renders_offline_in_chromium(storage, browser, tmp_path):
    path = report.write_report("everything", storage, tmp_path / "report-everything.html")
    figures = render_in(browser, path)
    assert len(figures) == path.read_text().count('class="plotly-graph-div"') >= 7
    assert [f[0] for f in figures if not (f[1] and f[2])] == [], "figures without an SVG or traces"
    assert browser.errors() == []
    assert offline(browser) == []
    assert browser.evaluate("document.querySelectorAll('[src^=http],[href^=http],link[rel=stylesheet]').length") == 0
    browser.screenshot(tmp_path / "report-everything.png")
    # Interactive: every figure has its modebar, shows a hover label, zooms and hides a trace, without an error.
    assert browser.evaluate("document.querySelectorAll('.modebar').length") == len(figures)
    assert browser.evaluate(INTERACT_JS) == [1] * len(figures)
    assert browser.errors() == []
    assert artifact(tmp_path / "report-everything.png").stat().st_size > 50_000


@pytest.mark.slow
def test_script_in_a_study_runs_nothing_in_chromium(storage, browser, tmp_path):
    path = report.write_report("hostile", storage, tmp_path / "report-hostile.html")
    figures = render_in(browser, path)
    assert figures and all(svgs and traces for _, svgs, traces in figures)
    assert browser.evaluate("window.__pwned === undefined") is True
    assert browser.evaluate("document.title") == "hostile: ablate report"
    assert browser.evaluate("document.querySelectorAll('main script').length") == len(figures)  # ours only
    assert browser.evaluate("document.querySelectorAll('img').length") == 0
    text = browser.evaluate("document.body.innerText")
    assert "<script>document.title='pwned';window.__pwned=1</script>" in text  # shown as text
    assert browser.errors() == [] and offline(browser) == []


# =========================================================================== real runs


@pytest.fixture(scope="module")
def real_run(small_run) -> str:
    """The small study trained for real by `ablate run`, once per session (tests/conftest.py)."""
    assert small_run.result.returncode == 0, small_run.result.stderr
    return small_run.storage


@pytest.mark.slow
def test_tables_of_a_real_run(real_run):
    d = load(real_run, "small")
    t = d.trials
    names = ["plain-8-w4", "plain-14-w4", "resnet-8-w4", "resnet-14-w4"]
    assert list(d.summary["variant"]) == names
    assert len(t) == 4 * (2 + 2) and (t["state"] == "COMPLETE").all()
    assert sorted(t[t["kind"] == "search"]["seed"].unique()) == [0]
    assert sorted(t[t["kind"] == "final"]["seed"].unique()) == [1, 2]
    assert t[t["kind"] == "search"]["lr"].between(0.02, 0.3).all()
    assert d.searched == ["lr"]
    s = d.summary.set_index("variant")
    for name in names:
        fin = t[(t["variant"] == name) & (t["kind"] == "final")]
        assert (fin["lr"] == s.loc[name, "best_lr"]).all()  # final runs repeat the best searched lr
        assert s.loc[name, "seeds"] == 2 and 0 < s.loc[name, "train_error_mean"] < 1
        assert s.loc[name, "train_error_mean"] == pytest.approx(fin["train_error"].mean())
        spec = VariantSpec(connection="plain" if name.startswith("plain") else "residual", depth=int(name.split("-")[1]), width=4)
        assert (s.loc[name, "params"], s.loc[name, "macs"]) == measure(spec, DATASETS["fashion-mnist"])
    assert (t["device"] == "cpu").all() and t["images_per_second"].gt(0).all() and t["seconds_per_epoch"].gt(0).all()
    assert (t["data"] == str(FASHION_MNIST_SYSTEM_DIR)).all()
    e = d.epochs
    assert len(e) == len(t) * 2 and sorted(e["epoch"].unique()) == [1, 2]
    grads = e[["grad_stem", "grad_stage1", "grad_stage2", "grad_stage3", "grad_head"]]
    assert grads.notna().all().all() and (grads > 0).all().all()
    cur = tables.curves(e)
    assert len(cur) == 4 * 2 and (cur["n"] == 2).all()
    # 512 images in batches of 32: 16 steps an epoch, each step a point.
    pts = d.points
    assert len(pts) == len(t) * 32 and sorted(pts["iteration"].unique()) == list(range(1, 33))
    it = tables.iteration_curves(pts, e)
    assert len(it) == 4 * 32 and (it["n"] == 2).all()
    assert list(it.dropna(subset=["test_error_mean"])["iteration"].unique()) == [16, 32]
    deg = next(f for f in d.findings if f.topic == "degradation")
    c = deg.comparisons[0]
    assert (c.a, c.b, c.a_n, c.b_n) == ("plain-8-w4", "plain-14-w4", 2, 2)
    assert c.b_mean == pytest.approx(s.loc["plain-14-w4", "train_error_mean"])
    assert c.method == "paired t-test" and c.testable  # both ran seeds 1 and 2 on the same batches
    expected = ("yes" if c.difference > 0 else "no (it falls)") if c.real else "no clear difference"
    assert deg.answer == expected and (c.p_adjusted < 0.05) == c.real
    assert any(f.topic == "residual" for f in d.findings)


@pytest.mark.slow
def test_report_of_a_real_run_renders(real_run, browser, tmp_path):
    path = report.write_report("small", real_run, tmp_path / "report-small.html")
    page = path.read_text()
    assert sections(page) == ["verdict", "why", "curves", "depth", "pairs", "sensitivity", "variants", "provenance"]
    figures = render_in(browser, path)
    # 5, and the Why section's 5 (gradients, signal propagation, correlation, lesion, landscape)
    assert len(figures) == 10 and all(svgs and traces for _, svgs, traces in figures)
    assert browser.errors() == [] and offline(browser) == []
    browser.screenshot(tmp_path / "report-small.png")
    artifact(tmp_path / "report-small.png")
    paths = report.export_tables("small", real_run, tmp_path / "export", "csv")
    assert len(pd.read_csv(paths[1])) == 16 * 2
    assert len(pd.read_csv(paths[4])) == 16 * 32  # -points: 16 trials, 32 points each


@pytest.mark.slow
def test_the_main_jobs_report_plots_against_iterations_in_chromium(quick_run, browser, tmp_path):
    """The report `ablate run studies/quick.toml` wrote, opened offline: its training curves have
    points_per_epoch points per epoch on an iteration axis, as He et al. plot them."""
    assert quick_run.result.returncode == 0, quick_run.result.stderr
    figures = render_in(browser, quick_run.report)
    assert browser.errors() == [] and offline(browser) == []
    curves = browser.evaluate(
        "(() => { const d = document.querySelector('#curves .plotly-graph-div');"
        " return {x: d.layout.xaxis.title.text, traces: d.data.map(t => [t.line.dash, t.x.length])}; })()")
    recipe = load_study_file(QUICK_STUDY).recipe
    steps = recipe.train_subset // recipe.batch_size
    points = min(recipe.points_per_epoch, steps) * recipe.epochs
    assert curves["x"] == "iteration"
    assert {n for dash, n in curves["traces"] if dash == "dash"} == {points}  # training error
    assert {n for dash, n in curves["traces"] if dash == "solid"} == {recipe.epochs}  # test error, once an epoch
    assert len(figures) >= 3
    browser.screenshot(tmp_path / "report-quick.png")
    artifact(tmp_path / "report-quick.png")
