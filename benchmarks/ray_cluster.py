"""A two-node Ray cluster on localhost: the same numbers as here, and 1 vs 2 workers' throughput.

    python benchmarks/ray_cluster.py --out benchmarks/results/ray_cluster_cpu.json

Starts ``ray start --head`` and a second ``ray start --address=...`` as separate processes on
127.0.0.1 (one CPU each, so each node holds one worker), runs the same evaluation locally and on
the cluster (equal accuracies asserted), then times one generation-sized batch of replicas on 1
and on 2 workers (one thread each) and the driver's own time per call; ``ray stop`` at the end,
whatever happens. Run it with nothing else busy on the machine: the throughput is the point.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ptx_utils.core.io import atomic_write_json
from ptx_utils.core.provenance import provenance
from ptx_utils.core.runtime import Runtime
from ptx_utils.data import load_dataset
from ptx_utils.data.episodes import sample_episodes
from ptx_utils.evaluation import evaluate_strategies
from ptx_utils.finetuning import FinetuneConfig, Scheme, full_finetune, last_k, linear_probe
from ptx_utils.models import create_backbone

PORT = 6399
TIMEOUT = 120


def ray_cli(*args: str, check: bool = True) -> None:
    """The ``ray`` command of this environment, bounded in time."""
    ray = str(Path(sys.executable).with_name("ray"))
    ray = ray if Path(ray).exists() else shutil.which("ray") or "ray"
    subprocess.run([ray, *args], check=check, timeout=TIMEOUT, capture_output=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--passes", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private localhost cluster (Ray >= 2.5x)
    import ray

    from ptx_utils.finetuning import ray_executor

    data = load_dataset("synthetic", "test", image_size=32, images_per_class=30)
    eps = sample_episodes(data, 5, 1, 15, args.episodes, seed=0)
    model = create_backbone("conv4", in_channels=3, image_size=32).eval()
    cfg = FinetuneConfig(head="cosine", passes=args.passes)
    named = {"probe": linear_probe(4), "last-1": last_k(4, 1), "full": full_finetune(4),
             "mid": Scheme((0, 0.01, 0.01, 0.1))}  # fmt: skip
    local = Runtime(progress=False, precision="fp32", chunk_size=4)
    address = f"127.0.0.1:{PORT}"
    record: dict = {"benchmark": "Ray: two localhost nodes vs local", "timings": {}}
    try:
        ray_cli("start", "--head", f"--port={PORT}", "--node-ip-address=127.0.0.1",
                "--num-cpus=1", "--include-dashboard=false")  # fmt: skip
        ray_cli("start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1")
        ray_executor.connect(address)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        record["nodes"] = len(nodes)
        here = evaluate_strategies(model, named, data, eps, cfg, local).rows
        for workers in (1, 2):
            rt = Runtime(progress=False, precision="fp32", chunk_size=4, executor="ray",
                         ray_address=address, ray_workers=workers)  # fmt: skip
            there = evaluate_strategies(model, named, data, eps, cfg, rt).rows  # warm-up + check
            np.testing.assert_array_equal(there["accuracy"], here["accuracy"])
            seconds = []
            for _ in range(args.repeats):
                tic = time.perf_counter()
                evaluate_strategies(model, named, data, eps, cfg, rt)
                seconds.append(time.perf_counter() - tic)
            replicas = len(named) * len(eps)
            record["timings"][f"{workers} worker(s)"] = {
                "seconds": seconds, "replicas": replicas,
                "replicas_per_s": replicas / float(np.median(seconds)),
            }  # fmt: skip
        tic = time.perf_counter()
        evaluate_strategies(model, named, data, eps, cfg, local)
        record["timings"]["local, 1 thread"] = {"seconds": [time.perf_counter() - tic]}
        one, two = (record["timings"][f"{w} worker(s)"]["replicas_per_s"] for w in (1, 2))
        record["speedup_2_vs_1"] = two / one
        record["equal_to_local"] = True
    finally:
        ray_executor.shutdown()
        ray_cli("stop", "--force", check=False)
    record["command"] = "python " + shlex.join(["benchmarks/ray_cluster.py", *sys.argv[1:]])
    record["provenance"] = provenance(seed=0, device="cpu")
    record["setting"] = (f"{len(named)} strategies x {len(eps)} synthetic 32x32 5-way 1-shot "
                         f"episodes, {args.passes} passes, chunk size 4, fp32")  # fmt: skip
    atomic_write_json(args.out, record)
    print(json.dumps({k: v for k, v in record.items() if k != "provenance"}, indent=1))


if __name__ == "__main__":
    main()
