"""Augmentation cost, in one run.

1. masks: 2 frequency + 2 time masks (F=27, T=100) on one [64, 80, 1000] log-mel batch with
   per-sample lengths: ours (batched, keyed, lengths-aware) vs
   torchaudio.transforms.SpecAugment(iid_masks=True) vs a per-sample Python loop
   (torchaudio.functional.mask_along_axis on each sample's own valid frames).
2. warp: SpecAugment time warp (W=80): ours batched vs a per-sample loop (the classic
   two-segment F.interpolate warp, as in ESPnet/SpecAugment reference code, per sample).
3. stages: the featurize stage's parts on a batch of --stage-batch one-second 16 kHz clips
   (the reference corpus's first shard with --corpus, else noise): each waveform op,
   the log-mel, the log-mel with VTLP filterbanks and the spectrogram ops alone, as
   milliseconds per audio-second and as a multiple of real time; then the whole stage
   with a realistic policy (speed, reverb from a pyroomacoustics RIR bank, recorded noise,
   generated noise, filters, VTLP, SpecAugment masks) relative to the log-mel alone, and
   relative to torchaudio's MelSpectrogram + log on the same batch (a fixed reference:
   the first ratio grows whenever our own log-mel gets faster).
4. kernels (CPU): each fused numba kernel against the torch path it replaces, same inputs.
5. calls (CPU): what one small call costs right after a large torch operation (a pass over
   megabytes, as every op of the stage makes) against the same call repeated: a torch
   addition, a numpy addition and a serial numba kernel call on 64 values.

Medians over bursts of 5 calls after warm-up (--reps calls in all), contenders' bursts interleaved;
ratios printed against the baselines. By default glibc trims freed memory, so big buffers
are faulted in again on every call (as in the figures before ``actors.retain_freed_memory``);
``--keep-freed-memory`` measures as the pipeline's featurize processes now run.
With --device cuda, also reports the masks' effective bandwidth against --peak-gbs.

    python scripts/bench_augment.py --reps 20
    python scripts/bench_augment.py --part stages --corpus /tmp/corpus --reps 20
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
import torchaudio

from specstream.augment import FreqMask, Policy, TimeMask, TimeWarp
from specstream.augment.random import key_ids
from specstream.functional import cpu_kernels


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


def stage_audio(corpus, B: int):
    """[B, 16000] one-second clips: the reference corpus's first shard, else white noise."""
    if corpus:
        from specstream.io.audio import decode_audio
        from specstream.io.samples import iter_samples

        shard = sorted(glob.glob(os.path.join(corpus, "*.tar")))[0]
        clips = []
        with open(shard, "rb") as f:
            for kind, row in iter_samples(f, shard):
                if kind == "row":
                    clips.append(decode_audio(row["audio"])[0][:16000])
                if len(clips) == B:
                    break
        x = torch.zeros(len(clips), 16000)
        for i, c in enumerate(clips):
            x[i, : len(c)] = torch.from_numpy(c)
        return x, f"{len(clips)} clips of {shard}"
    return 0.1 * torch.randn(B, 16000, generator=torch.Generator().manual_seed(0)), "white noise"


def noise_bank_source(tmp: str) -> str:
    """ALSA's recorded noise when installed (alsa-utils), else 4 s of generated pink noise."""
    if os.path.exists("/usr/share/sounds/alsa/Noise.wav"):
        return "/usr/share/sounds/alsa/Noise.wav"
    import soundfile as sf

    from specstream.augment.wave import coloured_noise

    path = os.path.join(tmp, "pink.wav")
    sf.write(path, (0.1 * coloured_noise(torch.tensor([1]), 64000, torch.tensor([1]))[0]).numpy(), 16000)
    return path


def bench_stages(args, device) -> None:
    from specstream.augment import Policy, build_policy
    from specstream.features import LogMel, MelConfig
    from specstream.io.banks import load_bank
    from specstream.rirs import make_rir_bank

    wave, what = stage_audio(args.corpus, args.stage_batch)
    wave = wave.to(device)
    B = wave.shape[0]
    L = torch.full((B,), wave.shape[1], dtype=torch.int64, device=device)
    ids = torch.from_numpy(key_ids([f"utt{i}" for i in range(B)])).to(device)
    audio_s = B * wave.shape[1] / 16000
    tmp = tempfile.mkdtemp(prefix="bench_rirs_")
    make_rir_bank(tmp, count=20, seed=0)
    rirs, noise = tmp, noise_bank_source(tmp)
    loader = lambda src: load_bank(src, 16000)  # noqa: E731
    logmel = LogMel(MelConfig()).to(device)
    print(f"\nfeaturize stage parts: [{B}, 16000] ({what}) on {device}, {audio_s:.0f} audio-seconds per batch, "
          f"{torch.get_num_threads()} threads, freed memory "
          + ("kept" if args.keep_freed_memory else "returned to the OS (glibc default)"))

    def featurize(policy):
        return lambda: policy.featurize(wave, L, logmel, 16000, key_ids=ids, seed=0, epoch=0)

    parts = [("log-mel alone", featurize(Policy([])))]
    ta = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=80).to(device)
    parts.append(("torchaudio log-mel (reference)", lambda: torch.log(ta(wave) + 1e-6)))
    single = [
        ("wave_gain", {"op": "wave_gain"}),
        ("noise white", {"op": "noise", "colour": "white"}),
        ("noise pink+brown", {"op": "noise", "colour": ["pink", "brown"]}),
        ("background_noise", {"op": "background_noise", "bank": noise}),
        ("babble (3..7 clips)", {"op": "babble", "bank": noise}),
        ("reverb (1 s RIRs)", {"op": "reverb", "bank": rirs}),
        ("speed 0.9/1.0/1.1", {"op": "speed"}),
        ("tempo 0.9/1.0/1.1", {"op": "tempo"}),
        ("distortion", {"op": "distortion"}),
        ("filter (random kind)", {"op": "filter"}),
        ("vtlp filterbanks", {"op": "vtlp"}),
        ("2F+2T masks", [{"op": "freq_mask", "max_width": 27, "count": 2},
                         {"op": "time_mask", "max_width": 20, "count": 2}]),
    ]
    for name, spec in single:
        ops = spec if isinstance(spec, list) else [spec]
        parts.append((name + " + log-mel", featurize(build_policy({"ops": ops}, banks=loader))))
    realistic_ops = [
        {"op": "speed", "factors": [0.9, 1.0, 1.1]},
        {"op": "reverb", "bank": rirs, "p": 0.5},
        {"op": "background_noise", "bank": noise, "snr_db": [0, 20], "p": 0.8},
        {"op": "noise", "colour": ["white", "pink", "brown"], "p": 0.3},
        {"op": "filter", "p": 0.3},
        {"op": "vtlp"},
        {"op": "freq_mask", "max_width": 27, "count": 2},
        {"op": "time_mask", "max_width": 20, "count": 2},
    ]
    # the same chain with every op off: what the draws, the VTLP banks (alpha = 1) and the
    # masks' output pass cost before any op does its work
    idle = build_policy({"ops": [dict(o, p=0.0) for o in realistic_ops]}, banks=loader)
    parts.append(("realistic policy, every op at p = 0", featurize(idle)))
    realistic = build_policy({"ops": realistic_ops}, banks=loader)
    # the same batch replaying the parameters the policy records: the whole stage without its draws
    recorded = realistic.featurize(wave, L, logmel, 16000, key_ids=ids, seed=0, epoch=0).params
    parts.append(("realistic policy, replaying its params", lambda: realistic.featurize(
        wave, L, logmel, 16000, key_ids=ids, seed=0, epoch=0, params=recorded)))
    parts.append(("realistic policy (whole stage)", featurize(realistic)))
    times = timed([fn for _, fn in parts], args.reps, device)
    base = times[0]
    print(f"{'part':40s} {'ms/batch':>9s} {'ms/audio-s':>10s} {'x realtime':>10s} {'op alone':>10s}")
    for (name, _), t in zip(parts, times):
        alone = "" if t is base or name.startswith("torchaudio") else f"{(t - base) / audio_s * 1e3:8.2f}ms"
        print(f"{name:40s} {t * 1e3:9.2f} {t / audio_s * 1e3:10.3f} {audio_s / t:10.0f} {alone:>10s}")
    print(f"  whole stage with the realistic policy / log-mel alone: {times[-1] / base:.1f}x "
          f"(every op at p = 0: {times[-3] / base:.1f}x)")
    print(f"  the parameter draws in the stage: {(times[-1] - times[-2]) * 1e3:.2f} ms per batch "
          f"(whole stage - the same stage replaying its recorded parameters)")
    print(f"  whole stage with the realistic policy / torchaudio's log-mel: {times[-1] / times[1]:.1f}x "
          f"(a denominator that does not move when our log-mel gets faster)")
    print("  ('op alone' = (op + log-mel) - log-mel, per audio-second; noisy on a shared machine)")
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        parts[0][1]()
    print(f"  page faults per log-mel call: {(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5:.0f} "
          f"(freed memory {'kept' if args.keep_freed_memory else 'returned to the OS'})")


def bench_calls(args) -> None:
    """A small call's cost right after a large torch operation (which pushes the
    interpreter's and torch's code out of the caches, as each op's pass over the batch does
    in the featurize stage) against the same call repeated back to back."""
    import numpy as np

    from specstream.functional import cpu_kernels

    if not cpu_kernels.available():
        print("calls: the numba kernels are off")
        return
    big = torch.randn(64, 40000)  # 10 MB, as a batch of waveforms
    t64, a64 = torch.ones(64), np.ones(64)
    prefix = np.arange(64, dtype=np.int64)
    calls = [("torch addition [64]", lambda: t64 + 1), ("numpy addition [64]", lambda: a64 + 1),
             ("numba kernel call (keyed draw [64, 2])", lambda: cpu_kernels.keyed_uniform_array(prefix, 3, 2))]
    print(f"\nsmall calls, median of {max(args.reps, 50) * 4} (us): after a pass over 10 MB by torch vs back to back")
    for name, fn in calls:
        res = []
        for before in (lambda: big.add_(1.0), lambda: None):
            ts = []
            for _ in range(max(args.reps, 50) * 4):
                before()
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            res.append(statistics.median(ts) * 1e6)
        print(f"  {name:40s} {res[0]:8.1f} after the pass {res[1]:8.1f} back to back ({res[0] / res[1]:.0f}x)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--peak-gbs", type=float, default=3350.0, help="GPU memory bandwidth (H100 SXM ~3350 GB/s)")
    p.add_argument("--part", choices=["masks", "warp", "stages", "kernels", "calls", "all"], default="all")
    p.add_argument("--corpus", help="reference corpus folder (its first shard feeds the stages part)")
    p.add_argument("--stage-batch", type=int, default=64)
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="keep freed heap memory in this process, as the pipeline's featurize processes do "
                        "(actors.retain_freed_memory); default: glibc's own trimming, as in earlier figures")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        from specstream.pipeline.stages import retain_freed_memory

        retain_freed_memory()
    if args.part == "stages":
        bench_stages(args, device)
        return 0
    if args.part == "kernels":
        bench_kernels(args)
        return 0
    if args.part == "calls":
        bench_calls(args)
        return 0
    B, Fq, T = args.batch, 80, args.frames
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, Fq, T, generator=g).to(device)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g).to(device)
    lengths[0] = T
    x = x * (torch.arange(T, device=device)[None, None, :] < lengths[:, None, None])  # 0 past each length, as
    # the featurizer delivers (the per-sample baselines and torchaudio do not care)
    ids = torch.from_numpy(key_ids([f"utt{i}" for i in range(B)])).to(device)
    print(f"batch [{B}, {Fq}, {T}] on {device}, lengths {int(lengths.min())}..{int(lengths.max())}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.reps}, freed memory "
          + ("kept (as the pipeline's featurize processes)" if args.keep_freed_memory else "returned to the OS (glibc default)"))

    if args.part in ("masks", "all"):
        # like with like: zero fill vs torchaudio's zero_masking, mean fill (our default: each
        # sample's own mean) vs torchaudio's mean fill (the mean of the whole batch)
        zero = Policy([FreqMask(max_width=27, count=2, fill="zero"), TimeMask(max_width=100, count=2, fill="zero")])
        mean = Policy([FreqMask(max_width=27, count=2), TimeMask(max_width=100, count=2)])
        ta0 = torchaudio.transforms.SpecAugment(n_time_masks=2, time_mask_param=100, n_freq_masks=2,
                                                freq_mask_param=27, iid_masks=True, zero_masking=True)
        tam = torchaudio.transforms.SpecAugment(n_time_masks=2, time_mask_param=100, n_freq_masks=2,
                                                freq_mask_param=27, iid_masks=True, zero_masking=False)
        t_zero, t_ta0, t_mean, t_tam, t_loop = timed(
            [lambda: zero(x, lengths, key_ids=ids, seed=0), lambda: ta0(x),
             lambda: mean(x, lengths, key_ids=ids, seed=0), lambda: tam(x),
             lambda: loop_masks(x, lengths)], args.reps, device)
        print(f"2F+2T masks, zero fill  ours {t_zero * 1e3:8.2f} ms | torchaudio SpecAugment {t_ta0 * 1e3:8.2f} ms | "
              f"per-sample loop {t_loop * 1e3:8.2f} ms")
        print(f"  ratio vs torchaudio SpecAugment(iid_masks=True, zero_masking=True): {t_ta0 / t_zero:.1f}x")
        print(f"  ratio vs per-sample loop:                        {t_loop / t_zero:.1f}x")
        print(f"2F+2T masks, mean fill  ours {t_mean * 1e3:8.2f} ms | torchaudio SpecAugment {t_tam * 1e3:8.2f} ms")
        print(f"  ratio vs torchaudio SpecAugment(iid_masks=True, zero_masking=False): {t_tam / t_mean:.1f}x")
        if device.type == "cuda":
            moved = 2 * x.numel() * x.element_size()  # one read + one write of the features
            print(f"  effective bandwidth (zero fill) {moved / t_zero / 1e9:.0f} GB/s = "
                  f"{100 * moved / t_zero / 1e9 / args.peak_gbs:.1f}% of {args.peak_gbs:.0f} GB/s")

    if args.part in ("warp", "all"):
        warp = Policy([TimeWarp(W=80)])

        def torch_path():
            with cpu_kernels.torch_path():
                return warp(x, lengths, key_ids=ids, seed=0)

        fused = device.type == "cpu" and cpu_kernels.available()
        fns = [lambda: warp(x, lengths, key_ids=ids, seed=0), lambda: loop_time_warp(x, lengths)]
        t_warp, t_warp_loop, *t_torch = timed(fns + ([torch_path] if fused else []), args.reps, device)
        print(f"time warp    ours {t_warp * 1e3:8.2f} ms | per-sample loop {t_warp_loop * 1e3:8.2f} ms"
              + (f" | ours on the torch path (no numba kernel) {t_torch[0] * 1e3:8.2f} ms" if fused else ""))
        print(f"  ratio vs per-sample loop: {t_warp_loop / t_warp:.1f}x"
              + (f" (torch path: {t_warp_loop / t_torch[0]:.1f}x)" if fused else ""))
    if args.part == "all":
        bench_stages(args, device)
    if args.part in ("kernels", "all") and device.type == "cpu":
        bench_kernels(args)
    return 0


def bench_kernels(args) -> None:
    """Each fused CPU kernel (numba) against the torch path it replaces (what the CPU runs
    without numba; CUDA too, but for the filters: FFT products there), on the same inputs in
    the same run, at the sizes the featurize stage hands them: 19 rows (p = 0.3 of a batch
    of 64) of 17,800 samples (1.1 s after speed), a batch of 64 for the rest."""
    from specstream.functional import dsp, frames, mel
    from specstream.functional import random as R

    if not cpu_kernels.available():
        print("\nkernels: numba is not available (or SPECSTREAM_NUMBA=0)")
        return
    g = torch.Generator().manual_seed(1)
    rows, n = 19, 17800
    wave = 0.1 * torch.randn(rows, n, generator=g)
    wl = torch.randint(14000, n + 1, (rows,), generator=g)
    wave = wave * (torch.arange(n)[None, :] < wl[:, None])
    b, a = dsp.biquad("lowpass", torch.linspace(2000, 7000, rows, dtype=torch.float64), 16000, 0.7071)
    pb, pa = (torch.tensor(c) for c in dsp.PINK)
    ids = torch.from_numpy(key_ids([f"utt{i}" for i in range(64)]))
    prefix = R.keyed_prefix(0, 3, ids)
    B, T = 64, 1000
    starts, widths = torch.randint(0, 900, (B, 2), generator=g), torch.randint(0, 100, (B, 2), generator=g)
    on = torch.ones(B, 2, dtype=torch.bool)
    alpha = 0.9 + 0.2 * torch.rand(64, generator=g, dtype=torch.float64)
    # the masks as the masks part draws them: 2 bands of <= 27 bins, 2 of <= 100 frames
    feats = torch.randn(B, 80, T, generator=g)
    fl = torch.randint(T // 2, T + 1, (B,), generator=g)
    fu = frames.bands(torch.randint(0, 53, (B, 2), generator=g), torch.randint(0, 28, (B, 2), generator=g), on, 80)
    tu = frames.bands(starts, widths, on, T) & (torch.arange(T)[None, :] < fl[:, None])
    from specstream.augment.core import Batch
    from specstream.augment.spec.masks import apply_masks
    from specstream.features import LogMel, MelConfig

    # the log-mel's power, mel sums and padding, after speed: 64 rows of 14,400-17,600 samples
    logmel = LogMel(MelConfig())
    ml = torch.randint(14400, 17601, (B,), generator=g)
    mwave = 0.1 * torch.randn(B, 17600, generator=g) * (torch.arange(17600)[None, :] < ml[:, None])
    vtlp_banks = mel.mel_fbanks(16000, 400, 80, alpha=alpha)
    vtlp_pairs = mel.mel_fbanks(16000, 400, 80, alpha=alpha, pairs=True)  # what the featurizer hands the log-mel
    # mixing as the noise ops hand it: 50 rows (p = 0.8 of 64), recorded noise as two
    # segments of a 4 s bank; reverb's level on the convolution's own (strided) rows
    mixed = 0.1 * torch.randn(50, n, generator=g)
    ml50 = torch.randint(14000, n + 1, (50,), generator=g)
    mixed = mixed * (torch.arange(n)[None, :] < ml50[:, None])
    noise = torch.randn(50, n, generator=g)
    snr = 20 * torch.rand(50, generator=g)
    bank = torch.randn(64000 + n, generator=g)
    seg_starts = torch.randint(0, 64000, (50, 2), generator=g)
    seg_count = torch.randint(1, 3, (50,), generator=g)
    wide = torch.randn(50, 2 * n, generator=g)
    # speed as the stage runs it: 21 rows at 0.9 and 21 at 1.1 of a batch of 64 resampled,
    # the other 22 copied, all written into the output batch (one call since 3a41460)
    from specstream.functional.timescale import resample_groups_into
    sp_wave = 0.1 * torch.randn(B, 16000, generator=g)
    sp_len = torch.full((B,), 16000)
    sp_out = torch.empty(B, 17778)
    slow, fast, kept = torch.arange(0, 63, 3), torch.arange(1, 64, 3), torch.arange(2, 64, 3)

    def speed_rows():
        resample_groups_into(sp_wave, sp_len, [(slow, 9, 10), (fast, 11, 10), (kept, 1, 1)], sp_out)

    cases = [
        (f"filtfilt, biquad [{rows}, {n}]", lambda: dsp.filtfilt(wave, wl, b, a)),
        (f"lfilter, pink noise [{rows}, {n}]", lambda: dsp.lfilter(wave, pb, pa)),
        (f"noise-field hash [{rows}, {n}]", lambda: R.stream_uniform(ids[:rows], n)),
        ("parameter draw [64, 2]", lambda: R.uniform(0, 3, ids, 5, 2, prefix=prefix)),
        ("hash prefix [64]", lambda: R.keyed_prefix(0, 3, ids)),
        (f"mask bands [{B}, {T}]", lambda: frames.bands(starts, widths, on, T)),
        ("VTLP filterbanks [64, 80, 201]", lambda: mel.mel_fbanks(16000, 400, 80, alpha=alpha)),
        ("VTLP filter pairs [64, 201]", lambda: mel.mel_fbanks(16000, 400, 80, alpha=alpha, pairs=True)),
        (f"masks, zero fill [{B}, 80, {T}]", lambda: apply_masks(Batch(feats, fl), [(fu, tu, None)], "zero")),
        (f"masks, mean fill [{B}, 80, {T}]", lambda: apply_masks(Batch(feats, fl), [(fu, tu, None)], "mean")),
        (f"log-mel, one bank [{B}, 17600]", lambda: logmel(mwave, ml)),
        (f"log-mel, VTLP banks [{B}, 17600]", lambda: logmel(mwave, ml, fbanks=vtlp_banks)),
        (f"log-mel, VTLP pairs [{B}, 17600]", lambda: logmel(mwave, ml, fbanks=vtlp_pairs)),
        (f"centre padding [{B}, 17600]", lambda: logmel._center_pad(mwave, ml)),
        (f"gaussian noise [{rows}, {n}]", lambda: dsp.gaussian_stream(ids[:rows], n)),
        (f"mix at SNR [50, {n}]", lambda: dsp.mix_at_snr(mixed, noise, ml50, snr)),
        (f"recorded noise, 1-2 segments [50, {n}]",
         lambda: dsp.mix_segments_at_snr(mixed, ml50, bank, seg_starts, seg_count, snr)),
        (f"reverb level, strided rows [50, {n}]", lambda: dsp.match_power(wide[:, 40:40 + n], mixed, ml50)),
        ("speed, 42 of 64 rows resampled, 22 copied [64, 16000]", speed_rows),
    ]

    def torch_path(fn):
        def run():
            with cpu_kernels.torch_path():
                return fn()
        return run

    fns = [f for _, fn in cases for f in (fn, torch_path(fn))]
    times = timed(fns, args.reps, torch.device("cpu"))
    print(f"\nCPU kernels (numba) against the torch path they replace, {torch.get_num_threads()} threads, "
          f"median of {args.reps}:")
    print(f"{'operation':38s} {'kernel':>10s} {'torch path':>11s} {'ratio':>7s}")
    for i, (name, _) in enumerate(cases):
        k, t = times[2 * i], times[2 * i + 1]
        unit, scale = ("us", 1e6) if t < 1e-3 else ("ms", 1e3)
        print(f"{name:38s} {k * scale:8.2f}{unit} {t * scale:9.2f}{unit} {t / k:6.1f}x")


if __name__ == "__main__":
    sys.exit(main())
