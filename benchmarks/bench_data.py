"""Data-path timings: synthetic generation, first decode of real data, cached (memory-mapped) load.

    python benchmarks/bench_data.py [--root DIR] [--out benchmarks/results/data_cpu.json]

Every load goes to a fresh temporary cache, so "decode" is a real first decode and "cached" a
real cache hit. Prints the JSON and writes it atomically; it carries device, versions and date.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from ptx_utils.core.io import atomic_write_json
from ptx_utils.core.provenance import provenance
from ptx_utils.data import load_dataset
from ptx_utils.data.episodes import sample_episodes


def _time_load(name: str, split: str, cache: Path, **kwargs: Any) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        ds = load_dataset(name, split, cache=cache, **kwargs)
        first = time.perf_counter() - start
        start = time.perf_counter()
        again = load_dataset(name, split, cache=cache, **kwargs)
        cached = time.perf_counter() - start
    assert torch.equal(ds.images[:16], again.images[:16])
    return {
        "dataset": name,
        "split": split,
        "images": len(ds),
        "image_size": ds.image_size,
        "first_load_s": round(first, 3),
        "images_per_s_first": round(len(ds) / first, 1),
        "cached_load_s": round(cached, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("PTX_DATA_ROOT"))
    parser.add_argument("--out", default="benchmarks/results/data_cpu.json")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        start = time.perf_counter()
        for split in ("train", "val", "test"):
            rows.append(_time_load("synthetic", split, cache))
        synthetic_total = time.perf_counter() - start
        if args.root:
            for split in ("background", "evaluation"):
                rows.append(_time_load("omniglot", split, cache, root=args.root))
            for split in ("train", "val", "test"):
                rows.append(_time_load("mini-imagenet", split, cache, root=args.root))
        novel = load_dataset("synthetic", "test", cache=cache)
        start = time.perf_counter()
        episodes = sample_episodes(novel, 5, 5, 15, 600, seed=0)
        sampling = time.perf_counter() - start
        start = time.perf_counter()
        episodes.tensors(novel)
        stacking = time.perf_counter() - start

    result = {
        "benchmark": "data",
        "loads": rows,
        "synthetic_default_generation_s": round(synthetic_total, 3),
        "episodes_600_5way_5shot_15query": {
            "sample_s": round(sampling, 4),
            "stack_tensors_s": round(stacking, 4),
        },
        "torch_threads": torch.get_num_threads(),
        "provenance": provenance(device="cpu"),
    }
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
