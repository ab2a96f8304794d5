"""Meta-training on several processes with PyTorch's own engine: DistributedDataParallel or FSDP2 (docs/distributed.md).

Calling a TTTE2EModel is its meta_loss, so either wrapper sees a whole meta-step (the inner loop over chunks, its
inner gradients and, under checkpointing, the recomputation in the backward) as one forward and one backward:

- ``ddp``: every rank holds the whole model; the gradients of W_0 and of every static weight reach their
  AccumulateGrad nodes once per backward, after the second-order terms of all chunks have been summed (the
  recomputation of a checkpointed chunk returns its parameter gradients through the outer graph, it does not
  accumulate them itself), so DDP's bucketed all-reduce overlaps the end of the backward and needs no ``no_sync`` or
  ``static_graph``.
- ``fsdp``: ``fully_shard`` on every block and on the model (the root: embedding, final norm). Parameters, gradients
  and AdamW state are sharded between steps. The inner loop reads every suffix block's weights in every chunk, and
  the model reads weights directly rather than through the blocks' forwards, so gathering per block call would mean
  one all-gather per block per chunk; instead a forward pre-hook of the root gathers every block once per step
  (``reshard_after_forward=False``), and FSDP's post-backward reduce-scatters each block's gradient and reshards it
  when the outer backward ends. During a step each rank holds the full parameters; between steps 1/N of them.

Both average gradients over ranks, so with equal shares of the global batch on every rank (train's WindowSampler)
a step equals the single-process step on the whole batch, to rounding.
"""

import dataclasses
import datetime
import os
import re

import torch
import torch.distributed as dist
from torch import nn

STRATEGIES = ("ddp", "fsdp")


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the processes a launcher (torchrun) started: global and per-node rank and size."""

    rank: int
    size: int
    local_rank: int
    local_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env(environ=os.environ) -> World | None:
    """The World that torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE) describe; None for a
    single process (no variables, or WORLD_SIZE=1). Raises ValueError naming a variable that is not a valid
    integer."""
    if "WORLD_SIZE" not in environ:
        return None
    defaults = {"RANK": None, "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": environ["WORLD_SIZE"]}
    values = {}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        text = environ.get(name, defaults.get(name))
        if text is None:
            raise ValueError(f"{name} is not set (WORLD_SIZE is): start the processes with torchrun")
        try:
            values[name] = int(text)
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {text!r}") from None
    world = World(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], values["LOCAL_WORLD_SIZE"])
    if world.size < 1 or not 0 <= world.rank < world.size or not 0 <= world.local_rank < world.local_size:
        raise ValueError(
            f"inconsistent launcher variables: RANK={world.rank}, WORLD_SIZE={world.size}, "
            f"LOCAL_RANK={world.local_rank}, LOCAL_WORLD_SIZE={world.local_size}"
        )
    return world if world.size > 1 else None


def init_process_group(device: torch.device, timeout_s: float) -> None:
    """gloo on CPU, nccl on CUDA; rendezvous from torchrun's MASTER_ADDR/MASTER_PORT. A collective that waits longer
    than ``timeout_s`` (a rank that died or hangs) fails instead of blocking forever."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend, timeout=timeout, device_id=device if device.type == "cuda" else None)


def wrap(model: nn.Module, strategy: str, device: torch.device) -> nn.Module:
    """The module to call for a meta-step: ``DistributedDataParallel(model)`` for "ddp"; for "fsdp" the model
    itself, sharded in place (build the optimizer after this call: its parameters become DTensors)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy == "ddp":
        if device.type != "cuda":
            return nn.parallel.DistributedDataParallel(model)
        index = device.index if device.index is not None else torch.cuda.current_device()
        return nn.parallel.DistributedDataParallel(model, device_ids=[index])
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in model.blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=False)
    fully_shard(model, mesh=mesh)
    model.register_forward_pre_hook(_gather_blocks)
    return model


def _gather_blocks(model: nn.Module, args) -> None:
    """All-gathers every block's parameters (all launched, then waited on) before a meta-step reads them."""
    for handle in [block.unshard(async_op=True) for block in model.blocks]:
        handle.wait()


def reshard(module: nn.Module) -> None:
    """Frees the gathered parameters of an FSDP2 model after a forward without backward (evaluation), whose
    post-backward would otherwise do it; nothing for DDP or a plain model."""
    from torch.distributed.fsdp import FSDPModule

    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def local_value(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (e.g. clip_grad_norm_'s total norm of sharded gradients), any other tensor as it is."""
    full = getattr(t, "full_tensor", None)
    return full() if full is not None else t


def share(items: torch.Tensor, world: World | None) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's rows of ``items`` [n, ...] and their weights [rows] (1.0): contiguous equal shares in rank order.
    When n is not a multiple of the world size the last row is repeated with weight 0, so that every rank runs the
    same number of collectives (an FSDP2 forward gathers parameters)."""
    n = len(items)
    if world is None:
        return items, torch.ones(n, dtype=torch.float64)
    per = -(-n // world.size)
    index = torch.arange(world.rank * per, (world.rank + 1) * per)
    weights = (index < n).to(torch.float64)
    return items[index.clamp(max=n - 1)], weights


# What gloo and NCCL say when a peer's connection breaks or a collective times out; DDP's reducer re-raises them as
# plain RuntimeErrors from inside the backward, not as torch.distributed.DistError.
_COLLECTIVE_FAILURE = re.compile(r"gloo|nccl|connection (reset|closed|refused)|timed out|timeout", re.IGNORECASE)


def is_collective_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective operation that failed (a peer died, hung past the timeout)."""
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and _COLLECTIVE_FAILURE.search(str(error)) is not None
    )
