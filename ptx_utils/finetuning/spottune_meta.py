"""SpotTune's meta-trained policy: trained across base-class episodes, then loaded on novel ones.

Each training episode fine-tunes the tuned copies and a new head on its support set (the
protocol's SGD for ``inner_passes`` passes, the policy fixed), then the policy takes one SGD step
on the episode's query loss through those copies — first-order: the inner updates are not
differentiated. Resumable from ``state.pt``; the result is ``policy.pt`` (loaded by a strategy as
``loads=("policy.pt#sha256",)``) and ``record.json``. ``docs/strategies.md``.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ptx_utils.core.io import atomic_save, atomic_write_json
from ptx_utils.data.augment import normalize
from ptx_utils.data.base import FewShotDataset
from ptx_utils.data.episodes import EpisodeBatch, sample_episodes
from ptx_utils.finetuning.protocol import FinetuneConfig, replica_plan
from ptx_utils.finetuning.replicas import replica_seed
from ptx_utils.finetuning.spottune import (
    SpotTuneSpec,
    build_net,
    fit_support,
    gumbel_noise,
    init_head,
)
from ptx_utils.models import Backbone
from ptx_utils.models.checkpoint import MetaTrained, state_digest

#: Episodes whose tensors are gathered at once.
_GATHER = 64


@dataclass(frozen=True)
class MetaPolicyConfig:
    """Meta-training settings (defaults: a CPU budget for Conv4 on Omniglot, stated in the docs).

    ``lr`` / ``head_lr``: the inner loop's rates (copies, ``head`` — give the novel episodes'
    protocol head and rate); ``policy_lr``: the outer SGD's (momentum 0.9); ``inner_passes``:
    passes over the support set.
    """

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.checkpoint_every < 1 or self.inner_passes < 1:
            raise ValueError(f"need episodes, checkpoint_every, inner_passes >= 1; got {self}")

    episodes: int = 500
    n_way: int = 5
    k_shot: int = 1
    n_query: int = 15
    inner_passes: int = 10
    lr: float = 0.01
    head_lr: float = 0.01
    policy_lr: float = 0.1
    head: str = "cosine"
    seed: int = 0
    checkpoint_every: int = 50

    def inner(self) -> FinetuneConfig:
        return FinetuneConfig(head=self.head, passes=self.inner_passes)


#: A meta-trained policy: its file, hash and record.
MetaPolicy = MetaTrained


def meta_train_policy(
    backbone: Backbone,
    base: FewShotDataset,
    cfg: MetaPolicyConfig,
    out_dir: str | Path,
    progress: bool = True,
) -> MetaPolicy:
    """Meta-train SpotTune's per-image policy on ``base``'s episodes (CPU or the backbone's
    device); resume from ``out_dir/state.pt``; load a finished run with the same settings.

    Raises:
        ValueError: ``out_dir`` holds a run with other settings or another backbone.

    Example:
        >>> from ptx_utils.data import load_dataset
        >>> from ptx_utils.models import create_backbone
        >>> import tempfile
        >>> base = load_dataset("synthetic", "train", image_size=16, images_per_class=10)
        >>> cfg = MetaPolicyConfig(episodes=2, inner_passes=1, n_query=2, checkpoint_every=1)
        >>> out = meta_train_policy(create_backbone("conv4", image_size=16), base, cfg,
        ...                         tempfile.mkdtemp(), progress=False)
        >>> out.record["episodes_done"], len(out.sha256)
        (2, 64)
    """
    out = Path(out_dir)
    base_record = {"name": base.name, "split": base.split, "fingerprint": base.fingerprint(),
                   "image_size": base.image_size, "channels": base.channels}  # fmt: skip
    identity = json.loads(
        json.dumps({"config": asdict(cfg), "backbone": state_digest(backbone), "base": base_record})
    )  # fmt: skip; as saved, so it compares equal after a JSON round trip
    record_path, state_path, policy_path = out / "record.json", out / "state.pt", out / "policy.pt"
    if record_path.exists():
        record = json.loads(record_path.read_text())
        refuse_other_identity(record["identity"], identity, record_path)
        blob = policy_path.read_bytes()
        return MetaPolicy(policy_path, hashlib.sha256(blob).hexdigest(), record)
    spec = SpotTuneSpec(cfg.lr, policy_lr=0.0)
    inner = cfg.inner()
    master = build_net(backbone, spec, cfg.n_way, inner).policy
    for p in master.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(master.parameters(), lr=cfg.policy_lr, momentum=0.9)
    done, curve, seconds = 0, [], 0.0
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        refuse_other_identity(json.loads(state["identity"]), identity, state_path)
        master.load_state_dict(state["policy"])
        optimizer.load_state_dict(state["optimizer"])
        done, curve, seconds = state["done"], json.loads(state["curve"]), state["seconds"]
    episodes = sample_episodes(base, cfg.n_way, cfg.k_shot, cfg.n_query, cfg.episodes, cfg.seed)
    window: list[dict[str, Any]] = []
    bar = tqdm(total=cfg.episodes, initial=done, desc="meta-train SpotTune policy",
               unit="episode", disable=not progress)  # fmt: skip
    tic = time.perf_counter()
    try:
        for start in range(done, cfg.episodes, _GATHER):
            batch = episodes[start : min(start + _GATHER, cfg.episodes)].tensors(base)
            for j in range(len(batch.support_labels)):
                e = start + j
                window.append(_episode(backbone, master, optimizer, spec, inner, cfg, batch, j, e))
                done = e + 1
                bar.update(1)
                if done % cfg.checkpoint_every == 0 or done == cfg.episodes:
                    curve.append(_summarise(window, done))
                    window = []
                    elapsed = seconds + time.perf_counter() - tic
                    _save_state(state_path, identity, master, optimizer, done, curve, elapsed)
    finally:
        bar.close()
    seconds += time.perf_counter() - tic
    buffer = io.BytesIO()
    torch.save({"policy": master.state_dict(), "identity": json.dumps(identity)}, buffer)
    atomic_save(policy_path, lambda f: f.write(buffer.getvalue()))
    sha = hashlib.sha256(buffer.getvalue()).hexdigest()
    record = {
        "identity": identity, "episodes_done": done, "curve": curve, "sha256": sha,
        "seconds": round(seconds, 1),
        "policy_parameters": sum(p.numel() for p in master.parameters()),
    }  # fmt: skip
    atomic_write_json(record_path, record)
    return MetaPolicy(policy_path, sha, record)


def _episode(
    backbone: Backbone,
    master: nn.Module,
    optimizer: torch.optim.Optimizer,
    spec: SpotTuneSpec,
    inner: FinetuneConfig,
    cfg: MetaPolicyConfig,
    batch: EpisodeBatch,
    j: int,
    e: int,
) -> dict[str, Any]:
    """Inner loop on episode ``j`` of ``batch`` (index ``e``), then one outer step of the policy."""
    net = build_net(backbone, spec, cfg.n_way, inner)
    net.policy.load_state_dict(master.state_dict())
    device = next(net.parameters()).device
    s_img, s_lab = batch.support_images[j], batch.support_labels[j]
    plan = replica_plan(replica_seed(cfg.seed, e), len(s_lab), cfg.n_way, net.frozen.out_dim, inner)
    init_head(net, plan)
    rates = {"tuned": cfg.lr, "head": cfg.head_lr, "policy": 0.0}
    if fit_support(net, rates, plan, s_img, s_lab, inner):
        return {"diverged": True}
    for p in net.policy.parameters():
        p.requires_grad_(True)
    x_q, y_q = normalize(batch.query_images[j].to(device)), batch.query_labels[j].to(device)
    noise = gumbel_noise((len(y_q), net.n_blocks, 2), plan.generator).to(device)
    logits, decisions = net(x_q, noise)
    loss = F.cross_entropy(logits, y_q)
    grads = torch.autograd.grad(loss, list(net.policy.parameters()))
    optimizer.zero_grad(set_to_none=True)
    for p, g in zip(master.parameters(), grads, strict=True):
        p.grad = g.to(p.device)
    optimizer.step()
    return {
        "diverged": False,
        "loss": float(loss.detach()),
        "accuracy": float((logits.argmax(-1) == y_q).float().mean()),
        "tuned": decisions.detach().mean(0).tolist(),
    }


def _summarise(window: list[dict[str, Any]], done: int) -> dict[str, Any]:
    ok = [w for w in window if not w["diverged"]]
    blocks = len(ok[0]["tuned"]) if ok else 0
    return {
        "episodes": done,
        "diverged": len(window) - len(ok),
        "query_loss": sum(w["loss"] for w in ok) / max(len(ok), 1),
        "query_accuracy": sum(w["accuracy"] for w in ok) / max(len(ok), 1),
        "tuned_fraction": [sum(w["tuned"][b] for w in ok) / len(ok) for b in range(blocks)],
    }


def _save_state(
    path: Path,
    identity: dict[str, Any],
    master: nn.Module,
    optimizer: torch.optim.Optimizer,
    done: int,
    curve: list[dict[str, Any]],
    seconds: float,
) -> None:
    buffer = io.BytesIO()
    state = {"identity": json.dumps(identity), "policy": master.state_dict(),
             "optimizer": optimizer.state_dict(), "done": done, "curve": json.dumps(curve),
             "seconds": seconds}  # fmt: skip
    torch.save(state, buffer)
    atomic_save(path, lambda f: f.write(buffer.getvalue()))


def refuse_other_identity(saved: dict[str, Any], identity: dict[str, Any], where: Path) -> None:
    """Refuse a saved meta-training run whose identity (settings, backbone, base split)
    differs from ``identity``, naming the fields that differ."""
    if saved != identity:
        differ = sorted(
            f"{k}.{f}" if isinstance(identity[k], dict) else k
            for k in identity
            for f in (identity[k] if isinstance(identity[k], dict) else [None])
            if (saved.get(k, {}).get(f) if f is not None else saved.get(k))
            != (identity[k][f] if f is not None else identity[k])
        )
        raise ValueError(
            f"{where} holds a run meta-trained with other {', '.join(differ)}; use another "
            "directory or remove it to meta-train again"
        )
