"""What the user declares: the study file and everything it names. Imports neither torch nor Optuna.

    study      study files: TOML in, one frozen `Study` out, or one clear `StudyError`
    variants   the variant family: `VariantSpec`, the axes, the registry of the papers' nets
    recipe     the training recipe and its schedule
    catalog    the datasets: shapes, classes, statistics
    space      design spaces: `[[space]]` and `[sample]` of an architecture search
    owndata    your own data: a [dataset] table's folder or .npz file, scanned without decoding
    diagnostics  the [diagnostics] table: which "why" measurements every final run gets
    limits     every bound a study file is held to, with its reason
    paths      one rule for `~` and relative paths
"""

from ablate.spec import limits
from ablate.spec.catalog import AUGMENTATIONS, DATASETS, DatasetInfo, dataset_info
from ablate.spec.diagnostics import LANDSCAPES, Diagnostics, DiagnosticsError, parse_diagnostics
from ablate.spec.owndata import OwnData, OwnDataError, scan_own_data
from ablate.spec.paths import PathError, usable_dir, user_path
from ablate.spec.recipe import DATA_ORDER_KEYS, Recipe, input_info, make_recipe, recipe_dict, schedule
from ablate.spec.space import Sample, Space, SpaceAxis
from ablate.spec.study import FIRST_SEED, Study, StudyError, definition, growth, load_study, parse_study
from ablate.spec.variants import AXES, VariantSpec, get_variant, list_variants, make_variant

__all__ = ["limits", "AUGMENTATIONS", "DATASETS", "DatasetInfo", "dataset_info", "OwnData", "OwnDataError",
           "scan_own_data", "PathError", "usable_dir", "user_path",
           "DATA_ORDER_KEYS", "Recipe", "input_info", "make_recipe", "recipe_dict", "schedule", "FIRST_SEED", "Study",
           "StudyError", "definition", "growth", "load_study", "parse_study", "AXES", "VariantSpec", "get_variant",
           "list_variants", "make_variant", "Sample", "Space", "SpaceAxis", "LANDSCAPES", "Diagnostics",
           "DiagnosticsError", "parse_diagnostics"]
