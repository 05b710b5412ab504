"""Pre-training on base classes: Baseline, Baseline++, ProtoNet and MAML, in one resumable loop.

Baseline and Baseline++ as Chen et al. 2019, ProtoNet as Snell et al. 2017, MAML as Finn et al.
2017 (:mod:`.maml`); they differ only in how a step makes its loss. Each epoch is
scored on fixed validation episodes (nearest centroid; MAML: its adapted query accuracy);
``best.pt`` and ``last.pt`` are written atomically, ``curves.csv`` after every epoch; an
interrupted run resumes from ``last.pt`` to exactly the weights of an uninterrupted one.
Details: ``docs/pretraining.md``.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ptx_utils.core.device import (
    autocast,
    memory_format,
    precision_record,
    resolve_device,
    resolve_precision,
    to_layout,
)
from ptx_utils.core.io import atomic_save
from ptx_utils.core.provenance import provenance
from ptx_utils.core.stats import mean_ci95
from ptx_utils.data.augment import Augmentation, augment, normalize
from ptx_utils.data.base import FewShotDataset
from ptx_utils.data.episodes import check_episode_parameters, sample_episodes
from ptx_utils.models import Backbone, create_backbone, create_head
from ptx_utils.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ptx_utils.models.features import centroid_logits, nearest_centroid_accuracy
from ptx_utils.pretraining.config import ADDED_DEFAULTS, RETIRED, PretrainConfig, PretrainResult
from ptx_utils.pretraining.maml import (
    InnerLoop,
    MamlNet,
    Tasks,
    adapted_logits,
    estimate_running_stats,
    maml_params,
    meta_gradients,
    meta_gradients_loop,
)

#: Base images a MAML checkpoint's batch-norm running statistics are estimated on.
MAML_STATS_IMAGES = 512


class _Trainer:
    """State of one run: model, head, optimiser, generator; one method per step kind."""

    def __init__(self, cfg: PretrainConfig, train: FewShotDataset) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.cuda = self.device.type == "cuda"
        maml = cfg.method == "maml"
        self.precision = "fp32" if maml else resolve_precision(cfg.precision, self.device)
        kind = {"baseline": "linear", "baseline++": "cosine", "protonet": None, "maml": "linear"}[
            cfg.method
        ]
        n_out = cfg.train_way if maml else train.num_classes
        with torch.random.fork_rng(devices=[]):  # seeded initial weights; global state untouched
            torch.manual_seed(cfg.seed)
            self.backbone: Backbone = create_backbone(
                cfg.backbone,
                in_channels=train.channels,
                image_size=train.image_size,
                **({"granularity": cfg.granularity} if cfg.backbone.startswith("resnet") else {}),
            )
            self.head = create_head(kind, self.backbone.out_dim, n_out) if kind else None
        self.backbone.to(self.device, memory_format=memory_format(self.precision))
        if self.head is not None:
            self.head.to(self.device)
        if cfg.feature_norm:
            freeze_bn_affine(self.backbone)
        params = [p for p in self.backbone.parameters() if p.requires_grad]
        params += list(self.head.parameters()) if self.head is not None else []
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.aug = Augmentation(crop=cfg.crop, flip=cfg.flip, jitter=cfg.jitter)
        self.images = train.images
        if self.cuda:  # keep the uint8 split on the GPU when it fits in a third of free memory
            free, _ = torch.cuda.mem_get_info(self.device)
            if train.images.numel() < free // 3:
                self.images = train.images.to(self.device)
        self.labels = train.labels.to(self.images.device)
        self.train = train
        if maml:  # CloserLook's MAML head: a linear layer with zero bias
            with torch.no_grad():
                self.head.bias.zero_()
            self.maml_net = MamlNet(self.backbone, self.head)
            self.vmap = cfg.vectorize == "vmap" or (cfg.vectorize == "auto" and self.cuda)

    def _input(self, idx: torch.Tensor) -> torch.Tensor:
        images = self.images[idx.to(self.images.device)].to(self.device, non_blocking=True)
        x = augment(images, self.aug, self.gen) if self.aug.enabled else normalize(images)
        return to_layout(x, self.precision)

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def classification_epoch(self) -> tuple[float, float]:
        """One pass of cross-entropy over the base classes; return (mean loss, accuracy)."""
        n = len(self.train)
        order = torch.randperm(n, generator=self.gen)[: self.cfg.epoch_images or n]
        total_loss, correct = 0.0, 0
        batches = range(0, len(order), self.cfg.batch_size)
        for start in tqdm(batches, desc="batches", leave=False):
            idx = order[start : start + self.cfg.batch_size]
            y = self.labels[idx.to(self.labels.device)].to(self.device)
            with autocast(self.device, self.precision):
                logits = self.head(self.backbone(self._input(idx)))
                loss = F.cross_entropy(logits.float(), y)
            self._step(loss)
            total_loss += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y).sum())
        return total_loss / len(order), correct / len(order)

    def protonet_epoch(self, epoch: int) -> tuple[float, float]:
        """``episodes_per_epoch`` ProtoNet episodes; return (mean loss, query accuracy)."""
        c = self.cfg
        episodes = sample_episodes(
            self.train,
            c.train_way,
            c.train_shot,
            c.train_query,
            c.episodes_per_epoch,
            seed=c.seed * 100_003 + epoch,
        )
        truth = torch.arange(c.train_way, device=self.device).repeat_interleave(c.train_query)
        total_loss, correct = 0.0, 0
        for i in tqdm(range(len(episodes)), desc="episodes", leave=False):
            idx = torch.from_numpy(
                np.concatenate([episodes.support[i].ravel(), episodes.query[i].ravel()])
            )
            with autocast(self.device, self.precision):
                feats = self.backbone(self._input(idx)).float()
            support = feats[: c.train_way * c.train_shot].reshape(1, c.train_way, c.train_shot, -1)
            logits = centroid_logits(support, feats[None, c.train_way * c.train_shot :])[0]
            logits = logits / c.temperature
            loss = F.cross_entropy(logits, truth)
            self._step(loss)
            total_loss += loss.item()
            correct += int((logits.argmax(1) == truth).sum())
        return total_loss / len(episodes), correct / (len(episodes) * len(truth))

    def maml_epoch(self, epoch: int) -> tuple[float, float]:
        """``episodes_per_epoch`` MAML tasks, ``meta_batch`` per outer Adam step; return (mean
        query loss, query accuracy) after the inner loop."""
        c = self.cfg
        episodes = sample_episodes(
            self.train, c.train_way, c.train_shot, c.train_query, c.episodes_per_epoch,
            seed=c.seed * 100_003 + epoch,
        )  # fmt: skip
        params = maml_params(self.backbone, self.head)
        meta = meta_gradients if self.vmap else meta_gradients_loop
        labels = torch.arange(c.train_way, device=self.device)
        total_loss, total_acc = 0.0, 0.0
        for start in tqdm(range(0, len(episodes), c.meta_batch), desc="tasks", leave=False):
            support = torch.from_numpy(episodes.support[start : start + c.meta_batch])
            query = torch.from_numpy(episodes.query[start : start + c.meta_batch])
            t = len(support)
            xs = self._input(support.reshape(-1)).unflatten(0, (t, -1))
            xq = self._input(query.reshape(-1)).unflatten(0, (t, -1))
            ys = labels.repeat_interleave(c.train_shot).expand(t, -1)
            yq = labels.repeat_interleave(c.train_query).expand(t, -1)
            inner = InnerLoop(c.inner_steps, c.inner_lr, c.second_order)
            grads, losses, accs = meta(self.maml_net, params, Tasks(xs, ys, xq, yq), inner)
            self.optimizer.zero_grad(set_to_none=True)
            for name, p in params.items():
                p.grad = grads[name]
            self.optimizer.step()
            total_loss += float(losses.sum())
            total_acc += float(accs.sum())
        return total_loss / len(episodes), total_acc / len(episodes)

    def maml_validation(self, val: FewShotDataset, episodes: Any, chunk: int = 20) -> np.ndarray:
        """Per-episode query accuracy after ``inner_steps`` on each support set: float64 (E,)."""
        c = self.cfg
        params = maml_params(self.backbone, self.head)
        labels = torch.arange(c.val_way, device=self.device)
        out = []
        for start in range(0, len(episodes), chunk):
            batch = episodes[start : start + chunk].tensors(val)
            xs, xq = (
                normalize(im.flatten(0, 1).to(self.device)).unflatten(0, im.shape[:2])
                for im in (batch.support_images, batch.query_images)
            )
            t = len(xs)
            ys = labels.repeat_interleave(c.val_shot).expand(t, -1)
            yq = labels.repeat_interleave(c.val_query).expand(t, -1)
            tasks = Tasks(xs, ys, xq, yq)
            logits = adapted_logits(
                self.maml_net, params, tasks, [c.inner_steps], c.inner_lr, self.vmap
            )[:, 0]
            out.append((logits.argmax(-1) == yq).double().mean(-1).cpu().numpy())
        return np.concatenate(out)

    def maml_running_stats(self) -> None:
        """Running statistics for the checkpoint, from a fixed sample of base images."""
        n = len(self.train)
        pick = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed))
        idx = pick[:MAML_STATS_IMAGES].to(self.images.device)
        with torch.no_grad():
            estimate_running_stats(self.backbone, normalize(self.images[idx].to(self.device)))

    def state(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone.state_dict(),
            "head": self.head.state_dict() if self.head is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "rng": self.gen.get_state(),
        }

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.backbone.load_state_dict(ckpt["backbone"])
        if self.head is not None:
            self.head.load_state_dict(ckpt["head"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.gen.set_state(ckpt["rng"])


def _meta(
    cfg: PretrainConfig, trainer: _Trainer, train: FewShotDataset, val: FewShotDataset
) -> dict[str, Any]:
    return {
        "backbone": trainer.backbone.config(),
        "layers": trainer.backbone.layer_names(),
        "out_dim": trainer.backbone.out_dim,
        "method": cfg.method,
        "config": asdict(cfg),
        "dataset": {
            "name": train.name,
            "split": train.split,
            "val_split": val.split,
            "image_size": train.image_size,
            "channels": train.channels,
            "classes": train.class_names,
            "fingerprint": train.fingerprint(),
        },
        "provenance": provenance(
            seed=cfg.seed,
            device=str(trainer.device),
            **precision_record("fp32" if cfg.method == "maml" else cfg.precision, trainer.device),
        ),
    }


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config that must match to resume (the epoch count may grow)."""
    skip = ("epochs", "device", "precision", *RETIRED)
    return {k: v for k, v in {**ADDED_DEFAULTS, **config}.items() if k not in skip}


def freeze_bn_affine(backbone: torch.nn.Module) -> int:
    """FN: every batch norm's weight set to 1 and bias to 0, not trainable; returns how many.

    The running statistics are still tracked in training mode (Yazdanpanah et al., CVPR 2022,
    ``Feature-Normalization``: ``weight.data.fill_(1)``, ``bias.data.zero_()``,
    ``requires_grad = False``).
    """
    n = 0
    for m in backbone.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.affine:
            with torch.no_grad():
                m.weight.fill_(1.0)
                m.bias.zero_()
            m.weight.requires_grad_(False)
            m.bias.requires_grad_(False)
            n += 1
    return n


def write_curves(history: list[dict[str, float]], out_dir: Path) -> None:
    """``curves.csv``: one row per epoch (``plots.curves_figure`` draws it)."""
    if not history:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_save(out_dir / "curves.csv", lambda f: f.write(buffer.getvalue().encode()))


def _check_episodes(cfg: PretrainConfig, train: FewShotDataset, val: FewShotDataset) -> None:
    """Refuse, before any work, episodes a split cannot supply, naming the config's fields."""
    wanted = [("val", val, cfg.val_way, cfg.val_shot, cfg.val_query)]
    if cfg.method in ("protonet", "maml"):
        wanted.insert(0, ("train", train, cfg.train_way, cfg.train_shot, cfg.train_query))
    for part, data, way, shot, query in wanted:
        names = (f"{part}_way", f"{part}_shot", f"{part}_query")
        check_episode_parameters(data, way, shot, query, names=names)


def pretrain(
    cfg: PretrainConfig,
    train: FewShotDataset,
    val: FewShotDataset,
    out_dir: str | Path,
    until_epoch: int | None = None,
) -> PretrainResult:
    """Pre-train a backbone on ``train``, scoring each epoch on fixed episodes of ``val``.

    Resumes from ``out_dir/last.pt`` when it exists (same config, except the epoch count).
    ``until_epoch`` stops after that epoch (state saved), e.g. to split a run into short jobs.
    """
    _check_episodes(cfg, train, val)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = _Trainer(cfg, train)
    val_episodes = sample_episodes(
        val, cfg.val_way, cfg.val_shot, cfg.val_query, cfg.val_episodes, seed=cfg.seed
    )
    meta = _meta(cfg, trainer, train, val)
    result = PretrainResult(out_dir)
    start_epoch = 0
    if (out_dir / "last.pt").exists():
        ckpt = load_checkpoint(out_dir / "last.pt")
        if _comparable(ckpt["meta"]["config"]) != _comparable(asdict(cfg)):
            raise CheckpointError(
                f"{out_dir / 'last.pt'} belongs to a run with another configuration; resume with "
                "the same parameters (only epochs may change) or use a new output folder"
            )
        trainer.load_state(ckpt)
        start_epoch = int(ckpt["epoch"])
        result.history = list(ckpt["history"])
        result.best_val, result.best_epoch = float(ckpt["best_val"]), int(ckpt["best_epoch"])
    stop = min(cfg.epochs, until_epoch or cfg.epochs)
    progress = tqdm(
        range(start_epoch, stop),
        desc=f"pre-train {cfg.method}",
        unit="epoch",
        initial=start_epoch,
        total=cfg.epochs,
    )
    for epoch in progress:
        tic = time.perf_counter()
        trainer.backbone.train()
        if cfg.method == "maml":
            loss, train_acc = trainer.maml_epoch(epoch)
            acc = trainer.maml_validation(val, val_episodes)
            trainer.maml_running_stats()
        else:
            if cfg.method == "protonet":
                loss, train_acc = trainer.protonet_epoch(epoch)
            else:
                loss, train_acc = trainer.classification_epoch()
            acc = nearest_centroid_accuracy(
                trainer.backbone, val, val_episodes, trainer.device, cfg.val_metric,
                precision=trainer.precision,
            )  # fmt: skip
        val_acc, val_ci = mean_ci95(acc)
        row = {
            "epoch": epoch + 1,
            "train_loss": loss,
            "train_acc": train_acc,
            "val_acc": val_acc,
            "val_ci95": val_ci,
            "seconds": round(time.perf_counter() - tic, 3),
        }
        result.history.append(row)
        payload = {**trainer.state(), "meta": meta, "epoch": epoch + 1, "history": result.history}
        if result.best_epoch == 0 or val_acc > result.best_val:
            result.best_val, result.best_epoch = val_acc, epoch + 1
            save_checkpoint(
                out_dir / "best.pt", {**payload, "best_val": val_acc, "best_epoch": epoch + 1}
            )
        save_checkpoint(
            out_dir / "last.pt",
            {**payload, "best_val": result.best_val, "best_epoch": result.best_epoch},
        )
        write_curves(result.history, out_dir)
        progress.set_postfix(loss=f"{loss:.3f}", train=f"{train_acc:.3f}", val=f"{val_acc:.3f}")
    return result
