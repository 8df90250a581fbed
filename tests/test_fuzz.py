"""Property-based fuzzing of study files (hypothesis): generated and mutated files, in-process.

The property, for any text at all: `parse_study` returns a valid study (within every bound of
`ablate.spec.limits`, and one the driver can turn into Optuna distributions), or raises one
`StudyError` whose message is a single line naming the file; and `ablate variants` on that file
prints exactly that line after "error: " and exits 2. Never another exception, never a traceback.
Hangs are excluded by construction (every number is bounded before anything is built); the
examples are derandomized, so CI runs the same ones every time.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ablate.spec import limits
from ablate.spec.recipe import MAX_ITERATIONS
from ablate.cli import app
from ablate.engine.data import DATASETS
from ablate.runs import distributions, study_units
from ablate.spec import definition
from ablate.spec.study import SEARCHABLE, TOP_LEVEL, Study, StudyError, parse_study
from ablate.spec.recipe import Recipe, schedule, train_size
from ablate.spec.variants import ACTIVATIONS, AXES, BLOCKS, CONNECTIONS, SHORTCUTS, STEMS

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

# ---------------------------------------------------------------- a TOML writer for any generated value


def toml_string(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def toml_document(doc: dict[str, object]) -> str:
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in doc.items())


# ---------------------------------------------------------------- strategies

MARKUP = st.sampled_from(["[/x]", "[bold red]x[/]", "[link=http://e.org]x[/link]", "[grid]", "\x1b[31m", "", " ", "\n", "\\", '"'])
texts = st.one_of(MARKUP, st.text(st.characters(blacklist_categories=("Cs",)), max_size=12), st.text(max_size=300, alphabet="ab[]/"))
#: Integers past every bound: around 2**31 (seeds), 2**53 (exact as a float), 2**63 (numpy's int64), and
#: too long to be a float at all (math.isfinite and float() overflow on them).
large = st.one_of(st.integers(min_value=2**31 - 200, max_value=2**31 + 200), st.integers(min_value=2**53 - 2, max_value=2**70),
                  st.sampled_from([9223372036854775807, 9223372036854775808, 10**9, 10**400, -(10**400)]))
numbers = st.one_of(
    st.integers(), st.integers(min_value=-3, max_value=70), st.integers(min_value=2**62, max_value=2**70), large,
    st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=0, max_value=20), st.sampled_from([0, 1, 2, 8, 20, 56, 1e308, 5e-324, -0.0]),
)
scalars = st.one_of(numbers, st.booleans(), texts)
anything = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(texts, inner, max_size=4)), max_leaves=12)

#: Plausible values per key, mixed with anything at all.
AXIS_VALUES = {
    "connection": st.sampled_from(CONNECTIONS), "activation": st.sampled_from(ACTIVATIONS), "block": st.sampled_from(BLOCKS),
    "shortcut": st.sampled_from(SHORTCUTS), "stem": st.sampled_from(STEMS),
    "depth": st.one_of(st.sampled_from([8, 14, 18, 20, 29, 34, 50, 56, 110, 164, 1202, 2402, 2403]), st.integers(-10, 3000)),
    "width": st.one_of(st.integers(-2, 40), st.sampled_from([1024, 1025, 10**9])),
    "blocks": st.lists(st.one_of(st.integers(0, 5), st.sampled_from([400, 401, 10**8])), min_size=2, max_size=5),
}
RECIPE_VALUES = {
    "epochs": st.one_of(st.integers(0, 5), st.sampled_from([10_000, 10_001, 10**23])),
    "batch_size": st.one_of(st.integers(0, 300), st.sampled_from([32_768, 32_769, 10**9])),
    "lr": st.one_of(st.floats(-1, 12), st.sampled_from([1e308, math.inf, math.nan, 0.0])),
    "train_subset": st.one_of(st.integers(0, 70_000), st.sampled_from([1, 128, 60_000])),
    "val_size": st.integers(-1, 70_000),
    "schedule": st.sampled_from(["constant", "step", "cosine", "onecycle", "linear"]),
    "augment": st.lists(st.sampled_from(["crop", "flip", "cutout"]), max_size=3),
    "milestones": st.lists(st.floats(-0.5, 1.5), max_size=3),
    "nesterov": st.one_of(st.booleans(), st.integers(0, 1)),
    "resize": st.one_of(st.none(), st.integers(0, 2000)).filter(lambda v: v is not None),
}
#: Every other numeric recipe key: a plausible value or a large one.
RECIPE_VALUES.update({key: st.one_of(st.integers(0, 3), st.floats(0, 2), large) for key in (
    "iterations", "momentum", "weight_decay", "gamma", "warmup_epochs", "warmup_iterations", "warmup_lr", "label_smoothing",
    "test_subset", "points_per_epoch")})
RECIPE_VALUES["milestone_iterations"] = st.lists(st.one_of(st.integers(1, 5), large), max_size=3)
FIRST_SEEDS = st.one_of(st.integers(-1, 5), st.sampled_from([limits.MAX_FIRST_SEED, limits.MAX_FIRST_SEED + 1]), large)


def plausible(values: dict[str, st.SearchStrategy], keys: list[str]) -> st.SearchStrategy:
    """A table of the right keys with mostly plausible values; now and then a wrong key or any value."""
    def one(key: str) -> st.SearchStrategy:
        good = values.get(key, anything)
        return st.one_of(good, good, good, anything)

    names = st.one_of(*[st.sampled_from(keys)] * 6, st.sampled_from(["bogus", "[/x]", "name"]))
    return st.lists(names, max_size=4, unique=True).flatmap(lambda ks: st.fixed_dictionaries({k: one(k) for k in ks}))


def usually(good: st.SearchStrategy, odds: int = 4) -> st.SearchStrategy:
    """`good`, `odds` times as often as anything at all."""
    return st.one_of(*[good] * odds, anything)


axes_tables = plausible(AXIS_VALUES, list(AXES))
grid_tables = st.lists(st.sampled_from(list(AXES)), max_size=3, unique=True).flatmap(
    lambda ks: st.fixed_dictionaries({k: usually(st.lists(usually(AXIS_VALUES[k]), min_size=0, max_size=6)) for k in ks}))
recipe_tables = plausible(RECIPE_VALUES, [f.name for f in dataclasses.fields(Recipe)])
search_ranges = st.one_of(
    st.fixed_dictionaries({"low": numbers, "high": numbers}, optional={"log": usually(st.booleans())}),
    st.fixed_dictionaries({"choices": st.lists(scalars, max_size=4)}), anything,
)
search_tables = st.fixed_dictionaries(
    {"trials": usually(st.one_of(st.integers(-1, 5), st.sampled_from([1000, 1001, 10**9])))},
    optional={"sampler": st.sampled_from(["tpe", "random", "grid"]), "pruner": st.sampled_from(["none", "median", "hyperband"]),
              **{k: search_ranges for k in SEARCHABLE}, "weights": anything},
)


@st.composite
def documents(draw) -> dict[str, object]:
    """A small valid study, then up to four edits: a key set to a plausible or an arbitrary value, a
    key deleted, or a whole table replaced. Most examples get deep into validation; some stay valid."""
    doc: dict[str, object] = {"name": "fuzz", "dataset": draw(st.sampled_from(list(DATASETS))),
                              "fixed": {"width": 4}, "train": {"epochs": 1, "batch_size": 64}}
    if draw(st.booleans()):
        doc["grid"] = {"connection": ["plain", "residual"], "depth": [8, 14]}
    else:
        doc["fixed"]["depth"] = 8
    if draw(st.booleans()):
        doc["search"] = {"trials": 2, "lr": {"low": 0.01, "high": 0.3, "log": True}}
    if draw(st.booleans()):
        doc["seeds"] = {"count": 2}
        if draw(st.booleans()):
            doc["seeds"]["start"] = draw(FIRST_SEEDS)
    if draw(st.booleans()):
        doc["variant"] = [{"depth": 20}]
    plausible_values = {
        "fixed": AXIS_VALUES, "variant": AXIS_VALUES, "train": RECIPE_VALUES,
        "grid": {k: st.lists(usually(v), max_size=6) for k, v in AXIS_VALUES.items()},
        "search": {"trials": st.one_of(st.integers(-1, 5), st.sampled_from([1000, 1001, 10**9])), "sampler": texts, "pruner": texts,
                   **{k: search_ranges for k in SEARCHABLE}},
        "seeds": {"count": st.one_of(st.integers(-1, 5), st.sampled_from([100, 101, 10**9])), "start": FIRST_SEEDS},
    }
    for _ in range(draw(st.integers(0, 4))):
        section = draw(st.sampled_from([*TOP_LEVEL, "other"]))
        op = draw(st.sampled_from(["set", "set", "set", "delete", "replace"]))
        if op == "replace" or section not in plausible_values:
            if op == "delete":
                doc.pop(section, None)
            else:
                doc[section] = draw(anything if op == "replace" else usually(st.one_of(texts, numbers)))
            continue
        table = doc.setdefault(section, [{}] if section == "variant" else {})
        if section == "variant" and isinstance(table, list) and table and isinstance(table[0], dict):
            table = table[draw(st.integers(0, len(table) - 1))]
        if not isinstance(table, dict):
            continue
        values = plausible_values[section]
        key = draw(st.one_of(*[st.sampled_from(sorted(values))] * 6, st.sampled_from(["bogus", "[/x]", "name"])))
        if op == "delete":
            table.pop(key, None)
        else:
            table[key] = draw(usually(values.get(key, anything)))
    return doc


SEEDS = [p.read_text() for p in sorted((ROOT / "studies").glob("*.toml"))] + [
    'name = "s"\ndataset = "synthetic"\n[fixed]\nwidth = 4\n[grid]\nconnection = ["plain", "residual"]\ndepth = [8, 14]\n'
    '[train]\nepochs = 1\nbatch_size = 64\ntrain_subset = 256\n[search]\ntrials = 2\nlr = { low = 0.01, high = 0.3, log = true }\n'
    'batch_size = { low = 32, high = 128 }\nschedule = { choices = ["step", "cosine"] }\n[seeds]\ncount = 2\n',
    'name = "v"\ndataset = "cifar10"\n[fixed]\nstem = "imagenet"\n[[variant]]\ndepth = 18\n[[variant]]\nblock = "bottleneck"\ndepth = 50\n'
    '[[variant]]\nblocks = [1, 1, 1, 1]\nwidth = 8\n',
]
TOML_BITS = ["[", "]", "[[", "]]", "{", "}", "=", '"', "'", ",", ".", "#", "\n", " ", "0", "9", "-", "+", "e", "inf", "nan",
             "true", "x", "depth", "[grid]", "[fixed]", "[train]", "[search]", '"""', "\\", "\x00", "é", "[/x]", "99999999999999999999"]


@st.composite
def mutated(draw) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate-line", "swap-lines", "number"]))
        i = draw(st.integers(0, len(text)))
        if op == "insert":
            text = text[:i] + draw(st.one_of(st.sampled_from(TOML_BITS), st.text(max_size=4))) + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 20)):]
        elif op == "replace":
            text = text[:i] + draw(st.sampled_from(TOML_BITS)) + text[i + 1:]
        elif op == "number":
            digits = [k for k, c in enumerate(text) if c.isdigit()]
            if digits:
                k = draw(st.sampled_from(digits))
                text = text[:k] + str(draw(numbers)).replace("inf", "1e999") + text[k + 1:]
        else:
            lines = text.split("\n")
            a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if op == "duplicate-line":
                lines.insert(b, lines[a])
            else:
                lines[a], lines[b] = lines[b], lines[a]
            text = "\n".join(lines)
    return text


# ---------------------------------------------------------------- the property


#: Every number a recipe holds, and its bound (None: the dataset's size). A numeric recipe key
#: missing here fails `check_valid`: every number of a study file is bounded.
RECIPE_BOUNDS = {
    "epochs": limits.MAX_EPOCHS, "iterations": MAX_ITERATIONS, "batch_size": limits.MAX_BATCH_SIZE, "lr": limits.MAX_LR,
    "warmup_lr": limits.MAX_LR, "momentum": 1, "label_smoothing": 1, "weight_decay": limits.MAX_WEIGHT_DECAY,
    "gamma": limits.MAX_GAMMA, "warmup_epochs": limits.MAX_EPOCHS, "warmup_iterations": MAX_ITERATIONS, "milestones": 1,
    "milestone_iterations": MAX_ITERATIONS, "points_per_epoch": limits.MAX_POINTS_PER_EPOCH, "resize": 1024,
    "train_subset": None, "test_subset": None, "val_size": None,
}


def check_numbers(study: Study) -> None:
    """Every number within its bound and exact as a float (Optuna stores params as floats); the
    seeds too, through an Optuna param and back; and the schedule computes (no overflow)."""
    sizes = {"train_subset": study.info.train_size, "test_subset": study.info.test_size, "val_size": study.info.train_size}
    for spec in study.variants:
        recipe = study.recipe_for(spec)
        for f in dataclasses.fields(Recipe):
            value = getattr(recipe, f.name)
            for v in value if isinstance(value, tuple) else (value,):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                assert f.name in RECIPE_BOUNDS, f"{f.name}: a number without a bound"
                bound = RECIPE_BOUNDS[f.name] if RECIPE_BOUNDS[f.name] is not None else sizes[f.name]
                assert 0 <= v <= bound and float(v) == v, (f.name, v)
        schedule(recipe, train_size(recipe, study.info))
    assert 1 <= study.first_seed and study.final_seeds[-1] <= limits.MAX_SEED
    seed = distributions(study)["seed"]
    for s in (study.first_seed, study.final_seeds[-1]):
        assert seed.to_external_repr(seed.to_internal_repr(s)) == s


def check_valid(study: Study) -> None:
    if study.is_search:  # an architecture search lists no variants: it samples `count` per space
        assert study.sample is not None and 1 <= study.sample.count <= limits.MAX_SAMPLES and study.spaces
    else:
        assert 1 <= len(study.variants) <= limits.MAX_VARIANTS
    assert sum(sum(v.blocks) for v in study.variants) <= limits.MAX_STUDY_BLOCKS
    assert all(1 <= v.width <= limits.MAX_WIDTH and max(v.blocks) <= limits.MAX_BLOCKS_PER_STAGE for v in study.variants)
    r = study.recipe
    assert (r.epochs is None) != (r.iterations is None)  # one length of training, in one unit
    assert (1 <= r.epochs <= limits.MAX_EPOCHS) if r.epochs is not None else (1 <= r.iterations <= MAX_ITERATIONS)
    assert 2 <= r.batch_size <= limits.MAX_BATCH_SIZE
    assert 0 < r.lr <= limits.MAX_LR and math.isfinite(r.lr)
    assert r.train_subset is None or r.train_subset >= r.batch_size
    assert 1 <= study.seeds <= limits.MAX_SEEDS and len(study_units(study)) <= limits.MAX_UNITS
    json.loads(definition(study))
    distributions(study)  # what the driver stores: every value must make an Optuna distribution
    check_numbers(study)


def check(text: str, tmp: Path) -> None:
    try:
        study = parse_study(text, "fuzz.toml")
    except StudyError as exc:
        message = str(exc)
        assert message.startswith("fuzz.toml: ") and "\n" not in message and "\r" not in message, message
    else:
        check_valid(study)
        return
    # The command line says exactly that, on one line, with exit status 2.
    (tmp / "fuzz.toml").write_text(text, encoding="utf-8", errors="surrogatepass")
    result = CliRunner().invoke(app, ["variants", "fuzz.toml"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (result.exception, result.output)
    assert result.stderr == f"error: {message}\n" and result.stdout == ""


@pytest.fixture
def tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_generated_study_files(tmp):
    @FUZZ
    @given(documents())
    def prop(doc):
        check(toml_document(doc), tmp)

    prop()


def test_mutated_study_files(tmp):
    @FUZZ
    @given(mutated())
    def prop(text):
        check(text, tmp)

    prop()


def test_arbitrary_text(tmp):
    @settings(FUZZ, max_examples=100)
    @given(st.one_of(st.text(max_size=200), st.text(alphabet="[]{}=\"',.#\n 0123456789abcdefnirtu", max_size=200)))
    def prop(text):
        check(text, tmp)

    prop()


# --------------------------------------------------------------------------- path and storage options

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "v0.1.0"
PATH_PIECES = ["~", "~/x", "~nobody-here/x", "", ".", "..", "/", "/proc/1/x", "reports", "a b", "x.html", "legacy.db",
               "[/x]", "dir/", "/dev/null", "ü", "$HOME", "%s"]
STORAGES = ["sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite:///~/legacy.db", "sqlite:///legacy.db",
            "sqlite:////nonexistent/folder/x.db", "sqlite:///legacy.toml", "notaurl", "mysql://u@127.0.0.1:1/db",
            "postgresql+psycopg://u:secret@127.0.0.1:1/db", "sqlite:///[/x].db", ""]


def paths() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(PATH_PIECES), st.lists(st.sampled_from(PATH_PIECES), min_size=1, max_size=3).map("/".join),
                     st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20))


def test_path_and_storage_options(tmp, monkeypatch):
    """Every reader command with generated --storage, --out and --out-dir values: it works, or
    says what is wrong in one line with exit status 1 or 2; never a traceback, never a folder
    literally named `~`."""
    import shutil

    shutil.copy(FIXTURE / "legacy.db", tmp / "legacy.db")
    shutil.copy(FIXTURE / "legacy.toml", tmp / "legacy.toml")
    monkeypatch.setenv("HOME", str(tmp / "home"))
    (tmp / "home").mkdir()
    shutil.copy(FIXTURE / "legacy.db", tmp / "home" / "legacy.db")

    @settings(FUZZ, max_examples=40)
    @given(st.sampled_from(["report", "export", "ls", "show"]), st.one_of(st.sampled_from(STORAGES), st.text(max_size=30)), paths())
    def prop(command, storage, path):
        args = {"report": ["report", "legacy", "--out", path], "export": ["export", "legacy", "--out-dir", path],
                "ls": ["ls"], "show": ["show", "legacy"]}[command]
        result = CliRunner().invoke(app, [*args, "--storage", storage])
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, storage, repr(result.exception))
        if result.exit_code != 0:
            assert result.exit_code in (1, 2), (args, storage, result.exit_code, result.output)
            assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, (args, storage, result.stderr)
        assert not (tmp / "~").exists() and not (tmp / "home" / "~").exists()

    prop()
