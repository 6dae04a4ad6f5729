"""Cost-sensitive training under DistributedDataParallel: RWWCE with global normalisation.

A small MLP learns scikit-learn's 8x8 digits, made imbalanced (three digits keep a fifth of
their samples), where reading a 1 as a 7 (or back), or a 3 as an 8, costs 20 times an ordinary
mistake. The pieces:

* ``rwwce.count_classes`` on each rank's ``DataLoader`` (a ``DistributedSampler`` shard), summed
  over processes, then ``rwwce.class_weights`` as the false-negative weights;
* the cost matrix's false-positive part as ``fp_weight``;
* ``rwwce.RWWCELoss(fn, fp, global_normalize=True)``: the loss is divided by the global number of
  samples, so DDP's gradient averaging gives exactly the gradient of the whole global batch;
* ``rwwce.metrics.RealWorldCost``: the test set's cost per sample, synchronised across ranks.

Run (with a GPU per process it uses NCCL, otherwise CPU processes over gloo)::

    torchrun --standalone --nproc_per_node=2 examples/ddp_train.py
    python examples/ddp_train.py            # also works as a single process

Needs scikit-learn (``pip install rwwce[experiments]``).
"""

from __future__ import annotations

import argparse
import gc
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset

import rwwce
from rwwce.metrics import RealWorldCost


def load_digits_imbalanced(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Standardised digits, split 75 / 25; digits 2, 5 and 9 keep 20 % of their training samples."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    x, y = x[perm], y[perm]
    n_test = len(y) // 4
    x_test, y_test, x_train, y_train = x[:n_test], y[:n_test], x[n_test:], y[n_test:]
    rare = torch.isin(y_train, torch.tensor([2, 5, 9]))
    keep = ~rare | (torch.rand(len(y_train), generator=g) < 0.2)
    x_train, y_train = x_train[keep], y_train[keep]
    mean, std = x_train.mean(0), x_train.std(0) + 1e-3
    return (
        TensorDataset((x_train - mean) / std, y_train),
        TensorDataset((x_test - mean) / std, y_test),
    )


def digit_costs() -> rwwce.CostMatrix:
    """Every mistake costs 1; confusing 1 with 7 or 3 with 8 (either way) costs 20."""
    c = torch.ones(10, 10) - torch.eye(10)
    for a, b in [(1, 7), (3, 8)]:
        c[a, b] = c[b, a] = 20.0
    return rwwce.CostMatrix(c, classes=[str(d) for d in range(10)])


def setup() -> tuple[int, int, torch.device]:
    """Initialise torch.distributed when launched by torchrun; return (rank, world, device)."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # NCCL needs one GPU per process; otherwise every process runs on the CPU over gloo.
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() >= local_world
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args(argv)

    rank, world, device = setup()
    torch.manual_seed(0)  # the same initial model everywhere (DDP also broadcasts it)
    train, test = load_digits_imbalanced()
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler)

    # Global class counts: each rank counts its shard, count_classes sums over processes.
    counts = rwwce.count_classes(loader, num_classes=10)
    fn = rwwce.class_weights(counts.double(), "balanced")
    costs = digit_costs()
    _, fp = costs.loss_weights()
    criterion = rwwce.RWWCELoss(fn, fp, global_normalize=True).to(device)

    model = torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    ).to(device)
    if world > 1:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)

    # The test set is split without padding, so every sample counts exactly once.
    test_loader = DataLoader(Subset(test, range(rank, len(test), world)), batch_size=256)
    metric = RealWorldCost(costs).to(device)

    if rank == 0:
        print(f"{world} process(es) on {device}; global class counts {counts.tolist()}")
        print(f"fn weights {[round(w, 2) for w in fn.tolist()]}")
    for epoch in range(args.epochs):
        model.train()
        sampler.set_epoch(epoch)
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = criterion(model(x), y)
            opt.zero_grad()
            loss.backward()  # DDP averages gradients: with global_normalize, the global-batch gradient
            opt.step()
        model.eval()
        metric.reset()
        correct = torch.zeros(2, device=device)
        with torch.no_grad():
            for x, y in test_loader:
                x, y = x.to(device), y.to(device)
                logits = model(x)
                metric.update(logits, y)
                correct += torch.stack(
                    [(logits.argmax(1) == y).sum(), torch.tensor(len(y), device=device)]
                )
        cost = metric.compute()  # synchronised over all ranks
        if world > 1:
            dist.all_reduce(correct)
        if rank == 0:
            acc = float(correct[0] / correct[1])
            print(
                f"epoch {epoch + 1:2d}  test real-world cost {float(cost):.4f} per sample  accuracy {acc:.3f}"
            )
    if world > 1:
        # Free DDP's reducer, which holds the process group, before tearing the group down (DDP
        # sits in reference cycles, hence the collect), and let every rank arrive first: a process
        # that exits while gloo still owns threads can abort ("terminate called ...").
        del model, opt, metric
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
