"""Upper bounds on every number a study file gives, each with the reason it is there.

One place for all of them (the study parser, the variant spec and the recipe import them), so a
message and the code that enforces it can never disagree. They are checked before anything is
built, measured or allocated: validating any study file is instant, and a bound that fails says
what the largest allowed value is and why.

The bounds are generous: each is well above what the papers ablate implements use (He et al.
2016, 2016b; Goyal et al. 2017), and well below what would overflow a 64-bit integer, exhaust
memory before training starts, or keep `ablate variants` counting MACs for minutes.
"""

from __future__ import annotations

#: Study files are a few hundred bytes (the shipped ones are under 2 KiB).
MAX_STUDY_BYTES = 1 << 20
MAX_STUDY_BYTES_REASON = "study files are small tables of settings (the shipped ones are under 2 KiB)"
#: Tables inside tables: `[search] lr = { low = ... }` is three levels, `[[variant]] blocks = [...]` four.
MAX_NESTING = 6
#: Values in one list (a grid axis, blocks, milestones, choices).
MAX_LIST = 256
#: Characters in one string value or key (the description may be longer).
MAX_STRING = 200
MAX_DESCRIPTION = 10_000

#: Per stage: ResNet-1202, the deepest net of He et al. 2016, has 200 blocks per stage.
MAX_BLOCKS_PER_STAGE = 400
BLOCKS_REASON = "twice ResNet-1202's 200, the deepest net in He et al. 2016"
#: Base width: WRN-28-10 (Zagoruyko and Komodakis 2016), among the widest ResNets, has base width 160.
MAX_WIDTH = 1024
WIDTH_REASON = "over six times WRN-28-10's 160, among the widest ResNets published"

#: Variants of one study: grid points (before duplicates are merged) plus [[variant]] tables.
MAX_VARIANTS = 256
VARIANTS_REASON = "every variant is trained on its own; split a larger ablation into several studies"
#: Blocks over all variants of one study: `ablate variants` and `ablate run` build each variant on the
#: meta device to count its parameters and MACs (a few milliseconds per block on a CPU).
MAX_STUDY_BLOCKS = 5_000
STUDY_BLOCKS_REASON = "about eight ResNet-1202s; measuring more takes minutes before anything trains"

#: Runs of one study, one after another.
MAX_EPOCHS = 10_000
EPOCHS_REASON = "He et al. train CIFAR nets for about 164 epochs and ImageNet nets for about 120"
MAX_SEEDS = 100
SEEDS_REASON = "every seed is a full training run of every variant; 3 to 5 seeds are usual"
MAX_TRIALS = 1_000
TRIALS_REASON = "search trials per variant, each a full training run"
#: Architectures trained by one search, over all its spaces ([sample] count x spaces).
MAX_SAMPLES = 2_000
SAMPLES_REASON = "each sampled architecture is a full training run; split a larger search into several studies"
#: Samples in a row that could not be trained (over the budget, not a valid net, or sampled while
#: their twin was still training) before a search stops: a space that holds fewer feasible
#: architectures than `count`, or a sampler that keeps proposing what cannot be trained, is stopped
#: with one line, not left to loop. A random draw from a space where 1 in 20 architectures fits
#: the budget misses 100 times in a row with probability 0.95^100 = 0.6%.
MAX_INFEASIBLE = 100
MAX_UNITS = 20_000
UNITS_REASON = "trials in the whole study (variants x (search trials + seeds)), each a full training run"

MAX_BATCH_SIZE = 32_768
BATCH_REASON = "four times the largest batch in the ResNet literature (8192, Goyal et al. 2017)"
MAX_LR = 10.0
LR_REASON = "SGD learning rates for ResNets stay below a few units (Goyal et al. 2017 peak at 3.2 for batch 8192)"
MAX_WEIGHT_DECAY = 1.0
WEIGHT_DECAY_REASON = "ResNets use 1e-4 to 5e-4 (He et al. 2016, Goyal et al. 2017); near 1 the decay alone erases the weights"
MAX_GAMMA = 1.0
GAMMA_REASON = "the step schedule multiplies the learning rate by gamma at each milestone to lower it (He et al.: 0.1); 1 keeps it"
#: Points of the training curve per epoch (`points_per_epoch`); an epoch with fewer steps records every step.
MAX_POINTS_PER_EPOCH = 1_000
POINTS_REASON = ("each point is a record in the trial's stored history; 1000 already resolve every step of a CIFAR-10 epoch "
                 "at batch 64 (782 steps)")

#: Seeds. A final run's seed is an Optuna param, which Optuna stores as a float (exact up to 2**53),
#: and is given to numpy (below 2**32) and torch; the largest final seed, start + count - 1,
#: stays below 2**31 so that every one is exact and valid everywhere, as a signed 32-bit integer too.
MAX_SEED = 2**31 - 1
MAX_FIRST_SEED = MAX_SEED - MAX_SEEDS
SEED_REASON = (f"the final runs' seeds, start to start + count - 1 (count at most {MAX_SEEDS}), must stay below 2**31 "
               "to be stored exactly (Optuna keeps params as floats) and be valid numpy and torch seeds")


def shown(value: object) -> str:
    """A value as a message quotes it: an integer of many digits shortened, so the line stays short."""
    text = repr(value)
    if isinstance(value, int) and len(text) > 24:
        return f"{text[:12]}...({len(text)} digits)"
    return text

#: Examples a final run's diagnostics use (ablate.spec.diagnostics): each lesioned block and each
#: landscape point is one pass over them.
MAX_DIAGNOSTIC_IMAGES = 65_536
DIAGNOSTIC_IMAGES_REASON = ("every lesioned block and every landscape point is a pass over them; Li et al. 2018 and "
                            "Veit et al. 2016 used the 50k-image CIFAR-10 training or 10k test set")
