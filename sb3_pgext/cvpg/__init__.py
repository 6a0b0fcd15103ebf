from sb3_pgext.cvpg.cvpg import CVPG
from sb3_pgext.cvpg.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

__all__ = ["CVPG", "CnnPolicy", "MlpPolicy", "MultiInputPolicy"]
