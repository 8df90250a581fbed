"""Data on the device, the parametric ResNet family, training and checkpoints. Imports no Optuna."""
