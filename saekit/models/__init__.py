"""Model loading and hook points."""

from saekit.models.language_model import LanguageModel
from saekit.models.loading import load_model

__all__ = ["LanguageModel", "load_model"]
