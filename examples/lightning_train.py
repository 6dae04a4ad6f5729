"""PyTorch Lightning with RWWCE: checkpoint and stop early on the validation Real World Cost.

A small MLP learns scikit-learn's 8x8 digits, where reading a 1 as a 7 (or back), or a 3 as an 8,
costs 20 times an ordinary mistake. The pieces:

* ``rwwce.RWWCELoss.from_costs(costs)`` as the criterion: a submodule, so its weights follow the
  model to the device and into checkpoints;
* ``rwwce.metrics.RealWorldCost(costs)``, a torchmetrics ``Metric``, logged as ``val_cost`` in
  ``validation_step`` (Lightning computes it over the epoch, synchronises it across processes and
  resets it);
* ``ModelCheckpoint(monitor="val_cost", mode="min")`` keeps the cheapest model, and
  ``EarlyStopping(monitor="val_cost", mode="min")`` stops when the cost stops falling.

Run::

    python examples/lightning_train.py                  # CPU, about 10 s
    python examples/lightning_train.py --epochs 3 --out /tmp/ckpt

Needs ``pip install rwwce[lightning,experiments]`` (lightning, scikit-learn).
"""

from __future__ import annotations

import argparse
import tempfile

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

import rwwce
from rwwce.metrics import RealWorldCost


def digit_costs() -> rwwce.CostMatrix:
    """Every mistake costs 1; confusing 1 with 7 or 3 with 8 (either way) costs 20."""
    c = torch.ones(10, 10) - torch.eye(10)
    for a, b in [(1, 7), (3, 8)]:
        c[a, b] = c[b, a] = 20.0
    return rwwce.CostMatrix(c, classes=[str(d) for d in range(10)])


def load_digits_split(seed: int = 0) -> dict[str, TensorDataset]:
    """Standardised digits split 60 / 20 / 20 into train / validation / test."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x = torch.tensor(x, dtype=torch.float32)[perm]
    y = torch.tensor(y, dtype=torch.long)[perm]
    a, b = int(0.6 * len(y)), int(0.8 * len(y))
    mean, std = x[:a].mean(0), x[:a].std(0) + 1e-3
    x = (x - mean) / std
    return {
        "train": TensorDataset(x[:a], y[:a]),
        "val": TensorDataset(x[a:b], y[a:b]),
        "test": TensorDataset(x[b:], y[b:]),
    }


class CostSensitiveClassifier(L.LightningModule):
    def __init__(self, costs: rwwce.CostMatrix, lr: float = 3e-3) -> None:
        super().__init__()
        self.model = torch.nn.Sequential(
            torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
        )
        self.criterion = rwwce.RWWCELoss.from_costs(costs)
        self.val_cost = RealWorldCost(costs)
        self.test_cost = RealWorldCost(costs)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.criterion(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", self.criterion(logits, y), on_epoch=True)
        self.val_cost.update(logits, y)
        # Logging the Metric object: Lightning computes it over the epoch, then resets it.
        self.log("val_cost", self.val_cost, on_epoch=True, prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.test_cost.update(self(x), y)
        self.log("test_cost", self.test_cost, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=4)
    parser.add_argument("--out", default=None, help="checkpoint folder (default: a temporary one)")
    args = parser.parse_args(argv)

    L.seed_everything(0, verbose=False)
    torch.set_num_threads(1)  # a tiny model: threads only add overhead
    costs = digit_costs()
    data = load_digits_split()
    loaders = {
        split: DataLoader(ds, batch_size=64, shuffle=split == "train") for split, ds in data.items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = ModelCheckpoint(
            dirpath=args.out or tmp,
            filename="best-{epoch}-{val_cost:.4f}",
            monitor="val_cost",
            mode="min",
        )
        stop = EarlyStopping(monitor="val_cost", mode="min", patience=args.patience)
        trainer = L.Trainer(
            max_epochs=args.epochs,
            accelerator="cpu",
            devices=1,
            callbacks=[checkpoint, stop],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            deterministic=True,
        )
        model = CostSensitiveClassifier(costs)
        trainer.fit(model, loaders["train"], loaders["val"])
        best = CostSensitiveClassifier.load_from_checkpoint(
            checkpoint.best_model_path, costs=costs, weights_only=False
        )
        (result,) = trainer.test(best, loaders["test"], verbose=False)
        print(f"epochs run: {trainer.current_epoch}; stopped early: {stop.stopped_epoch > 0}")
        print(f"best checkpoint: {checkpoint.best_model_path.rsplit('/', 1)[-1]}")
        print(f"best validation cost: {float(checkpoint.best_model_score):.4f}")
        print(f"test cost of the best checkpoint: {result['test_cost']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
