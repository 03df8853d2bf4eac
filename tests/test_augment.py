"""Augmentation ops: bounds, lengths, padding, keyed reproducibility, replay, mixing maths."""
import math

import pytest
import torch

from specstream.augment import (SPECAUGMENT, CutOut, FeatureNoise, FrameDropDup, FreqMask, FreqShift,
                                FreqWarp, Gain, Mixup, Overlay, Policy, TimeMask, TimeStretch, TimeWarp,
                                build_policy, preset, tta_aggregate, tta_views)
from specstream.augment.core import Batch, zero_padding

SENTINEL = -1000.0


def batch(B=6, F=40, T=200, lengths=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, F, T, generator=g)
    L = torch.tensor(lengths if lengths is not None else [T - 17 * i for i in range(B)])
    return zero_padding(x, L), L, [f"utt{i}" for i in range(B)]


def runs(mask_1d):
    """Contiguous True runs of a 1-D bool tensor as (start, width)."""
    out, start = [], None
    for i, v in enumerate(mask_1d.tolist() + [False]):
        if v and start is None:
            start = i
        if not v and start is not None:
            out.append((start, i - start))
            start = None
    return out


def test_freq_mask_bounds_and_no_padding_writes():
    x, L, keys = batch()
    out = Policy([FreqMask(max_width=7, count=3, fill=SENTINEL)])(x, L, keys=keys, seed=1)
    masked = out.features == SENTINEL
    for b in range(x.shape[0]):
        assert not masked[b, :, L[b]:].any()  # never into padding
        rows = masked[b, :, : L[b]]
        # a masked bin is masked over every valid frame
        assert torch.equal(rows.any(1), rows.all(1))
        bands = runs(rows.any(1))
        assert sum(w for _, w in bands) <= 3 * 7 and all(w <= 3 * 7 for _, w in bands)
        assert len(bands) <= 3
    assert torch.equal(out.features[~masked], x[~masked])


@pytest.mark.parametrize("op,limit", [
    (TimeMask(max_width=40, count=2, max_fraction=0.2, fill=SENTINEL), lambda L: min(40, math.floor(0.2 * L))),
    (TimeMask(width_fraction=0.05, count_fraction=0.04, max_count=20, fill=SENTINEL),
     lambda L: math.floor(0.05 * L)),
])
def test_time_masks_stay_inside_each_sample(op, limit):
    x, L, keys = batch(B=8, T=400, lengths=[400, 333, 250, 101, 64, 20, 5, 1])
    out = Policy([op])(x, L, keys=keys, seed=2)
    p = out.params[0]
    masked = out.features == SENTINEL
    for b in range(8):
        Lb = int(L[b])
        cols = masked[b].any(0)
        assert not cols[Lb:].any()
        assert torch.equal(masked[b][:, cols], torch.ones_like(masked[b][:, cols]))
        n = int(p["counts"][b])
        expected_n = min(20, math.floor(0.04 * Lb)) if op.count_fraction else 2
        assert n == expected_n
        widths = p["widths"][b, :n]
        starts = p["starts"][b, :n]
        assert (widths <= limit(Lb)).all() and (starts + widths <= Lb).all()
        assert cols.sum() <= widths.sum()


def test_mean_fill_is_the_samples_own_mean():
    x, L, keys = batch(B=3)
    out = Policy([TimeMask(max_width=30, count=1, fill="mean")])(x, L, keys=keys, seed=0)
    for b in range(3):
        mean = x[b, :, : L[b]].mean()
        s, w = int(out.params[0]["starts"][b, 0]), int(out.params[0]["widths"][b, 0])
        if w:
            assert torch.allclose(out.features[b, :, s:s + w], mean.expand(x.shape[1], w), atol=1e-5)


def test_same_key_same_output_in_differently_composed_batches():
    policy = build_policy({"preset": "LD", "ops": [{"op": "cutout", "count": 2}, {"op": "freq_shift"},
                                                   {"op": "gain"}, {"op": "freq_warp"},
                                                   {"op": "feature_noise"}]})
    g = torch.Generator().manual_seed(5)
    feats = {k: torch.randn(40, n, generator=g) for k, n in [("a", 180), ("b", 90), ("c", 150), ("d", 60)]}

    def run(keys, T):
        x = torch.zeros(len(keys), 40, T)
        for i, k in enumerate(keys):
            x[i, :, : feats[k].shape[1]] = feats[k]
        L = torch.tensor([feats[k].shape[1] for k in keys])
        out = policy(x, L, keys=keys, seed=11, epoch=3)
        return {k: out.features[i, :, : feats[k].shape[1]] for i, k in enumerate(keys)}, out, L

    one, out1, L1 = run(["a", "b", "c"], 180)
    two, out2, _ = run(["c", "d", "a"], 240)  # other neighbours, other order, more padding
    for k in ("a", "c"):
        torch.testing.assert_close(one[k], two[k], rtol=0, atol=1e-5)
    assert (out2.features[2, :, 180:] == 0).all()
    other_epoch = policy(torch.stack([torch.nn.functional.pad(feats["a"], (0, 0))]), torch.tensor([180]),
                         keys=["a"], seed=11, epoch=4)
    assert not torch.allclose(other_epoch.features[0], one["a"])


def test_replay_reproduces_everything_exactly():
    spec = {"ops": [{"op": name} for name in ("time_warp", "freq_mask", "time_mask", "cutout", "freq_shift",
                                              "freq_warp", "time_stretch", "frame_drop_dup", "gain",
                                              "random_eq", "band_limit", "feature_noise", "mixup", "overlay")]}
    policy = build_policy(spec, num_classes=5)
    x, L, keys = batch(B=5, T=300)
    y = torch.tensor([0, 1, 2, 3, 4])
    ft = torch.arange(300).repeat(5, 1)
    out = policy(x, L, keys=keys, targets=y, frame_targets=ft, seed=9)
    again = policy.apply(x, L, params=out.params, targets=y, frame_targets=ft)
    assert torch.equal(out.features, again.features) and torch.equal(out.lengths, again.lengths)
    assert torch.equal(out.targets, again.targets) and torch.equal(out.frame_targets, again.frame_targets)
    logged = out.params_for(2, max_values=64)
    assert set(logged) == {f"{i}:{o['op']}" for i, o in enumerate(spec["ops"])}
    assert "field" not in logged["11:feature_noise"] and "level" in logged["11:feature_noise"]


def test_time_warp_is_batched_keeps_ends_and_never_reads_padding():
    x, L, keys = batch(B=6, T=300, lengths=[300, 280, 200, 90, 9, 2])
    poisoned = x.clone()
    for b in range(6):
        poisoned[b, :, L[b]:] = 1e6
    op = TimeWarp(W=40)
    out = Policy([op])(poisoned, L, keys=keys, seed=4)
    for b in range(6):
        Lb = int(L[b])
        valid = out.features[b, :, :Lb]
        assert valid.abs().max() < 1e3 and (out.features[b, :, Lb:] == 0).all()
        assert torch.allclose(valid[:, 0], x[b, :, 0]) and torch.allclose(valid[:, Lb - 1], x[b, :, Lb - 1])
        # batched result equals the op applied to the sample alone
        alone = Policy([op])(x[b:b + 1, :, :Lb], L[b:b + 1], keys=[keys[b]], seed=4)
        torch.testing.assert_close(alone.features[0], valid, rtol=0, atol=1e-5)
    assert torch.equal(out.lengths, L)
    assert (out.params[0]["shift"].abs() <= 40).all()
    assert out.params[0]["shift"][5] == 0  # too short to warp


def test_time_stretch_lengths_and_frame_targets():
    x, L, keys = batch(B=4, T=200, lengths=[200, 150, 100, 7])
    ft = torch.arange(200, dtype=torch.float32).repeat(4, 1)
    op = TimeStretch(rates=(0.5, 2.0))
    out = Policy([op])(x, L, keys=keys, frame_targets=ft, seed=8)
    rate = out.params[0]["rate"]
    assert ((rate >= 0.5) & (rate <= 2.0)).all()
    assert torch.equal(out.lengths, torch.round(L / rate).long())
    for b in range(4):
        n, Lb = int(out.lengths[b]), int(L[b])
        src = torch.arange(n) * (Lb - 1) / max(n - 1, 1)
        assert torch.equal(out.frame_targets[b, :n], src.round())
        assert (out.features[b, :, n:] == 0).all()


def test_frame_drop_dup_is_a_monotone_resampling():
    x, L, keys = batch(B=5, T=120, lengths=[120, 100, 60, 30, 1])
    ft = torch.arange(120).repeat(5, 1)
    out = Policy([FrameDropDup(drop=0.2, dup=0.2)])(x, L, keys=keys, frame_targets=ft, seed=3)
    counts = out.params[0]["counts"].long()
    for b in range(5):
        Lb, n = int(L[b]), int(out.lengths[b])
        expected = int(counts[b, :Lb].sum()) or 1
        assert n == expected
        src = out.frame_targets[b, :n]
        assert (src[1:] >= src[:-1]).all() and (src < Lb).all()
        assert torch.equal(out.features[b, :, :n], x[b][:, src])
        assert (out.features[b, :, n:] == 0).all()


def test_mixup_soft_targets_and_lambda_by_key():
    C = 4
    x, L, keys = batch(B=5, T=100, lengths=[100, 80, 100, 60, 90])
    y = torch.tensor([0, 1, 2, 3, 1])
    op = Mixup(alpha=0.4, num_classes=C, p=1.0)
    out = Policy([op])(x, L, keys=keys, targets=y, seed=1)
    lam, j = out.params[0]["lam"], out.params[0]["partner"]
    assert ((lam > 0) & (lam < 1)).all()
    assert (j != torch.arange(5)).all()  # odd batch: never its own partner
    onehot = torch.nn.functional.one_hot(y, C).float()
    expect = lam[:, None] * onehot + (1 - lam[:, None]) * onehot[j]
    torch.testing.assert_close(out.targets, expect)
    torch.testing.assert_close(out.targets.sum(1), torch.ones(5))
    for b in range(5):
        both = int(min(L[b], L[j[b]]))
        torch.testing.assert_close(out.features[b, :, :both], lam[b] * x[b, :, :both] + (1 - lam[b]) * x[j[b], :, :both])
        torch.testing.assert_close(out.features[b, :, both:L[b]], x[b, :, both:L[b]])  # partner's padding unread
    # lambda depends on the key only; the partner depends on the batch
    sub = Policy([op])(x[[3, 1]], L[[3, 1]], keys=[keys[3], keys[1]], targets=y[[3, 1]], seed=1)
    torch.testing.assert_close(sub.params[0]["lam"], lam[[3, 1]])
    single = Policy([Mixup(alpha=1.0, num_classes=C, smoothing=0.1)])(x[:1], L[:1], keys=keys[:1], targets=y[:1])
    torch.testing.assert_close(single.targets, onehot[:1] * 0.9 + 0.1 / C)
    torch.testing.assert_close(single.features, x[:1])


def test_mixup_lambda_follows_beta():
    torch.manual_seed(0)
    ids = torch.arange(20000)
    from specstream.augment.core import Context
    from specstream.augment.ops import _gamma

    for alpha in (0.2, 1.0, 2.0):
        ctx = Context(ids, 0, 0, 0)
        g1, g2 = _gamma(ctx, torch.full((20000,), alpha)), _gamma(ctx, torch.full((20000,), alpha))
        lam = g1 / (g1 + g2)
        mean, var = lam.mean().item(), lam.var().item()
        assert abs(mean - 0.5) < 0.01
        assert abs(var - 1 / (4 * (2 * alpha + 1))) < 0.01  # Beta(a, a) variance


def test_multi_label_mixup_and_overlay_union():
    x, L, keys = batch(B=4, T=50, lengths=[50] * 4)
    y = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=torch.float32)
    mix = Policy([Mixup(alpha=0.5)])(x, L, keys=keys, targets=y)
    lam, j = mix.params[0]["lam"], mix.params[0]["partner"]
    torch.testing.assert_close(mix.targets, lam[:, None] * y + (1 - lam[:, None]) * y[j])
    ov = Policy([Overlay(multi_label=True)])(x, L, keys=keys, targets=y)
    j = ov.params[0]["partner"]
    assert torch.equal(ov.targets, torch.maximum(y, y[j]))


def test_overlay_reaches_the_drawn_snr():
    x, L, keys = batch(B=5, T=120, lengths=[120, 100, 120, 70, 110])
    op = Overlay(snr_db=(-5, 15), log_offset=1e-6)
    out = Policy([op])(x, L, keys=keys, seed=6)
    snr, j = out.params[0]["snr_db"], out.params[0]["partner"]
    p_own = torch.exp(x.double()) - 1e-6
    p_mix = torch.exp(out.features.double()) - 1e-6
    for b in range(5):
        both = int(min(L[b], L[j[b]]))
        own = p_own[b, :, :both].sum()
        added = (p_mix[b, :, :both] - p_own[b, :, :both]).sum()
        measured = 10 * torch.log10(own / added)
        assert abs(measured.item() - snr[b].item()) < 0.01
        assert torch.allclose(out.features[b, :, both:L[b]], x[b, :, both:L[b]])


def test_frequency_ops():
    x, L, keys = batch(B=3, F=32, T=40, lengths=[40, 30, 20])
    roll = Policy([FreqShift(max_shift=5, cyclic=True)])(x, L, keys=keys)
    for b in range(3):
        k = int(roll.params[0]["shift"][b])
        assert torch.equal(roll.features[b], torch.roll(x[b], k, dims=0))
    ident = FreqWarp().apply(Batch(x, L), {"alpha": torch.ones(3), "active": torch.ones(3, dtype=torch.bool)})
    torch.testing.assert_close(ident.features, x)
    warped = Policy([FreqWarp(alpha=(0.85, 0.9))])(x, L, keys=keys)
    torch.testing.assert_close(warped.features[:, 0], x[:, 0])  # the lowest bin stays
    torch.testing.assert_close(warped.features[:, -1], x[:, -1])  # so does the top bin
    gain = Policy([Gain(min_db=3, max_db=3)])(x, L, keys=keys)
    valid = zero_padding(torch.ones_like(x), L).bool()
    torch.testing.assert_close(gain.features[valid], x[valid] + 3 * math.log(10) / 10)


def test_feature_noise_statistics_and_padding():
    x = torch.zeros(4, 64, 400)
    L = torch.tensor([400, 300, 200, 100])
    out = Policy([FeatureNoise(std=(0.5, 0.5))])(x, L, keys=list("abcd"))
    for b in range(4):
        v = out.features[b, :, : L[b]]
        assert abs(v.std().item() - 0.5) < 0.02 and abs(v.mean().item()) < 0.02
        assert (out.features[b, :, L[b]:] == 0).all()
    pink = Policy([FeatureNoise(colour=1.0, snr_db=(10, 10))])(x, L, keys=list("abcd"))
    assert (pink.features[:, :, :100] > x[:, :, :100]).all()  # power was added
    low, high = pink.features[0, :8, :400].mean(), pink.features[0, -8:, :400].mean()
    assert low > high  # pink: more power in low bins


def test_cutout_rectangles_inside_samples():
    x, L, keys = batch(B=4, T=100, lengths=[100, 50, 20, 3])
    out = Policy([CutOut(count=2, max_freq=10, max_time=30, fill=SENTINEL)])(x, L, keys=keys, seed=2)
    m = out.features == SENTINEL
    for b in range(4):
        assert not m[b, :, L[b]:].any()
        assert m[b].any(0).sum() <= 60 and m[b].any(1).sum() <= 20


def test_presets_match_the_paper():
    assert SPECAUGMENT["LB"] == dict(W=80, F=27, mF=1, T=100, p=1.0, mT=1)
    assert SPECAUGMENT["LD"] == dict(W=80, F=27, mF=2, T=100, p=1.0, mT=2)
    assert SPECAUGMENT["SM"] == dict(W=40, F=15, mF=2, T=70, p=0.2, mT=2)
    assert SPECAUGMENT["SS"] == dict(W=40, F=27, mF=2, T=70, p=0.2, mT=2)
    for name, t in SPECAUGMENT.items():
        w, f, tm = preset(name).ops
        assert (w.W, f.max_width, f.count, tm.max_width, tm.max_fraction, tm.count) == \
            (t["W"], t["F"], t["mF"], t["T"], t["p"], t["mT"])
    f, tm = preset("adaptive").ops
    assert (f.max_width, f.count, tm.width_fraction, tm.count_fraction, tm.max_count) == (27, 2, 0.05, 0.04, 20)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("XX")
    with pytest.raises(ValueError, match="unknown op"):
        build_policy({"ops": [{"op": "nope"}]})


def test_test_time_augmentation():
    x, L, keys = batch(B=3, T=80, lengths=[80, 60, 40])
    views = tta_views(preset("LD"), x, L, views=4, keys=keys, seed=0)
    assert len(views) == 4 and not torch.equal(views[0].features, views[1].features)
    again = tta_views(preset("LD"), x, L, views=4, keys=keys, seed=0)
    assert all(torch.equal(a.features, b.features) for a, b in zip(views, again))
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]], [[3.0, 0.0]]])  # 3 views, 1 sample
    torch.testing.assert_close(tta_aggregate(logits, "mean"), logits.softmax(-1).mean(0))
    torch.testing.assert_close(tta_aggregate(logits, "vote"), torch.tensor([[2 / 3, 1 / 3]]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU box)")
def test_cpu_cuda_parity():
    policy = build_policy({"preset": "LD", "ops": [{"op": "frame_drop_dup"}, {"op": "mixup"}]}, num_classes=3)
    x, L, keys = batch(B=6, T=300)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    cpu = policy(x, L, keys=keys, targets=y, seed=5)
    gpu = policy(x.cuda(), L.cuda(), keys=keys, targets=y.cuda(), seed=5)
    for a, b in zip(cpu.params, gpu.params):
        for k in a:
            if isinstance(a[k], torch.Tensor) and not a[k].dtype.is_floating_point:
                assert torch.equal(a[k], b[k].cpu()), k
    torch.testing.assert_close(gpu.features.cpu(), cpu.features, rtol=1e-4, atol=1e-4)
    assert torch.equal(gpu.lengths.cpu(), cpu.lengths)


def test_fused_masks_equal_one_op_at_a_time():
    x, L, keys = batch(B=6, T=150)
    policy = Policy([FreqMask(max_width=10, count=2), TimeMask(max_width=30, count=3),
                     CutOut(count=2, fill=0.0), TimeMask(max_width=20, count=1, fill=-5.0),
                     FreqMask(max_width=5, count=1, fill="mean")])
    out = policy(x, L, keys=keys, seed=7)
    from specstream.augment.core import Batch as B_

    b = B_(x, L)
    for op, p in zip(policy.ops, out.params):
        b = op.apply(b, {k: v for k, v in p.items() if k != "__name__"})
    assert torch.equal(out.features, b.features)


def test_zero_fill_keeps_padding_zero_and_matches_masked_write():
    x, L, keys = batch(B=5, T=120, lengths=[120, 90, 60, 30, 2])
    zero = Policy([FreqMask(max_width=9, count=2), TimeMask(max_width=25, count=2),
                   CutOut(count=1)])(x, L, keys=keys, seed=3)
    sentinel = Policy([FreqMask(max_width=9, count=2, fill=SENTINEL), TimeMask(max_width=25, count=2, fill=SENTINEL),
                       CutOut(count=1, fill=SENTINEL)])(x, L, keys=keys, seed=3)
    masked = sentinel.features == SENTINEL
    assert masked.any()
    assert torch.equal(zero.features, torch.where(masked, torch.zeros_like(x), x))
    for b in range(5):
        assert (zero.features[b, :, L[b]:] == 0).all()


def test_time_warp_moves_frame_targets_with_the_features():
    x, L, keys = batch(B=4, T=200, lengths=[200, 160, 120, 80])
    ft = torch.arange(200).repeat(4, 1)
    op = TimeWarp(W=30)
    out = Policy([op])(x, L, keys=keys, frame_targets=ft, seed=12)
    src = op.source(L, out.params[0], 200)
    assert torch.equal(out.frame_targets, src.round().long())
    moved = (out.frame_targets[:, :80] != torch.arange(80)).any(1)
    assert moved.sum() >= 3  # most samples really warped
    for b in range(4):  # monotone, inside the sample, ends fixed
        f = out.frame_targets[b, : L[b]]
        assert (f[1:] >= f[:-1]).all() and f[0] == 0 and f[-1] == L[b] - 1


def _fmix_py(h):
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def test_hash32_matches_plain_integer_murmur_mixing_on_broadcast_shapes():
    """The in-place tensor hash equals the same mixing done with Python integers."""
    from specstream.augment.random import hash32

    ids = [3, 2**40 + 17, 2**62 + 5]
    words = [7, torch.tensor(ids)[:, None] >> 32, torch.arange(5)[None, :]]
    got = hash32(words)
    assert got.shape == (3, 5)
    for b, i in enumerate(ids):
        for t in range(5):
            h = _fmix_py(7 ^ 0x9E3779B9)
            for w in ((i >> 32) & 0xFFFFFFFF, t):
                h = _fmix_py(((((h ^ w) * 0x27D4EB2F) & 0xFFFFFFFF) ^ (h >> 15)))
            assert int(got[b, t]) == h
