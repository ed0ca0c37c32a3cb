"""Scoring SAEs: activations from a known dictionary and how well an SAE recovers it (``SyntheticFeatures``,
``recovery``). The layer sits above the SAEs and the analyses it scores."""

from saekit.evaluation.recovery import absorption, matched_cosines, recovery
from saekit.evaluation.synthetic import SyntheticConfig, SyntheticFeatures

__all__ = ["SyntheticConfig", "SyntheticFeatures", "absorption", "matched_cosines", "recovery"]
