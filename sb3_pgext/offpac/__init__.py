from sb3_pgext.offpac.offpac import OffPAC
from sb3_pgext.offpac.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

__all__ = ["CnnPolicy", "MlpPolicy", "MultiInputPolicy", "OffPAC"]
