"""Accuracy against adaptation length from one run: ``record`` in both engines.

Replica plans draw pass after pass from one generator, so the first p passes of a 6-pass run are
a p-pass run: the logits recorded after p passes must equal a separate p-pass run's.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ptx_utils.data import FewShotDataset
from ptx_utils.data.episodes import EpisodeBatch, sample_episodes
from ptx_utils.finetuning import (
    FinetuneConfig,
    Replica,
    finetune_batched,
    finetune_sequential,
    last_k,
    linear_probe,
    lt_ncc,
    nearest_centroid,
    tsa,
)

TOL = {"atol": 1e-4, "rtol": 1e-4}
RECORD = [0, 1, 3, 6]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def episodes(synthetic_test: FewShotDataset) -> EpisodeBatch:
    return sample_episodes(synthetic_test, 5, 1, 3, 2, seed=6).tensors(synthetic_test)


def _args(eb: EpisodeBatch, e: int):
    return eb.support_images[e], eb.support_labels[e], eb.query_images[e], 5


def test_recorded_passes_equal_shorter_runs_and_sequential(conv4, episodes) -> None:
    strategies = [linear_probe(4), last_k(4, 1, 0.01), nearest_centroid(4), lt_ncc(4, steps=6),
                  tsa(4, steps=6)]  # fmt: skip
    replicas = [Replica(s, e, seed=e) for s in strategies for e in range(2)]
    cfg = FinetuneConfig(passes=6)
    eb = episodes
    res = finetune_batched(conv4, replicas, eb.support_images, eb.support_labels,
                           eb.query_images, 5, cfg, progress=False, record=RECORD)  # fmt: skip
    assert res.recorded is not None and res.recorded.shape == (len(replicas), 4, 15, 5)
    torch.testing.assert_close(res.recorded[:, -1], res.logits)  # 6 = the whole run
    for i, r in enumerate(replicas):
        seq = finetune_sequential(conv4, r.strategy, *_args(eb, r.episode), cfg, r.seed,
                                  record=RECORD)  # fmt: skip
        assert seq.recorded is not None
        torch.testing.assert_close(res.recorded[i], seq.recorded, **TOL, msg=str(r.strategy))
        for j, p in enumerate(RECORD[1:3], 1):
            attached = r.strategy.path == "attachments"
            short = replace(r.strategy, steps=p) if attached else r.strategy
            alone = finetune_sequential(conv4, short, *_args(eb, r.episode),
                                        FinetuneConfig(passes=p), r.seed)  # fmt: skip
            torch.testing.assert_close(seq.recorded[j], alone.logits, **TOL)


def test_record_refuses_bad_points(conv4, episodes) -> None:
    eb = episodes
    cfg = FinetuneConfig(passes=3)
    for bad in ([], [3, 1], [1, 1], [-1], [1.5]):
        with pytest.raises(ValueError, match="record must"):
            finetune_sequential(conv4, linear_probe(4), *_args(eb, 0), cfg, record=bad)
    with pytest.raises(ValueError, match="beyond the 3 passes"):
        finetune_batched(conv4, [Replica(linear_probe(4), 0)], eb.support_images,
                         eb.support_labels, eb.query_images, 5, cfg, progress=False,
                         record=[5])  # fmt: skip
    with pytest.raises(ValueError, match="beyond the 3 passes"):
        finetune_sequential(conv4, linear_probe(4), *_args(eb, 0), cfg, record=[5])
    plain = finetune_batched(
        conv4, [Replica(linear_probe(4), 0)], eb.support_images, eb.support_labels,
        eb.query_images, 5, cfg, progress=False,
    )  # fmt: skip
    assert plain.recorded is None


def test_evaluate_steps_rows_summary_and_figure(conv4, synthetic_test, tmp_path) -> None:
    from ptx_utils.core.runtime import Runtime
    from ptx_utils.evaluation import evaluate_steps, evaluate_strategies, steps_summary
    from ptx_utils.plots import save_figure, steps_figure

    eps = sample_episodes(synthetic_test, 5, 1, 3, 3, seed=8)
    named = {"linear probe": linear_probe(4), "NCC": nearest_centroid(4), "LT+NCC": lt_ncc(4)}
    runtime = Runtime(progress=False)
    rows = evaluate_steps(conv4, named, synthetic_test, eps, passes=(0, 2, 4), runtime=runtime)
    assert rows.shape == (3 * 3 * 3, 6)
    # a point equals the harness's score of that many passes (same replica seeds)
    at4 = rows[(rows["strategy"] == "linear probe") & (rows["passes"] == 4)]["accuracy"]
    plain = evaluate_strategies(conv4, {"linear probe": linear_probe(4)}, synthetic_test, eps,
                                FinetuneConfig(passes=4), runtime)  # fmt: skip
    assert at4.tolist() == pytest.approx(plain.rows["accuracy"].tolist())
    ncc = rows[rows["strategy"] == "NCC"].pivot(
        index="episode", columns="passes", values="accuracy"
    )
    assert (ncc.nunique(axis=1) == 1).all()  # nothing trains: one value at every point
    summary = steps_summary(rows)
    assert len(summary) == 9 and (summary["n"] == 3).all()
    paths = save_figure(steps_figure(summary, title="t"), tmp_path / "steps")
    assert all(p.stat().st_size > 0 for p in paths)
