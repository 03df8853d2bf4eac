"""Augmentation cost on one [64, 80, 1000] log-mel batch with per-sample lengths, in one run.

1. 2 frequency + 2 time masks (F=27, T=100): ours (batched, keyed, lengths-aware) vs
   torchaudio.transforms.SpecAugment(iid_masks=True) vs a per-sample Python loop
   (torchaudio.functional.mask_along_axis on each sample's own valid frames).
2. SpecAugment time warp (W=80): ours batched vs a per-sample loop (the classic
   two-segment F.interpolate warp, as in ESPnet/SpecAugment reference code, per sample).

Medians over bursts of 5 calls after warm-up (--reps calls in all), contenders' bursts interleaved;
ratios printed against the baselines.
With --device cuda, also reports the masks' effective bandwidth against --peak-gbs.

    python scripts/bench_augment.py --reps 20
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torchaudio

from specstream.augment import FreqMask, Policy, TimeMask, TimeWarp
from specstream.augment.random import key_ids


def timed(fns, reps: int, device, burst: int = 5):
    """Median seconds per call of each function. Calls run in bursts of ``burst`` (a steady
    state, as in a pipeline that augments batch after batch) and the bursts of the
    contenders alternate, so that the machine's drift hits each of them alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for fn in fns:
        for _ in range(3):
            fn()
    times = [[] for _ in fns]
    for _ in range(max(1, reps // burst)):
        for i, fn in enumerate(fns):
            sync()
            t = time.perf_counter()
            for _ in range(burst):
                fn()
            sync()
            times[i].append((time.perf_counter() - t) / burst)
    return [statistics.median(t) for t in times]


def loop_masks(x, lengths):
    out = x.clone()
    for b in range(x.shape[0]):
        n = int(lengths[b])
        s = out[b:b + 1, :, :n]
        for _ in range(2):
            s = torchaudio.functional.mask_along_axis(s, 27, 0.0, 1)
        for _ in range(2):
            s = torchaudio.functional.mask_along_axis(s, min(100, n), 0.0, 2)
        out[b, :, :n] = s[0]
    return out


def loop_time_warp(x, lengths, W=80):
    out = x.clone()
    for b in range(x.shape[0]):
        n = int(lengths[b])
        if n - W <= W + 1:
            continue
        spec = x[b:b + 1, :, :n]
        centre = int(torch.randint(W + 1, n - W, (1,)))
        warped = int(torch.randint(centre - W, centre + W + 1, (1,)))
        left = F.interpolate(spec[:, None, :, :centre], (spec.shape[1], warped), mode="bilinear",
                             align_corners=False)
        right = F.interpolate(spec[:, None, :, centre:], (spec.shape[1], n - warped), mode="bilinear",
                              align_corners=False)
        out[b, :, :n] = torch.cat([left, right], dim=-1)[0, 0]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--peak-gbs", type=float, default=3350.0, help="GPU memory bandwidth (H100 SXM ~3350 GB/s)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    B, Fq, T = args.batch, 80, args.frames
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, Fq, T, generator=g).to(device)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g).to(device)
    lengths[0] = T
    ids = torch.from_numpy(key_ids([f"utt{i}" for i in range(B)])).to(device)
    print(f"batch [{B}, {Fq}, {T}] on {device}, lengths {int(lengths.min())}..{int(lengths.max())}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.reps}")

    masks = Policy([FreqMask(max_width=27, count=2), TimeMask(max_width=100, count=2)])
    ta = torchaudio.transforms.SpecAugment(n_time_masks=2, time_mask_param=100, n_freq_masks=2,
                                           freq_mask_param=27, iid_masks=True, zero_masking=True)
    t_ours, t_ta, t_loop = timed([lambda: masks(x, lengths, key_ids=ids, seed=0), lambda: ta(x),
                                  lambda: loop_masks(x, lengths)], args.reps, device)
    print(f"2F+2T masks  ours {t_ours * 1e3:8.2f} ms | torchaudio SpecAugment {t_ta * 1e3:8.2f} ms | "
          f"per-sample loop {t_loop * 1e3:8.2f} ms")
    print(f"  ratio vs torchaudio SpecAugment(iid_masks=True): {t_ta / t_ours:.1f}x  (target >= 3x on CPU)")
    print(f"  ratio vs per-sample loop:                        {t_loop / t_ours:.1f}x")
    if device.type == "cuda":
        moved = 2 * x.numel() * x.element_size()  # one read + one write of the features
        print(f"  effective bandwidth {moved / t_ours / 1e9:.0f} GB/s = "
              f"{100 * moved / t_ours / 1e9 / args.peak_gbs:.1f}% of {args.peak_gbs:.0f} GB/s")

    warp = Policy([TimeWarp(W=80)])
    t_warp, t_warp_loop = timed([lambda: warp(x, lengths, key_ids=ids, seed=0),
                                 lambda: loop_time_warp(x, lengths)], args.reps, device)
    print(f"time warp    ours {t_warp * 1e3:8.2f} ms | per-sample loop {t_warp_loop * 1e3:8.2f} ms")
    print(f"  ratio vs per-sample loop: {t_warp_loop / t_warp:.1f}x  (target >= 10x on CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
