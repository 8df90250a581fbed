"""The papers' published CIFAR-10 errors, labelled with what exactly each number is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

__all__ = ["PaperValue", "HE2016_TABLE6", "HE2016B", "paper_error"]


@dataclass(frozen=True)
class PaperValue:
    """A published CIFAR-10 test error (%) and what exactly it is."""

    error: float
    std: float | None  # over runs, where the paper gives one
    source: str  # "He et al. 2016, Table 6"
    what: str  # "mean ± std of 5 runs (best 6.43)", "as reported", ...

    @property
    def label(self) -> str:
        spread = f" ± {self.std:.2f}" if self.std is not None else ""
        return f"{self.error:.2f}%{spread}: {self.source}, {self.what}"


_T6, _T3 = "He et al. 2016, Table 6", "He et al. 2016b, Table 3"
#: He et al. 2016, Table 6: CIFAR-10 test error (%) of the option-A ResNets. ResNet-110 is the one
#: net run 5 times there: "6.43 (6.61 ± 0.16)", best (mean ± std); we compare with the mean.
HE2016_TABLE6 = {d: PaperValue(e, None, _T6, "as reported (one number per net)") for d, e in
                 {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 1202: 7.93}.items()}
HE2016_TABLE6[110] = PaperValue(6.61, 0.16, _T6, "mean ± std of 5 runs (best of the 5: 6.43)")
#: He et al. 2016b, Table 3: CIFAR-10 test error (%), original (post) vs full pre-activation units.
#: Its ResNet-110 original-unit figure is 2016's mean of 5 runs.
HE2016B = {("post", "basic", 110): PaperValue(6.61, None, _T3, "original units, the mean of 5 runs from He et al. 2016"),
           ("pre", "basic", 110): PaperValue(6.37, None, _T3, "full pre-activation, as reported"),
           ("post", "bottleneck", 164): PaperValue(5.93, None, _T3, "original units, as reported"),
           ("pre", "bottleneck", 164): PaperValue(5.46, None, _T3, "full pre-activation, as reported"),
           ("post", "bottleneck", 1001): PaperValue(7.61, None, _T3, "original units, as reported"),
           ("pre", "bottleneck", 1001): PaperValue(4.92, None, _T3, "full pre-activation, as reported")}


def paper_error(dataset: str, row: pd.Series | dict[str, Any], prefer: str = "2016") -> PaperValue | None:
    """The paper's CIFAR-10 test error for a variant, labelled with what it is, when the variant
    is one of the papers' nets (CIFAR stem, width 16) on CIFAR-10; None otherwise.

    ResNet-110 is in both papers (6.61, the mean of 5 runs, in both); `prefer="2016b"` takes the
    2016b table first, for pre- against post-activation comparisons.
    """
    if dataset != "cifar10" or row["stem"] != "cifar" or row["width"] != 16 or row["connection"] != "residual":
        return None
    key = (row["activation"], row["block"], row["depth"])
    if prefer == "2016b" and key in HE2016B:
        return HE2016B[key]
    if row["activation"] == "post" and row["block"] == "basic" and row["shortcut"] == "A" and row["depth"] in HE2016_TABLE6:
        return HE2016_TABLE6[row["depth"]]
    return HE2016B.get(key)
