"""Feature analysis: what every latent of an SAE learned, in one streaming pass (``analyze``), stored as an
analysis folder and read through ``FeatureSet`` / ``Feature``."""

from saekit.features.analysis import analyze
from saekit.features.featureset import Example, Feature, FeatureSet, Quantile, analyses

__all__ = ["Example", "Feature", "FeatureSet", "Quantile", "analyses", "analyze"]
