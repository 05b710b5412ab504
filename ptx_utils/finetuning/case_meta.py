"""UpperCaSE's meta-training of the CaSE blocks on base-class episodes, resumable.

Each episode, as the released ``UpperCaSE.learn``: a context pass over the support set, a
zero-initialised linear head fitted on the support features (:mod:`.uppercase`), then the query
loss through that head back-propagated into the CaSE blocks on mini-batches of 128 of support +
query images, each batch in context mode; an Adam step every ``tasks_per_step`` episodes, its
rate falling linearly from ``lr`` to ``final_lr``. The backbone stays frozen in eval mode.
Resumable from ``state.pt``; the result is ``case.pt`` (``loads=("case.pt#sha256",)``) and
``record.json``. ``docs/strategies.md#upper-case``.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ptx_utils.core.io import atomic_save, atomic_write_json
from ptx_utils.data.augment import normalize
from ptx_utils.data.base import FewShotDataset
from ptx_utils.data.episodes import sample_episodes
from ptx_utils.finetuning.case import CaSENetwork
from ptx_utils.finetuning.replicas import replica_seed
from ptx_utils.finetuning.spottune_meta import refuse_other_identity
from ptx_utils.finetuning.uppercase import HEAD_BATCH, adapted_features, fit_head_sequential
from ptx_utils.models import Backbone
from ptx_utils.models.checkpoint import MetaTrained, state_digest


@dataclass(frozen=True)
class CaSEMetaConfig:
    """Meta-training settings. The released code: Adam 2.5e-4 → 1e-6 over the tasks, a step
    every 16 tasks, 500 head iterations; ``head_steps`` is smaller for a CPU budget (stated
    where used)."""

    episodes: int = 800
    n_way: int = 5
    k_shot: int = 5
    n_query: int = 15
    head_steps: int = 500
    lr: float = 2.5e-4
    final_lr: float = 1e-6
    tasks_per_step: int = 16
    seed: int = 0
    checkpoint_every: int = 80

    def __post_init__(self) -> None:
        if min(self.episodes, self.head_steps, self.tasks_per_step) < 1:
            raise ValueError(f"need episodes, head_steps, tasks_per_step >= 1; got {self}")
        if self.checkpoint_every % self.tasks_per_step:
            raise ValueError(
                f"checkpoint_every ({self.checkpoint_every}) must be a multiple of tasks_per_step "
                f"({self.tasks_per_step}) so a checkpoint holds no pending gradient"
            )


#: Meta-trained CaSE blocks: their file, hash and record.
CaSEBlocks = MetaTrained


def meta_train_case(
    backbone: Backbone,
    base: FewShotDataset,
    cfg: CaSEMetaConfig,
    out_dir: str | Path,
    progress: bool = True,
) -> CaSEBlocks:
    """Meta-train CaSE blocks on ``backbone`` (frozen) with ``base``'s episodes; resume from
    ``out_dir/state.pt``; load a finished run with the same settings.

    Example:
        >>> from ptx_utils.data import load_dataset
        >>> from ptx_utils.models import create_backbone
        >>> import tempfile
        >>> base = load_dataset("synthetic", "train", image_size=16, images_per_class=10)
        >>> cfg = CaSEMetaConfig(episodes=2, k_shot=1, n_query=2, head_steps=3,
        ...                      tasks_per_step=1, checkpoint_every=1)
        >>> out = meta_train_case(create_backbone("conv4", image_size=16), base, cfg,
        ...                       tempfile.mkdtemp(), progress=False)
        >>> out.record["episodes_done"], len(out.sha256)
        (2, 64)
    """
    out = Path(out_dir)
    base_record = {"name": base.name, "split": base.split, "fingerprint": base.fingerprint()}
    identity = json.loads(
        json.dumps({"config": asdict(cfg), "backbone": state_digest(backbone), "base": base_record})
    )  # as saved, so it compares equal after a JSON round trip
    record_path, state_path, blocks_path = out / "record.json", out / "state.pt", out / "case.pt"
    if record_path.exists():
        record = json.loads(record_path.read_text())
        refuse_other_identity(record["identity"], identity, record_path)
        return CaSEBlocks(blocks_path, hashlib.sha256(blocks_path.read_bytes()).hexdigest(), record)
    with torch.random.fork_rng(devices=[]):  # the blocks' first two layers: seeded
        torch.manual_seed(cfg.seed)
        net = CaSENetwork(copy.deepcopy(backbone)).to(next(backbone.parameters()).device)
    optimizer = torch.optim.Adam(net.blocks.parameters(), lr=cfg.lr)
    rates = np.linspace(cfg.lr, cfg.final_lr, num=cfg.episodes, endpoint=True)
    done, curve, seconds = 0, [], 0.0
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        refuse_other_identity(json.loads(state["identity"]), identity, state_path)
        net.blocks.load_state_dict(state["blocks"])
        optimizer.load_state_dict(state["optimizer"])
        done, curve, seconds = state["done"], json.loads(state["curve"]), state["seconds"]
    episodes = sample_episodes(base, cfg.n_way, cfg.k_shot, cfg.n_query, cfg.episodes, cfg.seed)
    window: list[tuple[float, float]] = []
    bar = tqdm(total=cfg.episodes, initial=done, desc="meta-train CaSE", unit="episode",
               disable=not progress)  # fmt: skip
    tic = time.perf_counter()
    try:
        for e in range(done, cfg.episodes):
            window.append(_episode(net, episodes[e : e + 1].tensors(base), cfg, e))
            done = e + 1
            bar.update(1)
            if done % cfg.tasks_per_step == 0 or done == cfg.episodes:
                for group in optimizer.param_groups:
                    group["lr"] = float(rates[e])
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if done % cfg.checkpoint_every == 0 or done == cfg.episodes:
                loss, acc = np.mean(window, axis=0)
                curve.append({"episodes": done, "query_loss": loss, "query_accuracy": acc})
                window = []
                state = {"identity": json.dumps(identity), "blocks": net.blocks.state_dict(),
                         "optimizer": optimizer.state_dict(), "done": done,
                         "curve": json.dumps(curve),
                         "seconds": seconds + time.perf_counter() - tic}  # fmt: skip
                _save(state_path, state)
    finally:
        bar.close()
    seconds += time.perf_counter() - tic
    buffer = io.BytesIO()
    torch.save({"blocks": net.blocks.state_dict(), "identity": json.dumps(identity)}, buffer)
    atomic_save(blocks_path, lambda f: f.write(buffer.getvalue()))
    sha = hashlib.sha256(buffer.getvalue()).hexdigest()
    record = {
        "identity": identity, "episodes_done": done, "curve": curve, "sha256": sha,
        "seconds": round(seconds, 1),
        "case_parameters": sum(p.numel() for p in net.blocks.parameters()),
    }  # fmt: skip
    atomic_write_json(record_path, record)
    return CaSEBlocks(blocks_path, sha, record)


def _episode(net: CaSENetwork, batch: Any, cfg: CaSEMetaConfig, e: int) -> tuple[float, float]:
    """Episode ``e``: fit the head, accumulate the CaSE gradient; (query loss, accuracy)."""
    device = next(net.parameters()).device
    s_img, q_img = batch.support_images[0].to(device), batch.query_images[0].to(device)
    s_lab, q_lab = batch.support_labels[0].to(device), batch.query_labels[0].to(device)
    generator = torch.Generator().manual_seed(replica_seed(cfg.seed, e))
    s_feats, _ = adapted_features(net, s_img, q_img)
    head, _ = fit_head_sequential(s_feats, s_lab, cfg.n_way, cfg.head_steps, generator)
    for p in head.parameters():
        p.requires_grad_(False)
    images = normalize(torch.cat([s_img, q_img]))
    labels = torch.cat([s_lab, q_lab])
    for _ in range(max(1, len(images) // HEAD_BATCH)):
        idx = torch.randint(len(images), (HEAD_BATCH,), generator=generator).to(device)
        with net.context():  # γ from this batch, as the released code
            logits = head(net(images[idx]).float())
        F.cross_entropy(logits, labels[idx]).backward()
    with torch.no_grad():  # the query accuracy with the support set's γ
        _, q_feats = adapted_features(net, s_img, q_img)
        pred = head(q_feats)
    loss = float(F.cross_entropy(pred, q_lab))
    return loss, float((pred.argmax(1) == q_lab).float().mean())


def _save(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_save(path, lambda f: f.write(buffer.getvalue()))
