"""Activation extraction into Zarr stores, and reading them back."""

from saekit.activations.extraction import extract
from saekit.activations.store import ActivationStore, activation_stores

__all__ = ["ActivationStore", "activation_stores", "extract"]
