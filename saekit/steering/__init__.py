"""Steering a model with SAE features: exact interventions at the SAE's hook point (``steer``), generations
side by side (``compare_steering``) and the measured effect of a coefficient sweep (``steering_sweep``)."""

from saekit.steering.compare import SteeringComparison, SteeringSweep, compare_steering, steering_sweep
from saekit.steering.intervention import MODES, POSITIONS, Steering, steer

__all__ = ["MODES", "POSITIONS", "Steering", "SteeringComparison", "SteeringSweep", "compare_steering", "steer",
           "steering_sweep"]
