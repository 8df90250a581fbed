"""The study's answers: questions about families of variants, each answered by calibrated tests
(ablate.analysis.stats) on the final runs' seeds, Holm-corrected across the whole report.

    samples(trials, recipes)          the final runs of every variant as samples for the tests
    verdicts(summary, dataset, smp)   the study's answers as structured `Finding`s
    findings_table(findings)          one row per comparison, for export and tests
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
import pandas as pd

from ablate.analysis import stats
from ablate.analysis.format import ci_text, p_short, p_text, pct, points, seeds_text, signed
from ablate.analysis.frames import finals
from ablate.analysis.papers import paper_error
from ablate.analysis.summary import FAMILY_AXES, SUMMARY_STATS, family_label, groups, pairs
from ablate.spec.recipe import DATA_ORDER_KEYS
from ablate.storage import TrialAttrs

__all__ = ["Answer", "compare", "Comparison", "Finding", "Samples", "samples", "recipes_of", "test_words", "verdicts",
           "pair_axis", "joint_holm", "comparison_brief", "comparison_cells", "FINDING_COLUMNS", "findings_table", "METRIC_LABELS", "TRAIN_ERROR_MEANING", "PAIR_TOPICS"]


# --------------------------------------------------------------------------- verdicts
#
# A finding is a question about one family, answered by one or more tests (ablate.stats): a
# paired t-test by seed where pairing holds, Welch's t-test otherwise, Holm-corrected across all
# the comparisons of one report. Findings are built in two passes: first every question collects
# its comparisons, then all of them are corrected together, then each question is answered from
# its corrected comparisons.


class Answer(str, enum.Enum):
    """A finding's answer: a value, compared as a value (`Answer.YES`); its text is what the
    terminal, the report and the export print, and `tone` how the report colours it."""

    YES = "yes"
    NO = "no"
    FALLS = "no (it falls)"
    HURTS = "no (it hurts)"
    NO_CLEAR_DIFFERENCE = "no clear difference"
    NOT_ENOUGH_SEEDS = "not enough seeds to tell"
    NO_DEGRADATION = "no degradation to remove"
    TRADE_OFF = "trade-off"
    MIXED = "mixed"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def tone(self) -> str:
        """yes, no or open: whether the answer confirms the question, refutes it, or leaves it open."""
        return "yes" if self is Answer.YES else "no" if self in (Answer.NO, Answer.FALLS, Answer.HURTS) else "open"


@dataclass(frozen=True)
class Comparison:
    """Variant `b` against variant `a` on one metric (fractions), over their final runs' seeds.

    `difference` = b - a; `test` holds its 95% CI, the p-value and the method, and after Holm's
    correction across the report `real` (the corrected test rejects at 5%)."""

    metric: str
    a: str
    b: str
    a_mean: float
    a_std: float
    a_n: int
    b_mean: float
    b_std: float
    b_n: int
    test: stats.Test

    @property
    def difference(self) -> float:
        return self.test.difference

    @property
    def ci_low(self) -> float:
        return self.test.ci_low

    @property
    def ci_high(self) -> float:
        return self.test.ci_high

    @property
    def p_value(self) -> float:
        return self.test.p_value

    @property
    def p_adjusted(self) -> float:
        return self.test.p_adjusted

    @property
    def method(self) -> str:
        return self.test.method

    @property
    def real(self) -> bool:
        return self.test.real

    @property
    def testable(self) -> bool:
        return self.test.testable

    @property
    def seeds_needed(self) -> int | None:
        return stats.seeds_needed(self.test)


@dataclass(frozen=True)
class Finding:
    """One answer of the study: a question about one family, the answer, and its numbers."""

    topic: str  # degradation | residual | preact | bottleneck
    family: str  # the axes held fixed, in words
    question: str
    answer: Answer
    text: str  # the answer in plain words, with numbers
    comparisons: tuple[Comparison, ...] = field(default=())

    @property
    def deciding(self) -> Comparison | None:
        """The comparison the answer rests on: the deepest pair for pair findings, else the first."""
        if not self.comparisons:
            return None
        return self.comparisons[-1] if self.topic in PAIR_TOPICS else self.comparisons[0]


@dataclass(frozen=True)
class Samples:
    """Per variant, the final runs' values by seed, and what a seed's data order depends on."""

    values: dict[str, dict[str, dict[int, float]]]  # variant -> metric -> seed -> value
    data_order: dict[str, Any]  # variant -> the recipe's DATA_ORDER_KEYS values (None: final runs disagree)

    def pairable(self, a: str, b: str) -> bool:
        """The same seed means the same data order and augmentation on both sides."""
        oa, ob = self.data_order.get(a), self.data_order.get(b)
        return oa is not None and oa == ob


def samples(trials: pd.DataFrame, recipes: dict[int, dict[str, Any]] | None = None) -> Samples:
    """The final runs of every variant as samples for the tests. `recipes`: trial number ->
    the recipe it ran (the `recipe` user attribute); without it pairing is judged from the
    hyperparameter columns."""
    fin = finals(trials) if len(trials) else trials
    values: dict[str, dict[str, dict[int, float]]] = {}
    order: dict[str, Any] = {}
    for name, g in fin.groupby("variant", sort=False) if len(fin) else ():
        values[name] = {m: {int(r["seed"]): float(r[m]) for _, r in g.iterrows() if not pd.isna(r["seed"]) and not pd.isna(r[m])}
                        for m in SUMMARY_STATS}
        keys = set()
        for _, r in g.iterrows():
            rec = (recipes or {}).get(int(r["number"])) or {k: r[k] for k in DATA_ORDER_KEYS if k in r.index}
            keys.add(json.dumps([rec.get(k) for k in DATA_ORDER_KEYS], sort_keys=True, default=str))
        order[name] = keys.pop() if len(keys) == 1 else None
    return Samples(values, order)


def recipes_of(study: optuna.Study) -> dict[int, dict[str, Any]]:
    """Trial number -> the recipe the trial ran (its `recipe` user attribute)."""
    out = {}
    for t in study.get_trials(deepcopy=False):
        recipe = TrialAttrs.read(t.user_attrs).recipe
        if isinstance(recipe, dict):
            out[t.number] = recipe
    return out


def compare(summary_a: pd.Series, summary_b: pd.Series, metric: str, smp: Samples) -> Comparison:
    a, b = str(summary_a["variant"]), str(summary_b["variant"])
    va = smp.values.get(a, {}).get(metric, {})
    vb = smp.values.get(b, {}).get(metric, {})
    return Comparison(
        metric=metric, a=a, b=b,
        a_mean=float(summary_a[f"{metric}_mean"]), a_std=float(summary_a[f"{metric}_std"]), a_n=int(summary_a["seeds"]),
        b_mean=float(summary_b[f"{metric}_mean"]), b_std=float(summary_b[f"{metric}_std"]), b_n=int(summary_b["seeds"]),
        test=stats.compare(va, vb, pairable=smp.pairable(a, b)),
    )


def test_words(c: Comparison) -> str:
    """The statistics of one comparison in words: CI, test, corrected p, and what it means."""
    if not c.testable:
        few = min(c.a_n, c.b_n)
        return f"{seeds_text(few)} {'each' if c.a_n == c.b_n else 'on one side'}: not enough seeds to tell"
    t = c.test
    words = (f"95% CI {ci_text(t.ci_low, t.ci_high)} points, {t.method} "
             f"{p_text(t.p_value)}, Holm-corrected {p_text(t.p_adjusted)}")
    if c.real:
        return f"{words}: a real difference"
    need = c.seeds_needed
    if need is None:
        follow = ""
    elif need > stats.MAX_SEEDS:
        follow = f"; a difference this small would take more than {stats.MAX_SEEDS} seeds a side to detect"
    else:
        follow = (f"; about {need} seeds a side would detect a difference of this size "
                  f"at {stats.POWER:.0%} power")
    return f"{words}: no clear difference{follow}"


def comparison_brief(c: Comparison) -> str:
    """A comparison in one bracket, for the terminal: "plain-56 − plain-8: +44.1 points, 95% CI
    +36.6 to +51.5, paired t-test, Holm p = 0.00077"."""
    text = f"{c.b} − {c.a}: {points(c.difference)}"
    if c.testable:
        text += f", 95% CI {ci_text(c.ci_low, c.ci_high)}, {c.method}, Holm p = {p_short(c.p_adjusted)}"
    return text


def comparison_cells(topic: str, c: Comparison) -> dict[str, str]:
    """A comparison as a row of the report's table of tests."""
    ok = c.testable
    return {"finding": topic, "comparison (b − a)": f"{c.b} − {c.a}", "metric": METRIC_LABELS.get(c.metric, c.metric),
            "difference (points)": signed(c.difference), "95% CI (points)": ci_text(c.ci_low, c.ci_high) if ok else "n/a",
            "test": c.method, "p": p_short(c.p_value) if ok else "n/a", "Holm-corrected p": p_short(c.p_adjusted) if ok else "n/a",
            "real": "not enough seeds" if not ok else "yes" if c.real else "no"}


def _by_depth(g: pd.DataFrame) -> pd.DataFrame:
    return g[g["seeds"] > 0].sort_values("depth")


def _series(g: pd.DataFrame, metric: str) -> str:
    return ", ".join(f"{r['depth']}: {pct(r[f'{metric}_mean'], r[f'{metric}_std'])}" for _, r in g.iterrows())


METRIC_LABELS = {"train_error": "training error", "test_error": "test error", "val_error": "validation error"}
#: "training error" wherever the report shows it: as He et al. plot it, not a clean re-evaluation.
TRAIN_ERROR_MEANING = "running error over each epoch's augmented training batches"


@dataclass
class _Question:
    """A finding before its tests are corrected: its comparisons and how to answer from them."""

    comparisons: list[Comparison]
    answer: Callable[[list[Comparison]], Finding]


def _degradation(label: str, plain: pd.DataFrame, smp: Samples) -> _Question | None:
    p = _by_depth(plain)
    if p["depth"].nunique() < 2:
        return None
    lo, hi = p.iloc[0], p.iloc[-1]

    def answer(cs: list[Comparison]) -> Finding:
        (c,) = cs
        if not c.testable:
            ans = Answer.NOT_ENOUGH_SEEDS
        elif c.real:
            ans = Answer.YES if c.difference > 0 else Answer.FALLS
        else:
            ans = Answer.NO_CLEAR_DIFFERENCE
        rise = "rises" if c.difference > 0 else "falls" if c.difference < 0 else "stays"
        text = (
            f"Plain nets ({label}): training error {rise} from {pct(lo['train_error_mean'], lo['train_error_std'])} "
            f"at {lo['depth']} layers to {pct(hi['train_error_mean'], hi['train_error_std'])} at {hi['depth']} layers "
            f"({points(c.difference)}; {test_words(c)}). Test error: {pct(lo['test_error_mean'], lo['test_error_std'])} to "
            f"{pct(hi['test_error_mean'], hi['test_error_std'])}. Training error by depth: {_series(p, 'train_error')}."
        )
        if ans == Answer.YES:
            text += " This is the degradation problem: the deeper plain net fits its training data worse."
        return Finding("degradation", label, "Does training error rise with depth for plain nets?", ans, text, tuple(cs))

    return _Question([compare(lo, hi, "train_error", smp)], answer)


def _residual(label: str, plain: pd.DataFrame, residual: pd.DataFrame, smp: Samples,
              plain_rise: _Question | None) -> _Question | None:
    r = _by_depth(residual)
    p = _by_depth(plain)
    common = sorted(set(p["depth"]) & set(r["depth"]))
    if not common:
        return None
    d = common[-1]
    pd_, rd = p[p["depth"] == d].iloc[0], r[r["depth"] == d].iloc[0]
    shortcut = rd["shortcut"]
    comps = [compare(pd_, rd, "train_error", smp)]  # residual - plain at the deepest shared depth
    lo = hi = None
    if r["depth"].nunique() >= 2:
        lo, hi = r.iloc[0], r.iloc[-1]
        comps.append(compare(lo, hi, "train_error", smp))

    def answer(cs: list[Comparison]) -> Finding:
        gap, rise = cs[0], (cs[1] if len(cs) > 1 else None)
        base = plain_rise.comparisons[0] if plain_rise is not None else None  # corrected in place by verdicts()
        parts = []
        if rise is not None:
            parts.append(
                f"Residual nets (option {shortcut} shortcuts): training error goes from {pct(lo['train_error_mean'], lo['train_error_std'])} "
                f"at {lo['depth']} layers to {pct(hi['train_error_mean'], hi['train_error_std'])} at {hi['depth']} layers "
                f"({points(rise.difference)}; {test_words(rise)})."
            )
        better = "lower" if gap.difference < 0 else "higher"
        parts.append(
            f"At {d} layers the residual net's training error is {pct(rd['train_error_mean'], rd['train_error_std'])} against "
            f"{pct(pd_['train_error_mean'], pd_['train_error_std'])} for the plain net ({points(gap.difference)}, {better}; "
            f"{test_words(gap)}); test error {pct(rd['test_error_mean'], rd['test_error_std'])} against "
            f"{pct(pd_['test_error_mean'], pd_['test_error_std'])}."
        )
        if any(not x.testable for x in (gap, *(y for y in (rise, base) if y is not None))):
            ans = Answer.NOT_ENOUGH_SEEDS
        elif base is not None and not (base.real and base.difference > 0):
            ans = Answer.NO_DEGRADATION
        elif rise is not None and rise.real and rise.difference > 0:
            ans = Answer.NO
            parts.append("Residual nets also train worse when deeper: the shortcuts do not remove the degradation here.")
        elif gap.real and gap.difference < 0:
            ans = Answer.YES
            parts.append("The shortcuts remove the degradation: the deep residual net trains better than the deep plain net, "
                         "and depth brings it no real rise in training error.")
        else:
            ans = Answer.NO_CLEAR_DIFFERENCE
        question = "Does the residual version remove the degradation?"
        return Finding("residual", f"{label}, option {shortcut} shortcuts", question, ans, " ".join(parts), tuple(cs))

    return _Question(comps, answer)


def _pair_question(topic: str, question: str, label: str, pr: pd.DataFrame, a: str, b: str, dataset: str,
                   smp: Samples) -> _Question:
    """Every pair is tested (and corrected with the rest); the deepest pair decides the answer."""
    pr = pr.sort_values("depth")
    sides = []
    for _, row in pr.iterrows():
        sa = pd.Series({"variant": row[f"variant_{a}"], "seeds": row[f"seeds_{a}"],
                        **{k: row[f"{k}_{a}"] for k in ("test_error_mean", "test_error_std", "train_error_mean", "train_error_std")}})
        sb = pd.Series({"variant": row[f"variant_{b}"], "seeds": row[f"seeds_{b}"],
                        **{k: row[f"{k}_{b}"] for k in ("test_error_mean", "test_error_std", "train_error_mean", "train_error_std")}})
        sides.append((sa, sb, row))
    comps = [compare(sa, sb, "test_error", smp) for sa, sb, _ in sides]

    def answer(cs: list[Comparison]) -> Finding:
        texts = []
        for c, (sa, sb, row) in zip(cs, sides):
            text = (f"{row['depth']} layers: {sb['variant']} {pct(c.b_mean, c.b_std)} against {sa['variant']} {pct(c.a_mean, c.a_std)} "
                    f"test error ({points(c.difference)}; {test_words(c)})")
            if topic == "bottleneck":
                rp, rm = row[f"params_{b}"] / row[f"params_{a}"], row[f"macs_{b}"] / row[f"macs_{a}"]
                text += f", with {rp:.2f}x the parameters and {rm:.2f}x the MACs"
            paper = [paper_error(dataset, {**row.to_dict(), pair_axis(topic): side}, prefer="2016b") for side in (a, b)]
            if all(paper):
                text += f" (paper: {paper[1].error:.2f}% against {paper[0].error:.2f}%, {paper[1].source})"
            texts.append(text)
        deep, row = cs[-1], sides[-1][2]
        if topic == "bottleneck":
            rp, rm = row[f"params_{b}"] / row[f"params_{a}"], row[f"macs_{b}"] / row[f"macs_{a}"]
            cheaper, dearer = rp < 1 and rm < 1, rp > 1 and rm > 1
            if not deep.testable:
                ans = Answer.NOT_ENOUGH_SEEDS
            elif not deep.real:
                ans = Answer.YES if cheaper else Answer.NO if dearer else Answer.MIXED
            elif deep.difference < 0:
                ans = Answer.YES if rp <= 1 and rm <= 1 else Answer.TRADE_OFF
            else:
                ans = Answer.NO if rp >= 1 and rm >= 1 else Answer.TRADE_OFF
            tail = {Answer.YES: "The bottleneck net is better per parameter and per MAC: as accurate or better for less.",
                    Answer.NO: "The bottleneck net is not better per parameter or per MAC here.",
                    Answer.TRADE_OFF: "A trade-off: one is cheaper, the other more accurate.",
                    Answer.MIXED: "Mixed: cheaper in one measure, dearer in the other, with no clear difference in accuracy.",
                    Answer.NOT_ENOUGH_SEEDS: ""}[ans]
        else:
            if not deep.testable:
                ans = Answer.NOT_ENOUGH_SEEDS
            elif deep.real:
                ans = Answer.YES if deep.difference < 0 else Answer.HURTS
            else:
                ans = Answer.NO_CLEAR_DIFFERENCE
            tail = {Answer.YES: "Pre-activation helps at depth.", Answer.HURTS: "Pre-activation is worse here.",
                    Answer.NO_CLEAR_DIFFERENCE: "No clear difference at this number of seeds.", Answer.NOT_ENOUGH_SEEDS: ""}[ans]
        text = "; ".join(texts) + "." + (f" {tail}" if tail else "")
        return Finding(topic, label, question, ans, text, tuple(cs))

    return _Question(comps, answer)


#: The pair questions: topic, the axis compared at equal depth, its two values, the question.
PAIR_QUESTIONS = (
    ("preact", "activation", "post", "pre", "Does pre-activation help at depth?"),
    ("bottleneck", "block", "basic", "bottleneck", "Is the bottleneck block better per parameter and per MAC?"),
)
PAIR_TOPICS = tuple(q[0] for q in PAIR_QUESTIONS)


def pair_axis(topic: str) -> str:
    return {q[0]: q[1] for q in PAIR_QUESTIONS}[topic]


def _finalists_question(summary: pd.DataFrame, finalists: list[str], smp: Samples) -> _Question | None:
    """An architecture search's finalists: is the one the validation split ranks first really
    better on test than each of the others? (Chosen on validation, tested on test.)"""
    fin = summary[summary["variant"].isin(finalists) & (summary["seeds"] > 0)]
    question = "Is the best sampled architecture really better than the other finalists?"
    if len(finalists) < 2:
        return None
    if len(fin) < 2:  # final runs missing, failed or at chance level: nothing to compare yet
        return _Question([], lambda cs: Finding(
            "search", "the search's finalists", question, Answer.NOT_ENOUGH_SEEDS,
            f"{len(fin)} of {len(finalists)} finalists have final runs that completed and learned; two are needed to compare them."))
    fin = fin.sort_values(["val_error_mean", "variant"], na_position="last")
    best, others = fin.iloc[0], [r for _, r in fin.iloc[1:].iterrows()]
    comps = [compare(best, o, "test_error", smp) for o in others]

    def answer(cs: list[Comparison]) -> Finding:
        texts = [f"{c.b} {pct(c.b_mean, c.b_std)} ({points(c.difference)}; {test_words(c)})" for c in cs]
        if not any(c.testable for c in cs):
            ans = Answer.NOT_ENOUGH_SEEDS
        elif all(c.real and c.difference > 0 for c in cs):
            ans = Answer.YES
        elif any(c.real and c.difference < 0 for c in cs):
            ans = Answer.NO
        elif any(c.real for c in cs):
            ans = Answer.MIXED
        else:
            ans = Answer.NO_CLEAR_DIFFERENCE
        tail = {Answer.YES: "It is better than every other finalist.",
                Answer.NO: "Another finalist is better on test: the validation split ranked them differently.",
                Answer.MIXED: "It is better than some finalists, with no clear difference from the others.",
                Answer.NO_CLEAR_DIFFERENCE: "No clear difference at this number of seeds: any of them is as good a choice.",
                Answer.NOT_ENOUGH_SEEDS: "Give [seeds] count = 2 or more to test it."}[ans]
        text = (f"{cs[0].a}, first on validation error, has {pct(cs[0].a_mean, cs[0].a_std)} test error; against it: "
                + "; ".join(texts) + f". {tail}")
        return Finding("search", "the search's finalists", question, ans, text, tuple(cs))

    return _Question(comps, answer)


def verdicts(summary: pd.DataFrame, dataset: str = "", smp: Samples | None = None,
             finalists: list[str] | None = None, extra_p: list[float] | None = None) -> list[Finding]:
    """The study's answers, family by family: degradation of plain nets, its removal by
    shortcuts, pre- vs post-activation at equal depth, bottleneck vs basic per parameter and MAC;
    and, for an architecture search, whether its best `finalists` is better than the others.
    Questions a study cannot ask (no plain nets, one depth, no pairs) give no finding.

    `smp`: the final runs' per-seed values (`samples(trials)`); every comparison of every
    finding is tested on them and Holm-corrected together (ablate.stats). `extra_p`: the
    report's other p-values (design spaces compared), corrected in the same family, after these:
    `joint_holm` gives their adjusted values."""
    if summary.empty:
        return []
    smp = smp or Samples({}, {})
    questions: list[_Question] = []
    for label, g in groups(summary, FAMILY_AXES):
        plain, residual = g[g["connection"] == "plain"], g[g["connection"] == "residual"]
        rise = _degradation(label, plain, smp)
        if rise is not None:
            questions.append(rise)
        if len(plain):
            for _, res in residual.groupby("shortcut", sort=False):
                q = _residual(label, plain, res, smp, rise)
                if q is not None:
                    questions.append(q)
    for topic, axis, a, b, question in PAIR_QUESTIONS:
        pr = pairs(summary[summary["seeds"] > 0], axis, a, b)
        if pr.empty:
            continue
        # Pairs of one family: everything but depth and the compared axis held fixed.
        held = [x for x in ("connection", *FAMILY_AXES, "shortcut") if x != axis]
        for _, group in pr.groupby(held, sort=False, dropna=False):
            label = family_label(group.iloc[0], held)
            questions.append(_pair_question(topic, question, label, group, a, b, dataset, smp))
    if finalists:
        q = _finalists_question(summary, finalists, smp)
        if q is not None:
            questions.append(q)
    # Holm across every comparison of the report, then answer each question from its corrected tests.
    flat = [c for q in questions for c in q.comparisons]
    corrected = iter(stats.correct([c.test for c in flat], extra_p=list(extra_p or ())))
    for q in questions:
        q.comparisons[:] = [dataclasses.replace(c, test=next(corrected)) for c in q.comparisons]
    return [q.answer(q.comparisons) for q in questions]


def joint_holm(findings: list[Finding], extra_p: list[float]) -> list[float]:
    """The Holm-adjusted values of `extra_p`, corrected together with every comparison of
    `findings` as `verdicts(..., extra_p=extra_p)` corrected them (the findings' tests first)."""
    own = [c.p_value for f in findings for c in f.comparisons]
    return stats.holm(own + list(extra_p))[len(own):]


FINDING_COLUMNS = ("topic", "family", "question", "answer", "metric", "a", "b", "a_mean", "a_std", "a_n",
                   "b_mean", "b_std", "b_n", "difference", "ci_low", "ci_high", "p_value", "p_adjusted", "method", "real")


def findings_table(findings: list[Finding]) -> pd.DataFrame:
    """The findings flat, one row per comparison, for export and tests. `p_value` is the test's
    own, `p_adjusted` Holm-corrected across the report, `real` whether that rejects at 5%."""
    rows = []
    for f in findings:
        for c in f.comparisons or (None,):
            rows.append({
                "topic": f.topic, "family": f.family, "question": f.question, "answer": f.answer.value,
                **({} if c is None else {
                    "metric": c.metric, "a": c.a, "b": c.b, "a_mean": c.a_mean, "a_std": c.a_std, "a_n": c.a_n,
                    "b_mean": c.b_mean, "b_std": c.b_std, "b_n": c.b_n, "difference": c.difference,
                    "ci_low": c.ci_low, "ci_high": c.ci_high, "p_value": c.p_value, "p_adjusted": c.p_adjusted,
                    "method": c.method, "real": bool(c.real),
                }),
            })
    return pd.DataFrame(rows, columns=list(FINDING_COLUMNS))
