"""The one helper module of the training tests (not collected: no ``test_`` prefix).

Tiny models, synthetic batches and a training loop (``TinyVGG``, ``make_model``, ``batches``,
``train_epoch``); and test doubles:

``MaskDouble`` implements the SoftPruner contract of TRAIN_INTERFACE (attach, apply_masks,
epoch_end, state_dict/load_state_dict, broadcast, kept_macs, epoch, model) in the simplest
way: SFP-style L2 filter masks on every conv but the last, re-selected at each epoch_end and
re-applied after every optimizer step. It lets the trainer be tested without the engine.

``ddp_digits`` is the one run the DDP test compares: 1 process (called in the test) against 2
processes (the same function in torchrun-like worker processes).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from fxprune.models import create_model

X8 = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))


class TinyVGG(nn.Module):
    """conv-BN-ReLU x3 with max-pooling, then a BN1d MLP head: a VGG in miniature."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 16), classes: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, c in enumerate(widths):
            layers += [nn.Conv2d(cin, c, 3, padding=1, bias=i == 1), nn.BatchNorm2d(c), nn.ReLU()]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 12),
                                  nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and betas, so that BN(0) constants matter."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.3)
    return model


def make_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyVGG() if name == "vgg" else create_model(name, num_classes=4)
    return randomize_bn(model, seed)


def batches(n: int = 3, size: int = 8, seed: int = 0, classes: int = 4) -> list[tuple[Any, Any]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, classes, (size,),
                                                                    generator=g))
            for _ in range(n)]


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, data: list, pruner: Any = None,
                after_step: Any = None, scaler: Any = None) -> None:
    model.train()
    for x, y in data:
        opt.zero_grad()
        if scaler is None:
            F.cross_entropy(model(x), y).backward()
            opt.step()
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        if after_step is not None:
            after_step()
    if pruner is not None:
        pruner.epoch_end()

class MaskDouble:
    def __init__(self, model: nn.Module, ratio: float = 0.5):
        self.model, self.ratio, self.epoch = model, ratio, 0
        self.convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)][:-1]
        self.steps = self.epoch_ends = self.broadcasts = self.attached = 0
        self.violations = 0  # steps after which a pruned filter was not zero
        self._select()
        self.apply_masks()

    def _select(self) -> None:
        self.masks = []
        for c in self.convs:
            norms = c.weight.detach().flatten(1).norm(dim=1)
            m = torch.ones_like(norms)
            m[norms.argsort(stable=True)[: int(len(norms) * self.ratio)]] = 0
            self.masks.append(m)

    @torch.no_grad()
    def apply_masks(self) -> None:
        for c, m in zip(self.convs, self.masks):
            c.weight.mul_(m.view(-1, 1, 1, 1))
            if c.bias is not None:
                c.bias.mul_(m)

    def _post_step(self, *_: Any) -> None:
        self.steps += 1
        self.apply_masks()
        self.violations += sum(int(c.weight[m == 0].abs().sum() > 0)
                               for c, m in zip(self.convs, self.masks))

    def attach(self, optimizer: torch.optim.Optimizer) -> Any:
        self.attached += 1
        self.apply_masks()
        return optimizer.register_step_post_hook(self._post_step)

    def epoch_end(self) -> None:
        self.epoch += 1
        self.epoch_ends += 1
        self._select()
        self.apply_masks()

    def broadcast(self, src: int = 0) -> None:
        self.broadcasts += 1
        if dist.is_available() and dist.is_initialized():
            for m in self.masks:
                dist.broadcast(m, src)

    def state_dict(self) -> dict[str, Any]:
        return {"masks": [m.clone() for m in self.masks], "epoch": self.epoch}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.masks = [m.clone() for m in sd["masks"]]
        self.epoch = sd["epoch"]

    @property
    def kept_macs(self) -> float:
        return float(torch.cat(self.masks).mean())


def tiny_net(in_chans: int = 1, num_classes: int = 10, bn: bool = True) -> nn.Module:
    norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
    return nn.Sequential(
        nn.Conv2d(in_chans, 16, 3, padding=1), norm(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), norm(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))


def ddp_digits(out: str | Path, batch: int = 32, pruner: str = "double") -> None:
    """One epoch on digits (no augmentation), BN-free net, seed 0, with the contract double
    (``pruner="double"``) or the real ``fxprune.SoftPruner`` (``"sfp"``, ``"fpgm"``...); every
    rank saves its weights, masks, history and counters next to ``out``."""
    import fxprune.train.trainer as trainer
    from fxprune.train import data, fit

    saves: list[int] = []
    real_save = trainer.save_checkpoint

    def counting_save(*args: Any, **kw: Any) -> None:
        saves.append(1)
        real_save(*args, **kw)

    trainer.save_checkpoint = counting_save
    splits = data.digits(augment=False, seed=0)
    train, val, _ = data.make_loaders(splits, batch)
    torch.manual_seed(0)
    model = tiny_net(bn=False)
    if pruner == "double":
        double: Any = MaskDouble(model, 0.25)
    else:
        import fxprune

        double = fxprune.SoftPruner(model, 0.25, method=pruner,
                                    example_inputs=(splits.example_input(),))
    try:
        hist = fit(model, train, val, 1, lr=0.05, pruner=double, progress=False, seed=0,
                   checkpoint=Path(out).with_suffix(".ckpt"))
    finally:
        trainer.save_checkpoint = real_save
    rank = int(os.environ.get("RANK", 0))
    is_double = isinstance(double, MaskDouble)
    torch.save({"state": model.state_dict(), "history": hist.to_dict(),
                "masks": double.masks if is_double else None,
                "counters": [double.steps, double.epoch_ends, double.broadcasts,
                             double.violations] if is_double else None,
                "saves": len(saves)},
               Path(out).with_name(f"{Path(out).stem}.rank{rank}.pt"))


def ddp_feature_distill(out: str | Path, batch: int = 32) -> None:
    """One epoch of fit() on digits (no augmentation) of a one-shot cut of the BN-free net,
    distilled from the dense net's logits and its convolutions' outputs at the kept channels;
    every rank saves its weights next to ``out``."""
    import fxprune
    from fxprune.train import data, fit

    splits = data.digits(augment=False, seed=0)
    train, _, _ = data.make_loaders(splits, batch)
    torch.manual_seed(0)
    dense = tiny_net(bn=False).eval()
    small = fxprune.compress(dense, 0.5, example_inputs=(splits.example_input(),))
    fit(small, train, None, 1, lr=0.05, progress=False, seed=0, teacher=dense, distill=0.5,
        feature_distill=1.0, feature_layers=["0", "3"])
    rank = int(os.environ.get("RANK", 0))
    torch.save({"state": small.state_dict(),
                "hooks": sum(len(m._forward_hooks) for m in small.modules())},
               Path(out).with_name(f"{Path(out).stem}.rank{rank}.pt"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(code: str, nproc: int, timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """Run ``python -c code`` as ``nproc`` ranks of one torchrun-style job on 127.0.0.1."""
    port = free_port()
    procs = []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                   LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
        # no empty entry: Python reads one as the working directory
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in [str(Path(__file__).parent), env.get("PYTHONPATH", "")] if p)
        procs.append(subprocess.Popen([sys.executable, "-P", "-c", code], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return results
