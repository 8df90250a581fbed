"""The study file and what it declares: datasets, variants, recipes, limits. Imports neither torch nor Optuna."""
