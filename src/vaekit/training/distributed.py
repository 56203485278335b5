"""What several training processes need beyond Accelerate's DDP wrapper of the model.

- The discriminator and the loss's own parameters (LDM's learned log-variance) live outside the DDP
  wrapper: their gradients are averaged here, before their optimizer steps.
- The discriminator's BatchNorm computes its statistics over the global batch: ``nn.SyncBatchNorm`` on
  GPUs; on CPUs (gloo), where ``nn.SyncBatchNorm`` refuses to run, ``GlobalBatchNorm2d`` does the same
  with an all-reduce that carries gradients.
- Reparameterisation noise is drawn for the whole global batch from one generator (identical on every
  process) and each process takes its own rows, so a run sees the same noise per example whatever the
  number of processes, and a resumed run continues the stream with any number of processes.
- Logged values and the stop flag are agreed on by all processes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def launched_on_cpu() -> bool:
    """Several processes (torchrun / accelerate launch set WORLD_SIZE) and no GPU: Accelerate must be told
    ``cpu=True`` to join them with gloo, or each process would train alone."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def process_state():
    """Accelerate's ``PartialState`` for this launch (CPU process groups included)."""
    from accelerate import PartialState

    return PartialState(cpu=launched_on_cpu())


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose gradient is the sum of the processes' gradients (each process's loss
    depends on every process's input through the sum)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(tensor)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics are those of the global batch across processes
    (per-channel sums all-reduced, differentiably); in eval mode or alone, plain BatchNorm2d. The same
    parameters and buffers (state-dict compatible)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        channels = x.shape[1]
        shape = (1, channels, 1, 1)
        # Two passes, as the single-process kernel: the global mean, then the centred squares around it
        # (E[x²] − E[x]² would lose digits when the mean is large against the spread).
        count = torch.full((1,), x.numel() / channels, dtype=x.dtype, device=x.device)
        sums = all_reduce_sum(torch.cat([x.sum((0, 2, 3)), count]))
        n = sums[-1]
        mean = sums[:channels] / n
        centred = x - mean.view(shape)
        var = all_reduce_sum(centred.pow(2).sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), momentum)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        return out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out


def sync_batch_norm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm in ``module`` normalised over the global batch (in place; returns the module)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                            child.track_running_stats).to(device)
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement)
        else:
            sync_batch_norm(child, device)
    return module


def average_gradients(parameters: list[nn.Parameter]) -> None:
    """Average the gradients of parameters that DDP does not manage, across processes (one all-reduce)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if world_size() == 1 or not grads:
        return
    for grad, synced in zip(grads, mean_tensors(*grads)):
        grad.copy_(synced)


def mean_tensors(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The tensors averaged over processes (copies; the tensors themselves unchanged when alone)."""
    if world_size() == 1:
        return list(tensors)
    return [total / world_size() for total in sum_over_processes(*tensors)]


def mean_over_processes(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each value averaged over processes (every process must call this with the same keys)."""
    if world_size() == 1 or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(keys, (tensor / world_size()).tolist()))


def any_process(flag: bool, device: torch.device) -> bool:
    """True on every process when ``flag`` is true on any (e.g. a stop request that reached one)."""
    if world_size() == 1:
        return flag
    tensor = torch.tensor([float(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


class GlobalBatchNoise:
    """Standard normal noise for this process's share of a global batch.

    Process ``p`` of ``n`` holds examples p, p + n, p + 2n, ... of each global batch (the sampler's
    sharding); the noise is drawn for the whole global batch and the same rows are taken. With one
    process this is exactly ``torch.randn(shape, generator=generator)``.
    """

    def __init__(self, generator: torch.Generator, num_processes: int = 1, process_index: int = 0):
        self.generator = generator
        self.num_processes = num_processes
        self.process_index = process_index
        self.global_batch: int | None = None

    def randn(self, shape: torch.Size, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if self.num_processes == 1:
            return torch.randn(shape, generator=self.generator, device=device, dtype=dtype)
        full = torch.randn((self.global_batch, *shape[1:]), generator=self.generator, device=device, dtype=dtype)
        rows = full[self.process_index::self.num_processes]
        if rows.shape[0] != shape[0]:
            raise RuntimeError(f"noise for {shape[0]} examples asked, {rows.shape[0]} in this process's share")
        return rows

    def randint(self, high: int, count: int, device: torch.device) -> torch.Tensor:
        """Integers uniform on [0, high) for this process's ``count`` examples (e.g. diffusion timesteps)."""
        if self.num_processes == 1:
            return torch.randint(0, high, (count,), generator=self.generator, device=device)
        full = torch.randint(0, high, (self.global_batch,), generator=self.generator, device=device)
        rows = full[self.process_index::self.num_processes]
        if rows.shape[0] != count:
            raise RuntimeError(f"draws for {count} examples asked, {rows.shape[0]} in this process's share")
        return rows


def sum_over_processes(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The tensors summed over processes (copies; unchanged when alone)."""
    if world_size() == 1:
        return list(tensors)
    flat = torch._utils._flatten_dense_tensors([t.detach() for t in tensors]).clone()
    dist.all_reduce(flat)
    return list(torch._utils._unflatten_dense_tensors(flat, list(tensors)))


def gather_examples(rows: torch.Tensor) -> torch.Tensor:
    """This process's examples ``(b, ...)`` of a global batch gathered from every process, in global order:
    process p holds examples p, p + n, p + 2n, ... (the sampler's sharding), so the result is the batch one
    process would have had. Alone: ``rows`` itself."""
    n = world_size()
    if n == 1:
        return rows
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(n)]
    dist.all_gather(counts, count)
    most = int(max(c.item() for c in counts))
    padded = torch.zeros((most, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    padded[:rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded)
    total = sum(int(c.item()) for c in counts)
    return torch.stack(parts, 1).reshape(most * n, *rows.shape[1:])[:total]
