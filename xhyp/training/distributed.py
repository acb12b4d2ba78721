"""Data-parallel training with torch.distributed (gloo on CPU, NCCL on GPU), launched by torchrun.

Every process reads the same data, draws the same batches, dropout masks and negatives (same
seeds), and computes the loss of its contiguous block of each batch (see
:func:`xhyp.training.loop.prepare_batch`); before each optimiser step the gradients are summed across
processes: dense ones with ``all_reduce``, row-sparse ones (the projector's EmbeddingBag and the
label embeddings) by ``all_gather`` of their (row, value) lists, which are concatenated in rank
order and coalesced. Every process therefore applies the same update to the same parameters, and
the result equals one process on the same global batch up to float summation order. Only rank 0
writes the model directory. See ``docs/distributed.md``.
"""
from __future__ import annotations

import os


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (torchrun sets it), 1 when absent."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def setup(mode: str, device):
    """Join (or start) the process group for ``mode`` ``"auto" | "on" | "off"``.

    ``"auto"`` joins when torchrun's environment says ``WORLD_SIZE > 1``; ``"on"`` requires that
    environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). The backend is NCCL
    for a CUDA device (each process takes ``cuda:LOCAL_RANK``), gloo otherwise. An already
    initialised default group is reused.

    Returns:
        ``(rank, world_size, device)``; ``(0, 1, device)`` when not distributed.

    Raises:
        ValueError: ``mode="on"`` outside a torch.distributed environment, or an unknown mode.
    """
    import torch
    import torch.distributed as dist

    if mode not in ("auto", "on", "off"):
        raise ValueError(f"distributed must be 'auto', 'on' or 'off', got {mode!r}")
    if mode == "off":
        return 0, 1, device
    if not dist.is_available():
        if mode == "on":
            raise ValueError("distributed='on' but this torch build has no torch.distributed")
        return 0, 1, device
    if not dist.is_initialized():
        if env_world_size() <= 1 or "RANK" not in os.environ:
            if mode == "on":
                raise ValueError("distributed='on' needs a torch.distributed environment (RANK, WORLD_SIZE, "
                                 "MASTER_ADDR, MASTER_PORT): launch with torchrun --nproc-per-node N ...")
            return 0, 1, device
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    elif device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    world = dist.get_world_size()
    return dist.get_rank(), world, device


def broadcast_parameters(model) -> None:
    """Copy rank 0's parameters and buffers to every process."""
    import torch.distributed as dist

    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=0)


def _all_gather_sparse(grad):
    """Sum of a sparse COO ``(L, n)`` gradient over processes, identical on every process."""
    import torch
    import torch.distributed as dist

    world = dist.get_world_size()
    g = grad.coalesce()
    rows, vals = g.indices()[0], g.values()
    count = torch.tensor([rows.shape[0]], device=rows.device, dtype=torch.int64)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    m = max(counts)
    pad_rows = torch.zeros(m, dtype=rows.dtype, device=rows.device)
    pad_rows[:rows.shape[0]] = rows
    pad_vals = torch.zeros((m,) + tuple(vals.shape[1:]), dtype=vals.dtype, device=vals.device)
    pad_vals[:vals.shape[0]] = vals
    all_rows = [torch.empty_like(pad_rows) for _ in range(world)]
    all_vals = [torch.empty_like(pad_vals) for _ in range(world)]
    dist.all_gather(all_rows, pad_rows)
    dist.all_gather(all_vals, pad_vals)
    rows = torch.cat([r[:c] for r, c in zip(all_rows, counts)])
    vals = torch.cat([v[:c] for v, c in zip(all_vals, counts)])
    return torch.sparse_coo_tensor(rows[None, :], vals, grad.shape).coalesce()


def all_reduce_gradients(model) -> None:
    """Replace every parameter's gradient by its sum over processes (sparse ones stay sparse).

    A parameter without a gradient on some process takes part with a zero gradient, so every
    process issues the same collectives in the same order.
    """
    import torch
    import torch.distributed as dist

    for p in model.parameters():
        if not p.requires_grad:
            continue
        sparse = p is getattr(getattr(model, "bag", None), "weight", None) or p is getattr(model, "labels", None)
        if sparse:
            g = p.grad if p.grad is not None else torch.sparse_coo_tensor(
                torch.zeros((1, 0), dtype=torch.int64, device=p.device),
                torch.zeros((0,) + tuple(p.shape[1:]), dtype=p.dtype, device=p.device), p.shape)
            if not g.is_sparse:  # dense label gradient (label_update="dense")
                dist.all_reduce(g)
                p.grad = g
            else:
                p.grad = _all_gather_sparse(g)
        else:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)


def all_reduce_sum(value: float) -> float:
    """Sum of a Python float over processes."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item())
