"""
OffPAC's gradient step captured as a CUDA graph (``cuda_graph=True``, the default on CUDA with the fast update).

On a GPU an eager gradient step is bound by Python and kernel launches, not by arithmetic: about 240 kernels,
each launched from Python, keep the GPU busy for a fraction of the step (``benchmark/speed/cuda/compare.md``).
Captured once with ``torch.cuda.graph``, the whole step (α's, the critics' and the actor's losses, backward passes
and fused Adam steps) replays with one launch. The recipe is LeanRL's (https://github.com/pytorch-labs/LeanRL) and
PyTorch's "whole network capture" (https://pytorch.org/docs/stable/notes/cuda.html#whole-network-capture):

- static inputs: each replay minibatch is copied into tensors allocated once; the minibatches of one ``train()``
  call are sampled from SB3's replay buffer together, up to :data:`SAMPLED_STEPS` at a time (one host-to-device
  copy), and sliced, where the buffer draws its rows independently (SB3's ``ReplayBuffer``, ``DictReplayBuffer``
  and ``NStepReplayBuffer``; ``HerReplayBuffer`` puts its relabelled rows last, so it is sampled step by step);
- the optimizers are made ``capturable`` and read their learning rate from a device tensor, which a schedule fills
  before each call (a Python float would be frozen into the graph);
- the random draws of a replay are fresh: PyTorch registers the CUDA generator with the graph and advances its
  offset at each replay (TorchRL issue 3002 is what happens otherwise: the same noise at every step);
- the outputs (the logged values) are copied out after each replay, before the next one overwrites them;
- the Polyak update of the targets runs outside the graph (one foreach kernel), so ``target_update_interval``
  keeps working;
- a few eager steps on a side stream before the capture (PyTorch's rule: libraries allocate their workspaces then);
  they are real gradient steps of the call, on its first batches.

If the capture fails, the model says why once (a warning) and trains eagerly from then on. What the step reads
as a Python value is frozen into the graph when it is captured: ``gamma`` (without n-step returns), the target
entropy, a fixed ``ent_coef`` (its tensor is read, so filling it in place is seen), Adam's betas and eps; after
changing one of them, ``model._cuda_graph_step = None`` captures the step again.
"""

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch as th
from stable_baselines3.common.buffers import DictReplayBuffer, NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from sb3_pgext.common.utils import step_counts_on_parameter_device

if TYPE_CHECKING:
    from sb3_pgext.offpac.offpac import OffPAC

#: eager gradient steps on a side stream before the capture
WARM_UP_STEPS = 3
#: gradient steps whose minibatches are sampled at once (bounds the memory of one sample)
SAMPLED_STEPS = 64
#: SB3's buffers whose ``sample(n)`` draws n rows independently and uniformly, so that a slice is a minibatch
INDEPENDENT_ROWS = (ReplayBuffer, DictReplayBuffer, NStepReplayBuffer)


def minibatches(
    buffer: ReplayBuffer, gradient_steps: int, batch_size: int, env: VecNormalize | None
) -> Iterator[ReplayBufferSamples]:
    """
    The ``gradient_steps`` minibatches of one ``train()`` call: sampled :data:`SAMPLED_STEPS` at a time and sliced
    where the buffer's rows are independent (:data:`INDEPENDENT_ROWS`, exact types), one ``sample`` each otherwise.

    :param buffer: the replay buffer
    :param gradient_steps: how many minibatches
    :param batch_size: rows per minibatch
    :param env: the VecNormalize wrapper whose statistics normalise the samples, if any
    """
    if type(buffer) not in INDEPENDENT_ROWS:
        for _ in range(gradient_steps):
            yield buffer.sample(batch_size, env=env)
        return
    for first in range(0, gradient_steps, SAMPLED_STEPS):
        n_steps = min(SAMPLED_STEPS, gradient_steps - first)
        batches = buffer.sample(batch_size * n_steps, env=env)
        for index in range(n_steps):
            yield batch_slice(batches, index, batch_size)


def batch_slice(batches: ReplayBufferSamples, index: int, batch_size: int) -> ReplayBufferSamples:
    """
    The ``index``-th minibatch of ``batch_size`` rows of replay samples drawn for several gradient steps at once
    (SB3's replay buffers draw the rows independently and uniformly, so each slice is a minibatch as ``sample`` gives).

    :param batches: the samples of every minibatch, ``batch_size`` rows each, in order
    :param index: which minibatch
    :param batch_size: rows per minibatch
    """
    rows = slice(index * batch_size, (index + 1) * batch_size)
    return ReplayBufferSamples(*(_map(lambda tensor: tensor[rows], field) for field in batches))


def _map(function: Any, value: Any) -> Any:
    """``function`` applied to a tensor, to each tensor of a dict of them (Dict observations); None stays None."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {key: function(item) for key, item in value.items()}
    return function(value)


def _copy_into(static: Any, value: Any) -> None:
    if isinstance(static, dict):
        for key, tensor in static.items():
            tensor.copy_(value[key], non_blocking=True)
    elif static is not None:
        static.copy_(value, non_blocking=True)


class CapturedGradientStep:
    """
    OffPAC's ``_gradient_step`` as a CUDA graph for one batch size: called with a minibatch, it runs the warm-up
    steps eagerly, then captures, then replays; it returns the logged values of the step (copies).

    :param model: the OffPAC model (on a CUDA device, with the fast update)
    :param batch_size: the minibatch size the graph is captured for
    """

    def __init__(self, model: "OffPAC", batch_size: int):
        self.model = model
        self.batch_size = batch_size
        self.warm_up_left = WARM_UP_STEPS
        self.graph: th.cuda.CUDAGraph | None = None
        self.inputs: ReplayBufferSamples | None = None
        self.outputs: dict[str, th.Tensor] = {}
        self.learning_rates: list[tuple[dict[str, Any], th.Tensor]] = []
        self.side_stream = th.cuda.Stream(device=model.device)

    def __call__(self, batch: ReplayBufferSamples) -> dict[str, th.Tensor]:
        with th.cuda.device(self.model.device):  # the capture stream and replays on the model's GPU, not the current one
            if self.graph is None and self.warm_up_left == 0 and not self.model._cuda_graph_failed:
                self._capture(batch)
            if self.graph is None:  # warming up, or the capture failed: an eager step
                self.warm_up_left = max(self.warm_up_left - 1, 0)
                self.side_stream.wait_stream(th.cuda.current_stream())
                with th.cuda.stream(self.side_stream):
                    logs = self.model._gradient_step(batch)
                th.cuda.current_stream().wait_stream(self.side_stream)
                return logs
            assert self.inputs is not None
            for static, value in zip(self.inputs, batch):
                _copy_into(static, value)
            self.graph.replay()
            return {key: value.clone() for key, value in self.outputs.items()}

    def update_learning_rates(self) -> None:
        """After SB3 set each parameter group's rate (a float): the float into the group's tensor, the tensor back."""
        for group, rate in self.learning_rates:
            rate.fill_(float(group["lr"]))
            group["lr"] = rate

    def _capture(self, batch: ReplayBufferSamples) -> None:
        model = self.model
        stream = th.cuda.current_stream()
        try:
            self._make_optimizers_capturable()
            self.inputs = ReplayBufferSamples(*(_map(th.clone, field) for field in batch))
            graph = th.cuda.CUDAGraph()
            # torch.distributions checks its arguments' values with a read back to the host, which a capture forbids;
            # they were checked by the eager warm-up steps. (The class attribute is torch's default, read to restore it.)
            validate = th.distributions.Distribution._validate_args
            th.distributions.Distribution.set_default_validate_args(False)
            try:
                with th.cuda.graph(graph):
                    self.outputs = model._gradient_step(self.inputs)
            finally:
                th.distributions.Distribution.set_default_validate_args(validate)
            self.graph = graph
        except Exception as error:  # noqa: BLE001 (any failure: say why once, then train eagerly)
            # torch.cuda.graph switches to its capture stream before beginning the capture and switches back after
            # ending it: a capture that failed in between leaves its stream current
            th.cuda.set_stream(stream)
            th.cuda.synchronize()
            model._cuda_graph_failed = True
            self.release()
            warnings.warn(
                f"OffPAC: capturing the gradient step as a CUDA graph failed ({type(error).__name__}: {error}); "
                "it trains eagerly from now on (cuda_graph=False turns the capture off)",
                RuntimeWarning,
                stacklevel=4,
            )

    def _make_optimizers_capturable(self) -> None:
        """
        Each optimizer capturable, each group's learning rate a device tensor (kept in ``learning_rates``), and
        each step count on its parameter's device (Adam's non-fused implementations keep it on the CPU).
        """
        for optimizer in self.model._optimizers():
            for group in optimizer.param_groups:
                rate = th.tensor(float(group["lr"]), dtype=th.float32, device=self.model.device)
                group["lr"], group["capturable"] = rate, True
                self.learning_rates.append((group, rate))
                step_counts_on_parameter_device(optimizer, group)

    def release(self) -> None:
        """The optimizers as they were before the capture (float learning rates, not capturable)."""
        for group, rate in self.learning_rates:
            group["lr"], group["capturable"] = float(rate), False
        self.learning_rates = []
