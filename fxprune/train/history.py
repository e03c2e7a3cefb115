"""What :func:`fxprune.train.fit` returns and checkpoints: one :class:`EpochRecord` per epoch
in a :class:`History`."""

from __future__ import annotations

__all__ = ["EpochRecord", "History"]

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class EpochRecord:
    """One epoch: train loss/accuracy (over the epoch), val loss/accuracy (after epoch_end),
    kept MACs (``pruner.kept_macs``, None without a pruner), the lr used, time and
    throughput (global training samples per second)."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    kept_macs: float | None
    lr: float
    seconds: float
    samples_per_s: float

    def line(self, epochs: int | None = None) -> str:
        """``epoch 3/10  loss 0.412  acc 88.1%  val 0.398 / 89.0%  kept MACs 0.521 ...``."""
        head = f"epoch {self.epoch}" + (f"/{epochs}" if epochs else "")
        val = (f"  val loss {self.val_loss:.4f}  val acc {100 * self.val_acc:.2f}%"
               if self.val_acc is not None else "")
        kept = f"  kept MACs {self.kept_macs:.3f}" if self.kept_macs is not None else ""
        return (f"{head}  loss {self.train_loss:.4f}  acc {100 * self.train_acc:.2f}%{val}"
                f"{kept}  lr {self.lr:.4g}  {self.seconds:.1f} s ({self.samples_per_s:.0f}/s)")


@dataclass
class History:
    """What :func:`fit` returns: one :class:`EpochRecord` per epoch (resumed ones included)."""

    epochs: list[EpochRecord] = field(default_factory=list)
    world_size: int = 1
    resumed_at: int = 0

    @property
    def last(self) -> EpochRecord | None:
        return self.epochs[-1] if self.epochs else None

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": [asdict(r) for r in self.epochs], "world_size": self.world_size,
                "resumed_at": self.resumed_at}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls([EpochRecord(**r) for r in d["epochs"]], d.get("world_size", 1),
                   d.get("resumed_at", 0))
