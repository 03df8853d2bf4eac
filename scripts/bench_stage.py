"""The featurize stage callable (what an actor runs: numpy batch in, numpy rows out), on a
device against the CPU, in one run: agreement with the CPU's output and time per batch.

    python scripts/bench_stage.py --corpus /tmp/corpus --device cuda --batch 64 256

No Ray: the decode and featurize stages are called directly on the reference corpus's first
shard, with a realistic policy (speed, reverb from a pyroomacoustics RIR bank, recorded noise,
generated noise, filter, VTLP, 2 frequency + 2 time masks) and ``log_params`` on. Agreement is
the largest mel-power difference over rows, in units of the CUDA parity tolerance of
tests/test_op_contract.py (1e-3 of the cell + 1e-5 of the row's peak): below 1 agrees.
Times are medians of ``--reps`` calls after 3 warm-up calls.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="reference corpus folder (its first shard is used)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, nargs="+", default=[64])
    p.add_argument("--reps", type=int, default=15)
    args = p.parse_args(argv)
    sys.path.insert(0, os.path.dirname(__file__))
    from bench_augment import noise_bank_source

    from specstream.io.samples import ReaderOptions, read_shard
    from specstream.pipeline.stages import DecodeStage, FeaturizeStage
    from specstream.rirs import make_rir_bank

    tmp = tempfile.mkdtemp(prefix="bench_stage_")
    make_rir_bank(tmp, count=20, seed=0)
    cfg = {"source": {"shards": "unused"}, "labels": {"num_classes": 10}, "log_params": True, "seed": 3,
           "augment": {"ops": [{"op": "speed", "factors": [0.9, 1.0, 1.1]}, {"op": "reverb", "bank": tmp, "p": 0.5},
                               {"op": "background_noise", "bank": noise_bank_source(tmp), "snr_db": [0, 20], "p": 0.8},
                               {"op": "noise", "colour": ["white", "pink", "brown"], "p": 0.3},
                               {"op": "filter", "p": 0.3}, {"op": "vtlp"},
                               {"op": "freq_mask", "max_width": 27, "count": 2},
                               {"op": "time_mask", "max_width": 20, "count": 2}]}}
    shard = sorted(glob.glob(os.path.join(args.corpus, "*.tar")))[0]
    cpu, dev = FeaturizeStage(cfg, device="cpu"), FeaturizeStage(cfg, device=args.device)
    print(f"featurize stage on {args.device} vs cpu, {shard}, median of {args.reps}")
    for B in args.batch:
        table = next(t for t, _, _ in read_shard(shard, options=ReaderOptions(block_rows=B)) if t is not None)
        dec = DecodeStage(cfg)(table)
        a, b = cpu(dec), dev(dec)
        worst = 0.0
        for i in range(len(a["key"])):
            pa, pb = np.exp(a["features"][i].astype(np.float64)), np.exp(b["features"][i].astype(np.float64))
            worst = max(worst, float((np.abs(pa - pb) / (1e-3 * pa + 1e-5 * pa.max())).max()))
        same = (np.array_equal(a["length"], b["length"]) and np.allclose(a["target"], b["target"])
                and all(json.loads(x).keys() == json.loads(y).keys() for x, y in zip(a["aug_params"], b["aug_params"])))
        times = {}
        for name, stage in (("cpu", cpu), (args.device, dev)):
            t = []
            for _ in range(args.reps + 3):
                t0 = time.perf_counter()
                stage(dec)
                t.append(time.perf_counter() - t0)
            times[name] = statistics.median(t[3:])
        n = len(dec["key"])
        print(f"  {n} clips: {args.device} {times[args.device] * 1e3:.1f} ms ({n / times[args.device]:.0f} clips/s), "
              f"cpu {times['cpu'] * 1e3:.1f} ms ({n / times['cpu']:.0f} clips/s): {times['cpu'] / times[args.device]:.1f}x; "
              f"worst difference {worst:.3g} x the parity tolerance; lengths, targets, param fields equal: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
