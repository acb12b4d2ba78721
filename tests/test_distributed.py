"""Data-parallel training: 2 CPU processes (gloo, localhost) against one process."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from xhyp.training import train

from test_train import toy_data

CFG = {"epochs": 2, "batch_size": 32, "val_fraction": 0.1, "seed": 4, "threads": 1, "prefetch": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir, mode, extra=None):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    X, Y = toy_data(seed=6)
    try:
        res = train(X, Y, {"dim": 6}, dict(CFG, negative_mode=mode, distributed="on", **(extra or {})),
                    out_dir=os.path.join(out_dir, "model"), progress=False)
        torch.save({**{k: v.detach().clone() for k, v in res.model.state_dict().items()},
                    "alphas": torch.tensor([h.get("alpha", 0.0) for h in res.history])},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
@pytest.mark.parametrize("mode", ["batch"])  # per-pair sharding: test_batch_shards_partition_the_batch
@pytest.mark.parametrize("extra", [{}, {"learn_alpha": True, "lr_alpha": 0.05}])  # a learned softmax scale too
def test_two_processes_match_each_other_and_one_process(tmp_path, mode, extra):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), mode, extra), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0:  # identical on both processes
        assert torch.equal(r0[k], r1[k]), k
    X, Y = toy_data(seed=6)
    single = train(X, Y, {"dim": 6}, dict(CFG, negative_mode=mode, distributed="off", **extra), progress=False)
    for k, v in single.model.state_dict().items():  # equal to one process on the same global batches
        torch.testing.assert_close(r0[k], v, rtol=1e-4, atol=1e-6)
    alphas = torch.tensor([h.get("alpha", 0.0) for h in single.history])
    torch.testing.assert_close(r0["alphas"], alphas, rtol=1e-4, atol=0.0)  # the scale's gradient summed too
    assert (alphas != 5.0).all() if extra else (alphas == 0.0).all()
    assert not np.allclose(r0["labels"].numpy(), 0)
    # only rank 0 wrote the model directory, and it is complete
    assert (tmp_path / "model" / "model.pt").exists() and (tmp_path / "model" / "train_emb.pt").exists()


@pytest.mark.parametrize("mode", ["batch", "pair"])
def test_batch_shards_partition_the_batch(mode):
    """The shards of 3 ranks hold the batch's examples, pairs and negatives, in order."""
    from xhyp.config import TrainConfig
    from xhyp.training.batches import NegativeSampler, prepare_batch

    X, Y = toy_data(seed=1)
    X, Y = X.astype(np.float32).tocsr(), Y.astype(np.float32).tocsr()
    cfg = TrainConfig(negative_mode=mode, negatives=5, shared_negatives=5, input_dropout=0.3)
    rows = np.arange(3, 40, 2)

    def shard(rank, world):
        gen = torch.Generator().manual_seed(9)
        return prepare_batch(X, Y, rows, NegativeSampler(np.ones(12), "uniform", gen), cfg, gen, rank, world)

    full, parts = shard(0, 1), [shard(r, 3) for r in range(3)]
    assert all(p.n_pairs == full.n_pairs for p in parts)
    torch.testing.assert_close(torch.cat([p.w for p in parts]), full.w)
    torch.testing.assert_close(torch.cat([p.pos for p in parts]), full.pos)
    assert torch.equal(torch.cat([p.is_pos for p in parts]), full.is_pos)
    if mode == "pair":
        assert torch.equal(torch.cat([p.neg for p in parts]), full.neg)
    else:
        assert all(torch.equal(p.neg, full.neg) for p in parts)
    n_ex = [len(p.off) for p in parts]
    assert sum(n_ex) == len(rows) and all(int(p.ex.max()) < n for p, n in zip(parts, n_ex))
