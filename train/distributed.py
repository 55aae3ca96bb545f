"""Data-parallel plumbing for torchrun: gloo on CPU, nccl on CUDA, rank 0 does the I/O.

    torchrun --nproc_per_node=2 -m edgekit.train phase2 --out runs/p2

Without torchrun's environment (RANK, WORLD_SIZE) everything here is a no-op on one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

_DEVICE = "cpu"


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> Context:
    """Join the process group when launched by torchrun; pick this rank's device."""
    global _DEVICE
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            from edgekit.errors import UsageError

            raise UsageError("--device cuda: no CUDA device is available on this machine; use --device cpu")
        _DEVICE = f"cuda:{local}" if world > 1 or device == "cuda" else device
        torch.cuda.set_device(torch.device(_DEVICE))
    else:
        _DEVICE = "cpu"
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return Context(rank=rank, world_size=world, local_rank=local)


def teardown() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def device() -> str:
    return _DEVICE


def world() -> int:
    return tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1


def rank() -> int:
    return tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else 0


def sync_params(model) -> None:
    """Rank 0's parameters and buffers on every rank (as DistributedDataParallel does at wrap time)."""
    if world() == 1:
        return
    for t in [*model.parameters(), *model.buffers()]:
        tdist.broadcast(t.data, src=0)


def average_grads(model) -> None:
    """Average the gradients over ranks after ``backward`` (what DistributedDataParallel's hooks do).

    By hand rather than through DDP's wrapper: the wrapper syncs only what runs through ``forward``,
    and a family's loss may call other methods (bytecnn's ``logits``)."""
    w = world()
    if w == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    tdist.all_reduce(flat)
    flat /= w
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def shard(t: torch.Tensor) -> torch.Tensor:
    """This rank's rows ``rank::world`` of a global batch (dimension 0): each rank gets a mix of its parts."""
    w = world()
    return t if w == 1 else t[rank()::w].contiguous()


def mean_dict(d: dict[str, float]) -> dict[str, float]:
    """Average scalar metrics over ranks so every rank takes the same early-stopping decision."""
    if world() == 1:
        return d
    keys = sorted(d)
    t = torch.tensor([d[k] for k in keys], dtype=torch.float64, device=_DEVICE)
    tdist.all_reduce(t)
    return {k: float(v) / world() for k, v in zip(keys, t.tolist())}


def agree(reasons: dict[str, bool]) -> dict[str, bool]:
    """Each stop reason true on any rank, for every rank, in one collective (an all_reduce MAX of a flag per
    reason). Every rank passes the same names; a rank whose own clock ran out, whose loss diverged or whose
    patience ended then stops at the same step as the others, so no rank waits in a collective the others
    never enter."""
    if world() == 1:
        return {k: bool(v) for k, v in reasons.items()}
    keys = sorted(reasons)
    flags = torch.tensor([1 if reasons[k] else 0 for k in keys], dtype=torch.int32, device=_DEVICE)
    tdist.all_reduce(flags, op=tdist.ReduceOp.MAX)
    return {k: bool(v) for k, v in zip(keys, flags.tolist())}


def broadcast_object(obj):
    """Rank 0's object on every rank (e.g. a freshly trained tokenizer)."""
    if world() == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]
