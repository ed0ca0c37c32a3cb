"""Scoring SAEs (``sk.evaluate``): core metrics, recovery of a known dictionary (``SyntheticFeatures``,
``recovery``), sparse probing, first-letter absorption and the auto-interpretation summary, one module each. The
layer sits above the SAEs, analyses and steering it scores."""

from saekit.evals.ground_truth import matched_cosines, recovery
from saekit.evals.synthetic import SyntheticConfig, SyntheticFeatures

__all__ = ["SyntheticConfig", "SyntheticFeatures", "matched_cosines", "recovery"]
