from sb3_pgext.ppokl.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_pgext.ppokl.ppokl import PPOKL

__all__ = ["PPOKL", "CnnPolicy", "MlpPolicy", "MultiInputPolicy"]
