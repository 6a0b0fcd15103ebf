"""Small helpers shared by the algorithms."""

from stable_baselines3.common.type_aliases import PyTorchObs


def repeat_observations(obs: PyTorchObs, n_times: int) -> PyTorchObs:
    """Stack ``n_times`` copies of a batch of observations (tensor or dict of tensors) along dim 0."""
    if n_times == 1:
        return obs
    if isinstance(obs, dict):
        return {key: value.repeat(n_times, *([1] * (value.dim() - 1))) for key, value in obs.items()}
    return obs.repeat(n_times, *([1] * (obs.dim() - 1)))
