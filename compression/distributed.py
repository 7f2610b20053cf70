"""Running under ``torchrun`` with DistributedDataParallel: who writes, and one state for all.

Every rank trains on its share of each batch and DDP averages the gradients, so the weights stay
equal; masks, assignments and codebooks are decided on every rank and then broadcast from rank 0,
so they are identical even where a rank's calibration data differed. Only rank 0 writes files;
the others wait for it where they read them back. Without ``torch.distributed`` initialised,
every function here is a no-op (world of one).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if active() else 0


def world() -> int:
    return torch.distributed.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active() and world() > 1:
        torch.distributed.barrier()


def shard(index: torch.Tensor) -> torch.Tensor:
    """This rank's share of a batch's example indices (every world()-th, from rank())."""
    return index[rank()::world()] if world() > 1 else index


def broadcast_state(state) -> None:
    """Make every rank's masks, codebooks and assignments (and the weights they imply) rank 0's."""
    if not active() or world() == 1:
        return
    for layer in state.layers.values():
        has = torch.tensor([layer.mask is not None, layer.centroids is not None,
                            layer.bits or 0, layer.group_size or 0, 
                            layer.centroids.numel() if layer.centroids is not None else 0])
        torch.distributed.broadcast(has, 0)
        if bool(has[0]):
            mask = layer.mask if layer.mask is not None else torch.ones_like(layer.weight, dtype=torch.bool)
            as_int = mask.to(torch.uint8)
            torch.distributed.broadcast(as_int, 0)
            layer.mask = as_int.bool()
        if bool(has[1]):
            k = int(has[4])
            centroids = layer.centroids if layer.centroids is not None and \
                layer.centroids.numel() == k else torch.zeros(k)
            centroids = centroids.detach().float().contiguous()
            assignments = (layer.assignments if layer.assignments is not None
                           else torch.zeros_like(layer.weight, dtype=torch.long)).contiguous()
            torch.distributed.broadcast(centroids, 0)
            torch.distributed.broadcast(assignments, 0)
            layer.centroids, layer.assignments = centroids, assignments
            layer.bits = int(has[2])
            layer.group_size = int(has[3]) or None
        with torch.no_grad():
            weight = layer.weight.detach().contiguous()
            torch.distributed.broadcast(weight, 0)
            layer.weight.copy_(weight)
    state.enforce()


@contextlib.contextmanager
def main_first() -> Iterator[bool]:
    """Rank 0 runs the block (it writes); the others wait until it is done. Yields is_main()."""
    try:
        yield is_main()
    finally:
        barrier()
