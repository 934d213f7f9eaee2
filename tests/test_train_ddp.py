"""Distributed supernet training, for real: two CPU processes with gloo.

Both ranks must end with identical weights, equal (to float tolerance) to one process that
averages the gradients of the two ranks' batches, each batch forwarded on its own (as each
rank does: BatchNorm uses per-rank batch statistics, no SyncBN). Tiny search space, 32x32,
three steps: the cost is mostly starting two Python processes.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, TensorDataset

from nas_core.search_space import SearchSpace, SpaceSpec, StageSpec
from nas_core.train import DistContext, SupernetTrainConfig, SupernetTrainer, init_distributed

TINY = SearchSpace(SpaceSpec(
    stages=(StageSpec(1, 4, (8, 16), (1, 2), False), StageSpec(2, 8, (16, 24), (1, 2), False),
            StageSpec(3, 16, (24, 32), (1, 2), True), StageSpec(4, 32, (32, 48), (1, 2), True)),
    mhsa_heads=2, mhsa_key_dim=8, downsample_key_dim=8))
WORLD, RES, CLASSES = 2, 32, 4
# No drop path: its per-sample masks come from each rank's own RNG, which the
# single-process reference cannot replay. SGD (not the paper's AdamW, which is nearly invariant
# to the gradient scale) so that summing instead of averaging over ranks would show.
CONFIG = SupernetTrainConfig(resolution=RES, epochs=1, batch_size=8, steps_per_epoch=3, lr=0.05, opt="sgd",
                             warmup_epochs=0.4, inplace_distillation=True, clip_grad=5.0)


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(40, 3, RES, RES, generator=g), torch.randint(0, CLASSES, (40,), generator=g))


def _rank_main(rank: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD)
    try:
        ctx = init_distributed("cpu")
        assert (ctx.rank, ctx.world_size) == (rank, WORLD)
        trainer = SupernetTrainer(CONFIG, dataset(), CLASSES, f"{folder}/out", space=TINY, ctx=ctx, progress=False)
        trainer.fit()
        torch.save(trainer.supernet.state_dict(), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def reference_weights(tmp_path) -> dict[str, torch.Tensor]:
    """One process: per step, each rank's batch forwarded and back-propagated on its own,
    gradients averaged, one optimizer step."""
    trainer = SupernetTrainer(CONFIG, dataset(), CLASSES, tmp_path / "reference", space=TINY, ctx=DistContext(),
                              progress=False)
    data, local = dataset(), CONFIG.batch_size // WORLD
    shards = []
    for rank in range(WORLD):
        sampler = DistributedSampler(data, WORLD, rank, shuffle=True, seed=CONFIG.seed, drop_last=True)
        sampler.set_epoch(0)
        shards.append(list(sampler))
    params = list(trainer.supernet.parameters())
    trainer.supernet.train()
    for step in range(CONFIG.steps_per_epoch):
        grads = []
        for rank in range(WORLD):
            x, y = data[shards[rank][step * local:(step + 1) * local]]
            trainer.sandwich_backward(x, y, step)
            grads.append([None if p.grad is None else p.grad.clone() for p in params])
            trainer.optimizer.zero_grad(set_to_none=True)
        for p, *per_rank in zip(params, *grads):
            assert (per_rank[0] is None) == (per_rank[1] is None)  # same subnets on both ranks
            p.grad = None if per_rank[0] is None else sum(per_rank) / WORLD
        trainer.optimizer_step()  # world size 1: no all-reduce
    return trainer.supernet.state_dict()


def test_two_gloo_processes_match_one_process_averaging_their_gradients(tmp_path):
    torch.multiprocessing.spawn(_rank_main, args=(str(tmp_path),), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    unequal = [k for k in ranks[0] if not torch.equal(ranks[0][k], ranks[1][k])]
    assert not unequal, f"ranks differ in {unequal[:5]}"  # parameters, and BN statistics averaged at epoch end

    torch.set_num_threads(1)
    expected = reference_weights(tmp_path)
    initial = SupernetTrainer(CONFIG, dataset(), CLASSES, tmp_path / "init", space=TINY, progress=False)
    moved = 0
    for name, _ in initial.supernet.named_parameters():
        torch.testing.assert_close(ranks[0][name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
        moved += not torch.equal(ranks[0][name], initial.supernet.state_dict()[name])
    assert moved > 50  # the run trained: three sandwich steps changed many tensors
    assert (tmp_path / "out" / "checkpoint.pt").exists() and (tmp_path / "out" / "supernet.pt").exists()
