"""Sparse autoencoders: architectures, the training job, evaluation, templates, import/export.

An architecture is a plug-in: an ``SAE`` subclass registered with ``@register_arch(name, ParamsClass)``,
where ``ParamsClass`` is a frozen dataclass subclassing ``ArchParams`` that holds (and validates) the
architecture's own settings. ``SAEConfig(arch=name, **settings)`` then builds it, and training, saving,
loading and the SAELens export work for it as for the built-in ones.
"""

from saekit._checks import check_choice, check_finite, check_non_negative, check_positive_int
from saekit.sae.config import ArchParams, SAEConfig, TrainConfig
import saekit.sae.archs  # noqa: E402,F401  the built-in architectures (imported first: `archs` below is the function)
from saekit.sae.model import SAE, TrainingOutput, TrainingState, archs, register_arch

# the checks an architecture's settings use in ``__post_init__`` (see docs/adding-an-architecture.md)
__all__ = ["ArchParams", "SAE", "SAEConfig", "TrainConfig", "TrainingOutput", "TrainingState", "archs", "check_choice",
           "check_finite", "check_non_negative", "check_positive_int", "register_arch"]
