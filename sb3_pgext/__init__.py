"""sb3_pgext: policy-gradient extensions for Stable-Baselines3."""

import os

from sb3_pgext.common.callbacks import VarianceDecompositionCallback
from sb3_pgext.common.gradient_variance import gradient_variance
from sb3_pgext.common.variance_decomposition import variance_decomposition
from sb3_pgext.cvpg import CVPG
from sb3_pgext.cvpg.callbacks import CriticPredictabilityCallback
from sb3_pgext.offpac import OffPAC
from sb3_pgext.ppokl import PPOKL

with open(os.path.join(os.path.dirname(__file__), "version.txt")) as file_handler:
    __version__ = file_handler.read().strip()

__all__ = ["CVPG", "CriticPredictabilityCallback", "OffPAC", "PPOKL", "VarianceDecompositionCallback", "gradient_variance", "variance_decomposition"]
