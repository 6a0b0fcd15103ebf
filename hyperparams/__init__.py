# RL Zoo hyperparameter files of sb3_pgext, one <algo>.yml per algorithm; installed as sb3_pgext.hyperparams
