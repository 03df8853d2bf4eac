"""Augmentation ops: bounds, lengths, padding, keyed reproducibility, replay, mixing maths."""
import contextlib
import math
import os

import numpy as np
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


def _draws(op, n_keys=2000, F=40, T=200, lengths=None, seed=0):
    """The recorded parameters of ``op`` over ``n_keys`` keys (tiny features: only the draws)."""
    L = torch.full((n_keys,), T) if lengths is None else torch.as_tensor(lengths)
    x = torch.zeros(len(L), F, T)
    p = Policy([op])(x, L, keys=[f"key{i}" for i in range(len(L))], seed=seed).params[0]
    return {k: v for k, v in p.items() if k != "__name__"}


def expected_bands(starts, widths, on, size, upto=None):
    """numpy: [B, size] bool, True in [start, start + width) of every mask slot that is on
    (and below ``upto[b]`` when given)."""
    s, w, on = np.asarray(starts), np.asarray(widths), np.asarray(on)
    out = np.zeros((s.shape[0], size), dtype=bool)
    for b in range(s.shape[0]):
        for m in range(s.shape[1]):
            if on[b, m]:
                out[b, s[b, m]: s[b, m] + w[b, m]] = True
        if upto is not None:
            assert not out[b, int(upto[b]):].any()  # a mask inside the sample's own frames
    return out


def test_freq_mask_bounds_and_no_padding_writes():
    x, L, keys = batch()
    out = Policy([FreqMask(max_width=7, count=3, fill=SENTINEL)])(x, L, keys=keys, seed=1)
    p = out.params[0]
    masked = (out.features == SENTINEL).numpy()
    bands_ = expected_bands(p["starts"], p["widths"], np.ones(p["starts"].shape, bool), x.shape[1])
    valid = np.arange(x.shape[-1])[None, :] < L.numpy()[:, None]
    expected = bands_[:, :, None] & valid[:, None, :]  # the drawn bands, over each sample's own frames
    assert np.array_equal(masked, expected)
    assert expected.any(axis=(1, 2)).sum() >= 4  # not a vacuous pass: most samples masked something
    assert torch.equal(out.features[~torch.from_numpy(masked)], x[~torch.from_numpy(masked)])
    # the draws cover the whole range: every width 0..max_width, starts at both ends
    p = _draws(FreqMask(max_width=7, count=2), F=40)
    s, w = p["starts"].numpy(), p["widths"].numpy()
    assert set(w.ravel().tolist()) == set(range(8))
    assert s.min() == 0 and (s + w).max() == 40 and (s + w).min() >= 0 and (s + w <= 40).all()
    assert (s + w == 40)[w == 7].any() and (s == 0)[w == 7].any()  # the widest masks reach both ends too


@pytest.mark.parametrize("op,limit", [
    (TimeMask(max_width=40, count=2, max_fraction=0.2, fill=SENTINEL), lambda L: min(40, math.floor(0.2 * L))),
    (TimeMask(width_fraction=0.05, count_fraction=0.04, max_count=20, fill=SENTINEL),
     lambda L: math.floor(0.05 * L)),
])
def test_time_masks_stay_inside_each_sample(op, limit):
    x, L, keys = batch(B=8, T=400, lengths=[400, 333, 250, 101, 64, 20, 5, 1])
    out = Policy([op])(x, L, keys=keys, seed=2)
    p = out.params[0]
    masked = (out.features == SENTINEL).numpy()
    counts = p["counts"].numpy()
    for b in range(8):
        expected_n = min(20, math.floor(0.04 * int(L[b]))) if op.count_fraction else 2
        assert counts[b] == expected_n
    on = np.arange(p["starts"].shape[1])[None, :] < counts[:, None]
    cols = expected_bands(p["starts"], p["widths"], on, x.shape[-1], upto=L.numpy())
    assert np.array_equal(masked, np.broadcast_to(cols[:, None, :], masked.shape))  # every bin of a masked frame
    assert cols.any(1).sum() >= 4  # not a vacuous pass
    for b in range(8):
        n = counts[b]
        assert (p["widths"][b, :n] <= limit(int(L[b]))).all()
    assert torch.equal(out.features[~torch.from_numpy(masked)], x[~torch.from_numpy(masked)])
    # over many keys the widths take every value 0..limit and the starts reach both ends
    Lb = 400
    d = _draws(TimeMask(max_width=op.max_width, count=op.count, max_fraction=op.max_fraction,
                        width_fraction=op.width_fraction, count_fraction=op.count_fraction,
                        max_count=op.max_count), n_keys=2000, F=4, T=Lb)
    n = int(d["counts"][0])
    s, w = d["starts"][:, :n].numpy(), d["widths"][:, :n].numpy()
    assert set(w.ravel().tolist()) == set(range(limit(Lb) + 1))
    assert s.min() == 0 and (s + w).max() == Lb and (s + w <= Lb).all()


def test_mean_fill_is_the_samples_own_mean():
    x, L, keys = batch(B=6, T=200)
    x = x + torch.arange(6, dtype=torch.float32)[:, None, None] * zero_padding(torch.ones_like(x), L)  # own means
    for op, axis in ((TimeMask(max_width=30, count=2, fill="mean"), "time"),
                     (FreqMask(max_width=10, count=2, fill="mean"), "freq")):
        out = Policy([op])(x, L, keys=keys, seed=0)
        p = out.params[0]
        n = p.get("counts", torch.full((6,), 2))
        on = np.arange(2)[None, :] < n.numpy()[:, None]
        size = x.shape[-1] if axis == "time" else x.shape[1]
        bands_ = expected_bands(p["starts"], p["widths"], on, size)
        assert bands_.any(1).sum() >= 4  # most samples really masked something
        xn = x.double().numpy()
        for b in range(6):
            Lb = int(L[b])
            mean = xn[b, :, :Lb].mean()  # the sample's own valid region, before masking
            got = out.features[b, :, :Lb].double().numpy()
            m = np.zeros((x.shape[1], Lb), bool)
            if axis == "time":
                m[:, bands_[b, :Lb]] = True
            else:
                m[bands_[b], :] = True
            np.testing.assert_allclose(got[m], mean, atol=1e-5)
            assert np.array_equal(got[~m], xn[b, :, :Lb][~m])
            assert (out.features[b, :, Lb:] == 0).all()


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
    assert out.params_rows(max_values=64)[2] == logged and out.params_rows()[2] == out.params_for(2)
    assert set(logged) == {f"{i}:{o['op']}" for i, o in enumerate(spec["ops"])}
    assert "field" not in logged["11:feature_noise"] and "level" in logged["11:feature_noise"]

def test_replay_matches_an_independent_numpy_computation():
    """Replaying recorded parameters gives what those parameters say, computed with numpy
    (time warp, zero-fill frequency masks, constant-fill time masks, cyclic frequency shift,
    gain), not merely what the drawing call gave (the two share one code path)."""
    ops = [TimeWarp(W=20), FreqMask(max_width=8, count=2, fill="zero"),
           TimeMask(max_width=15, count=2, fill=-2.0), FreqShift(max_shift=4, cyclic=True), Gain()]
    policy = Policy(ops)
    x, L, keys = batch(B=5, T=150, lengths=[150, 130, 100, 70, 40])
    out = policy(x, L, keys=keys, seed=21)
    again = policy.apply(x, L, params=out.params)
    assert torch.equal(again.features, out.features)
    tw, fm, tm, fs, g = [{k: v.numpy() for k, v in p.items() if k != "__name__"} for p in out.params]
    ref = np.zeros(x.shape)
    for b in range(5):
        Lb = int(L[b])
        xb = x[b, :, :Lb].double().numpy()
        src = _time_warp_source(int(tw["centre"][b]), int(tw["shift"][b]), Lb, Lb)
        y = np.stack([np.interp(src, np.arange(Lb), row) for row in xb])
        for s, w in zip(fm["starts"][b], fm["widths"][b]):
            y[s:s + w, :] = 0.0
        for m in range(int(tm["counts"][b])):
            s, w = tm["starts"][b, m], tm["widths"][b, m]
            y[:, s:s + w] = -2.0
        y = np.roll(y, int(fs["shift"][b]), axis=0)
        y = y + float(g["db"][b]) * math.log(10) / 10  # dB of the signal on ln(|X|**2) features
        ref[b, :, :Lb] = y
    np.testing.assert_allclose(again.features.numpy(), ref, atol=1e-4)
    assert not np.allclose(ref, x.numpy())  # and the parameters did something


def test_random_eq_is_the_db_curve_in_feature_units():
    from specstream.augment import RandomEQ
    from specstream.augment.core import FeatureDomain

    x, L, keys = batch(B=6, F=64, T=50, lengths=[50, 40, 30, 20, 10, 5])
    max_db, K = 8.0, 4
    for dom, per_db in ((FeatureDomain(), math.log(10) / 10),  # ln(|X|**2): 1 dB = ln(10) / 10
                        (FeatureDomain(power=1.0, log="db"), 0.5)):  # 10 log10 |X|: 1 dB = 0.5
        out = Policy([RandomEQ(max_db=max_db, bands=K)], domain=dom)(x, L, keys=keys, seed=4)
        amp, phase = out.params[0]["amp_db"].double().numpy(), out.params[0]["phase"].double().numpy()
        nu = np.linspace(0, 1, 64)
        k = np.arange(1, K + 1)[:, None]
        for b in range(6):
            Lb = int(L[b])
            curve = (amp[b][:, None] * np.cos(np.pi * k * nu[None, :] + phase[b][:, None])).sum(0)  # dB
            change = (out.features[b, :, :Lb] - x[b, :, :Lb]).double().numpy()
            np.testing.assert_allclose(change, np.broadcast_to((curve * per_db)[:, None], change.shape), atol=1e-4)
            assert np.abs(curve).max() <= max_db + 1e-6  # bounded by max_db
            # smooth: the slope is bounded by the highest band's (|d curve / d nu| <= sum |a_k| pi k)
            assert np.abs(np.diff(curve)).max() <= np.pi * (np.abs(amp[b]) * np.arange(1, K + 1)).sum() / 63 + 1e-9
            assert np.ptp(curve) > 0.1  # not flat
            assert (out.features[b, :, Lb:] == 0).all()
    # over many keys the excursion uses the range up to max_db
    d = _draws(RandomEQ(max_db=max_db, bands=K), F=64, T=2)
    curves = RandomEQ(max_db=max_db, bands=K).curve_db(d, 64, "cpu")
    assert curves.abs().max() > 0.6 * max_db and curves.abs().max() <= max_db


@pytest.mark.parametrize("kind", ["lowpass", "highpass"])
def test_band_limit_attenuates_the_stop_band_and_leaves_the_pass_band(kind):
    from specstream.augment import BandLimit

    F_, width, att = 80, 2.0, 50.0
    x, L, keys = batch(B=8, F=F_, T=30, lengths=[30, 25, 20, 15, 10, 8, 4, 1])
    x = x + 20.0 * (torch.arange(30)[None, None, :] < L[:, None, None])  # power far above the log floor
    out = Policy([BandLimit(kind=kind, cutoff=(0.35, 0.65), width=width, attenuation_db=att)])(x, L, keys=keys, seed=5)
    cut = out.params[0]["cutoff"].double().numpy() * (F_ - 1)
    assert np.ptp(cut) > 1  # per-sample cutoffs
    f = np.arange(F_)
    for b in range(8):
        Lb = int(L[b])
        db = (out.features[b, :, :Lb] - x[b, :, :Lb]).double().numpy() * 10 / math.log(10)  # dB of power
        np.testing.assert_allclose(db, np.broadcast_to(db[:, :1], db.shape), atol=1e-4)  # the same on every frame
        db = db[:, 0]
        stop = f >= cut[b] + 8 * width if kind == "lowpass" else f <= cut[b] - 8 * width
        passed = f <= cut[b] - 10 * width if kind == "lowpass" else f >= cut[b] + 10 * width
        assert stop.sum() >= 7 and passed.sum() >= 7
        assert (db[stop] <= -0.999 * att).all() and (db[stop] >= -att - 1e-3).all()  # ~attenuation_db
        assert (np.abs(db[passed]) < 0.01).all()  # pass band untouched
        steps = np.diff(db) if kind == "lowpass" else -np.diff(db)
        assert (steps <= 1e-4).all()  # a monotone edge
        edge = int(round(cut[b]))
        assert -0.75 * att < db[edge] < -0.25 * att  # the cutoff is mid-transition


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
    op = FrameDropDup(drop=0.2, dup=0.2)
    out = Policy([op])(x, L, keys=keys, frame_targets=ft, seed=3)
    counts = op.frame_counts(out.params[0], L, 120)  # regenerated from the recorded stream key
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


def _warp_forward(nu, alpha, boundary):
    """numpy: where frequency nu in [0, 1] lands under FreqWarp (Jaitly & Hinton): nu * alpha
    up to the bend nu0 = boundary * min(alpha, 1) / alpha, then the line to (1, 1)."""
    nu0 = boundary * min(alpha, 1.0) / alpha
    bend = alpha * nu0
    return np.where(nu <= nu0, alpha * nu, bend + (nu - nu0) * (1 - bend) / (1 - nu0))


def _warp_inverse(nu_out, alpha, boundary):
    """numpy: the input frequency that lands at nu_out (the forward map inverted piece by piece)."""
    nu0 = boundary * min(alpha, 1.0) / alpha
    bend = alpha * nu0
    return np.where(nu_out <= bend, nu_out / alpha, nu0 + (nu_out - bend) * (1 - nu0) / (1 - bend))


def test_frequency_ops():
    x, L, keys = batch(B=3, F=32, T=40, lengths=[40, 30, 20])
    roll = Policy([FreqShift(max_shift=5, cyclic=True)])(x, L, keys=keys)
    for b in range(3):
        k = int(roll.params[0]["shift"][b])
        assert torch.equal(roll.features[b], torch.roll(x[b], k, dims=0))
    assert len(set(roll.params[0]["shift"].tolist())) > 1
    ident = FreqWarp().apply(Batch(x, L), {"alpha": torch.ones(3), "active": torch.ones(3, dtype=torch.bool)})
    torch.testing.assert_close(ident.features, x)
    warped = Policy([FreqWarp(alpha=(0.85, 0.9))])(x, L, keys=keys)
    torch.testing.assert_close(warped.features[:, 0], x[:, 0])  # the lowest bin stays
    torch.testing.assert_close(warped.features[:, -1], x[:, -1])  # so does the top bin
    # every bin is the input interpolated at the inverse warp (numpy, from the recorded alpha)
    xn = x.numpy()
    for b in range(3):
        a = float(warped.params[0]["alpha"][b])
        src = _warp_inverse(np.linspace(0, 1, 32), a, 0.8) * 31
        ref = np.stack([np.interp(src, np.arange(32), xn[b, :, t]) for t in range(int(L[b]))], 1)
        np.testing.assert_allclose(warped.features[b, :, : L[b]].numpy(), ref, atol=1e-4)
    gain = Policy([Gain(min_db=3, max_db=3)])(x, L, keys=keys)
    valid = zero_padding(torch.ones_like(x), L).bool()
    # +3 dB on the mel power (power-2 features, ln(power + 1e-6)): an exact shift of 3 ln(10) / 10
    # far above the floor; numpy in float64 through the floor everywhere
    xv = x[valid].double().numpy()
    ref = np.log((np.exp(xv) - 1e-6) * 10 ** 0.3 + 1e-6)
    np.testing.assert_allclose(gain.features[valid].double().numpy(), ref, rtol=0, atol=2e-5)
    big = xv > -2
    np.testing.assert_allclose(gain.features[valid].double().numpy()[big], xv[big] + 3 * math.log(10) / 10,
                               rtol=0, atol=2e-5)


def test_freq_warp_moves_a_tones_mel_peak_by_alpha():
    """A real 1 kHz sine through LogMel: its mel peak moves to where the warp maps it."""
    from specstream.augment.core import FeatureDomain
    from specstream.features import LogMel, MelConfig

    cfg = MelConfig(n_mels=80)
    sr, F_ = cfg.sample_rate, cfg.n_mels
    tone = torch.from_numpy((0.3 * np.sin(2 * np.pi * 1000 * np.arange(sr // 2) / sr)).astype(np.float32))[None]
    feats, frames = LogMel(cfg)(tone, torch.tensor([sr // 2]))
    peak = lambda f: int(f[0, :, 5:-5].mean(-1).argmax())  # noqa: E731 - interior frames
    p0 = peak(feats)
    for alpha in (0.85, 1.15):
        out = Policy([FreqWarp(alpha=(alpha, alpha), boundary=0.8)], domain=FeatureDomain.from_mel(cfg))(
            feats, frames, keys=["tone"])
        a = float(out.params[0]["alpha"][0])
        expect = float(_warp_forward(np.array(p0 / (F_ - 1)), a, 0.8)) * (F_ - 1)
        got = peak(out.features)
        assert abs(got - expect) <= 1.0, (alpha, p0, expect, got)
        assert abs(got - p0) >= 3 and (got < p0) == (alpha < 1)  # it really moved, the right way
        # the output bin nearest the tone is the one whose inverse-warped source is nearest p0
        src = _warp_inverse(np.linspace(0, 1, F_), a, 0.8) * (F_ - 1)
        assert got == int(np.argmin(np.abs(src - p0))) or abs(src[got] - p0) < 1.0


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
    p = {k: v.numpy() for k, v in out.params[0].items() if k != "__name__"}
    masked = (out.features == SENTINEL).numpy()
    expected = np.zeros(masked.shape, bool)
    for b in range(4):
        for m in range(2):
            fs, fw, ts, tw = (int(p[k][b, m]) for k in ("f_starts", "f_widths", "t_starts", "t_widths"))
            assert fs + fw <= x.shape[1] and ts + tw <= int(L[b]) and fw <= 10 and tw <= min(30, int(L[b]))
            expected[b, fs:fs + fw, ts:ts + tw] = True
    assert np.array_equal(masked, expected)
    assert expected.any(axis=(1, 2)).sum() >= 2  # not a vacuous pass
    assert torch.equal(out.features[~torch.from_numpy(masked)], x[~torch.from_numpy(masked)])
    # over many keys: every width 0..max, starts at both ends, on both axes
    d = {k: v.numpy() for k, v in _draws(CutOut(count=1, max_freq=10, max_time=30), F=40, T=100).items()}
    for start, width, size, top in (("f_starts", "f_widths", 40, 10), ("t_starts", "t_widths", 100, 30)):
        s, w = d[start], d[width]
        assert set(w.ravel().tolist()) == set(range(top + 1)), width
        assert s.min() == 0 and (s + w).max() == size and (s + w <= size).all(), start
    frac = _draws(CutOut(count=1, max_time=1000, max_time_fraction=0.25), F=40, T=100, lengths=[100, 40] * 1000)
    tw = frac["t_widths"][:, 0].numpy()
    assert tw[0::2].max() == 25 and tw[1::2].max() == 10  # floor(0.25 * length)


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
    # geometric: softmax of the mean log-probability; max: elementwise max of the probabilities
    # (by hand, numpy, on 4 views x 3 samples x 5 classes)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 3, 5, generator=g) * 2
    zn = z.double().numpy()
    logp = zn - zn.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    probs = np.exp(logp)
    m = logp.mean(0)
    geo = np.exp(m - m.max(-1, keepdims=True))
    geo = geo / geo.sum(-1, keepdims=True)
    np.testing.assert_allclose(tta_aggregate(z, "geometric").numpy(), geo, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tta_aggregate(list(z), "max").numpy(), probs.max(0), rtol=1e-5, atol=1e-7)
    assert not np.allclose(geo, probs.mean(0), atol=1e-3)  # geometric is not the arithmetic mean
    # probabilities given as such (logits=False) are not softmaxed again
    np.testing.assert_allclose(tta_aggregate(torch.from_numpy(probs).float(), "max", logits=False).numpy(),
                               probs.max(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(tta_aggregate(torch.from_numpy(probs).float(), "geometric", logits=False).numpy(),
                               geo, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="unknown TTA aggregation"):
        tta_aggregate(z, "median")


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
    policy = Policy([FreqMask(max_width=10, count=2, fill="zero"), TimeMask(max_width=30, count=3, fill="zero"),
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
    zero = Policy([FreqMask(max_width=9, count=2, fill="zero"), TimeMask(max_width=25, count=2, fill="zero"),
                   CutOut(count=1, fill="zero")])(x, L, keys=keys, seed=3)
    sentinel = Policy([FreqMask(max_width=9, count=2, fill=SENTINEL), TimeMask(max_width=25, count=2, fill=SENTINEL),
                       CutOut(count=1, fill=SENTINEL)])(x, L, keys=keys, seed=3)
    masked = sentinel.features == SENTINEL
    assert masked.any()
    assert torch.equal(zero.features, torch.where(masked, torch.zeros_like(x), x))
    for b in range(5):
        assert (zero.features[b, :, L[b]:] == 0).all()


def _time_warp_source(c, w, L, T):
    """numpy: the piecewise-linear SpecAugment warp: output frame c + w takes input frame c,
    frames 0 and L - 1 stay; float source frame of every output frame t < L (identity past
    L and for w = 0)."""
    t = np.arange(T, dtype=np.float64)
    if w == 0:
        return t
    last = L - 1
    src = np.where(t < c + w, t * c / (c + w), c + (t - (c + w)) * (last - c) / (last - (c + w)))
    return np.where(t < L, np.clip(src, 0, last), t)


def _round_ok(got, src):
    """Nearest-frame rounding, allowing either neighbour where src is (numerically) x.5."""
    near = np.abs(src - np.floor(src) - 0.5) < 1e-4
    return np.where(near, np.abs(got - src) <= 0.5 + 1e-4, got == np.round(src))


def test_time_warp_moves_frame_targets_with_the_features():
    x, L, keys = batch(B=4, T=200, lengths=[200, 160, 120, 80])
    ft = torch.arange(200).repeat(4, 1)
    op = TimeWarp(W=30)
    out = Policy([op])(x, L, keys=keys, frame_targets=ft, seed=12)
    c, w = out.params[0]["centre"].numpy(), out.params[0]["shift"].numpy()
    xn = x.double().numpy()
    for b in range(4):
        Lb = int(L[b])
        assert abs(w[b]) <= 30 and 0 < c[b] < Lb - 1
        src = _time_warp_source(int(c[b]), int(w[b]), Lb, 200)[:Lb]
        # frame targets: the label of the nearest source frame (numpy), 0 past the length
        assert _round_ok(out.frame_targets[b, :Lb].numpy(), src).all()
        assert (out.frame_targets[b, Lb:] == 0).all()
        # features: linear interpolation between source frames (numpy), 0 past the length
        ref = np.stack([np.interp(src, np.arange(Lb), xn[b, f, :Lb]) for f in range(x.shape[1])])
        np.testing.assert_allclose(out.features[b, :, :Lb].numpy(), ref, atol=1e-4)
        assert (out.features[b, :, Lb:] == 0).all()
        # the warp's own point: output frame c + w holds input frame c
        np.testing.assert_allclose(out.features[b, :, int(c[b] + w[b])].numpy(), xn[b, :, int(c[b])], atol=1e-5)
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


def test_host_hash_equals_the_tensor_hash():
    """The CPU hash (numpy uint32) and the int64 tensor hash (CUDA's path) give the same bits."""
    import specstream.functional.random as R
    from specstream.augment.random import key_ids

    ids = torch.from_numpy(key_ids([f"k{i}" for i in range(9)]))
    cases = [R.keyed_words(5, 2, ids, 9) + [torch.arange(4)], R.keyed_words(1, torch.arange(9) - 3, ids, 130, 0),
             [torch.tensor(-5), 7], [12345], [3, ids[:, None], torch.arange(7)[None, :]]]
    state = R.keyed_prefix(3, 1, ids)
    try:
        host = [R.hash32(w) for w in cases] + [R.hash32([7, torch.arange(5)], state=state)]
        R._HOST = False
        ref = [R.hash32(w) for w in cases] + [R.hash32([7, torch.arange(5)], state=state)]
    finally:
        R._HOST = True
    for a, b in zip(host, ref):
        assert a.shape == b.shape and torch.equal(a, b)
    # the element-wise streams (noise fields) and the parameter draws: the CPU kernels, the same bits
    keys = torch.cat([ids, torch.tensor([0, -1, 2**32 + 5])])
    draws = [(5, 2, ids, op, n) for op in (0, 9, 130, 2**33 + 7, 2**63 + 11) for n in (1, 3)] + \
        [(1, torch.arange(9) - 3, ids, 4, 2)]
    prefixes = [(3, 1), (0, torch.arange(9) * 7 - 2), (2**40 + 9, 5)]
    try:
        fused = R.stream_uniform(keys, 300)
        fused_draws = [R.uniform(*d) for d in draws]
        fused_prefixes = [R.keyed_prefix(seed, ep, ids) for seed, ep in prefixes]
        R._HOST = False
        assert torch.equal(fused, R.stream_uniform(keys, 300))
        for (seed, ep), got in zip(prefixes, fused_prefixes):
            assert got.shape == (9, 1) and torch.equal(got, R.keyed_prefix(seed, ep, ids)), seed
        for d, got in zip(draws, fused_draws):
            assert torch.equal(got, R.uniform(*d)), d[3:]
        R._HOST = True
        wide = R.keyed_prefix(5, 2, ids, trailing=2)  # [B, 1, 1]: the kernel is not for it
        got = R.uniform(5, 2, ids, 9, 3, prefix=wide)
        R._HOST = False
        assert got.shape == (9, 1, 3) and torch.equal(got, R.uniform(5, 2, ids, 9, 3, prefix=wide))
    finally:
        R._HOST = True
    assert torch.equal(R.stream_uniform(keys, 17), fused[:, :17])  # element t does not depend on n
    # a continued state is the hash of the whole word list
    assert torch.equal(R.hash32([7, torch.arange(5)], state=R.hash32(R.keyed_words(3, 1, ids, 0)[:-1])),
                       R.hash32(R.keyed_words(3, 1, ids, 0)[:-1] + [7, torch.arange(5)]))


def test_bands_and_zero_padding_kernels_match_plain_loops():
    from specstream.functional import cpu_kernels
    from specstream.functional.frames import bands, zero_padding

    g = torch.Generator().manual_seed(0)
    s, w = torch.randint(-5, 75, (7, 3), generator=g), torch.randint(-3, 30, (7, 3), generator=g)
    on = torch.rand(7, 3, generator=g) > 0.3
    ref = torch.zeros(7, 70, dtype=torch.bool)
    for b in range(7):
        for m in range(3):
            if on[b, m]:
                ref[b, max(int(s[b, m]), 0):max(int(s[b, m] + w[b, m]), 0)] = True
    assert ref.any() and not ref.all()
    assert cpu_kernels.available()
    assert torch.equal(bands(s, w, on, 70), ref)
    with cpu_kernels.torch_path():
        assert torch.equal(bands(s, w, on, 70), ref)
    x = torch.randn(5, 4, 50, generator=g)
    L = torch.tensor([50, 31, 7, 0, 49])
    ref = x.clone()
    for b in range(5):
        ref[b, :, int(L[b]):] = 0
    assert torch.equal(zero_padding(x, L), ref) and not torch.equal(x, ref)
    y = x.clone()
    assert zero_padding(y, L, inplace=True) is y and torch.equal(y, ref)


@pytest.mark.parametrize("path", ["numba", "numba in place", "torch"])
@pytest.mark.parametrize("fill", ["zero", "mean", "min", 1.5])
def test_mask_kernel_matches_a_cell_by_cell_write(fill, path):
    """apply_masks (the fused CPU kernel, into a new tensor or in place on features the
    caller hands over, and the torch path: one pass + masked bin rows) against a plain
    masked write per sample; padding 0 (the input's padding is not)."""
    from specstream.augment.spec.masks import apply_masks
    from specstream.functional import cpu_kernels

    assert cpu_kernels.available(), "numba is a dependency: the CPU kernel must be in use"
    x, L, keys = batch(B=6, T=120, lengths=[120, 100, 64, 30, 3, 1])
    x = x + (torch.arange(120)[None, None, :] >= L[:, None, None]) * 7.0  # garbage in the padding
    g = torch.Generator().manual_seed(1)
    fu = torch.rand(6, x.shape[1], generator=g) < 0.2
    fu[0, -1] = fu[1, 0] = True  # the edges: first and last bin, first and last valid frame
    tu = (torch.rand(6, 120, generator=g) < 0.15) & (torch.arange(120)[None, :] < L[:, None])
    tu[torch.arange(6), L - 1] = True
    tu[:, 0] = True
    owned = x.clone()
    with (cpu_kernels.torch_path() if path == "torch" else contextlib.nullcontext()):
        out = apply_masks(Batch(owned, L), [(fu, None, None), (None, tu, None)], fill,
                          owned=path == "numba in place").features
    assert (out.data_ptr() == owned.data_ptr()) == (path == "numba in place")  # in place only when handed over
    if path != "numba in place":
        assert torch.equal(owned, x)
    for b in range(6):
        assert (out[b, :, int(L[b]):] == 0).all()
        n = int(L[b])
        v = x[b, :, :n].double()
        m = {"zero": 0.0, "mean": float(v.mean()) if n else 0.0, "min": float(v.min()) if n else 0.0}.get(fill, fill)
        ref = v.clone()
        ref[fu[b]] = m
        ref[:, tu[b, :n]] = m
        torch.testing.assert_close(out[b, :, :n].double(), ref, rtol=0, atol=1e-5)
        assert (out[b, :, n:] == 0).all()


INTERP_CASES = [  # (B, C, T, T_out, dtype): channel counts off the kernel's blocks of 4, shrinking and growing
    (64, 80, 300, 300, torch.float32), (5, 3, 40, 57, torch.float32), (4, 5, 33, 20, torch.float64),
    (3, 4, 1, 6, torch.float32), (2, 1, 9, 9, torch.float64), (0, 80, 10, 10, torch.float32),
]


@pytest.mark.parametrize("B,C,T,T_out,dtype", INTERP_CASES)
def test_interp_time_cpu_kernel_equals_the_torch_path_and_numpy(B, C, T, T_out, dtype):
    """interp_time's fused CPU kernel (numba) gives the torch path's values (same
    neighbours, fraction and lerp formula: bit for bit where torch's lerp is vectorised with
    an FMA, as on x86-64; within an ulp elsewhere), and both match numpy's np.interp row by
    row; frames at and past each length are 0 on both paths."""
    from specstream.functional import cpu_kernels
    from specstream.functional.frames import interp_time

    assert cpu_kernels.available(), "numba is a dependency: the CPU kernel must be in use"
    g = torch.Generator().manual_seed(B * 1000 + T_out)
    x = torch.randn(B, C, T, generator=g, dtype=dtype)
    src = (torch.rand(B, T_out, generator=g) * (T - 1)).sort(-1).values
    if T_out > 3 and B:
        src[:, 0], src[:, 1], src[:, -1] = 0.0, 1.0, T - 1  # exact frames, the last frame
    L = torch.randint(0, T_out + 3, (B,), generator=g)  # some empty, some past T_out
    for lengths in (L, None):
        fused = interp_time(x, src, lengths)
        with cpu_kernels.torch_path():
            plain = interp_time(x, src, lengths)
        assert fused.shape == plain.shape == (B, C, T_out) and fused.dtype == dtype
        ulp = torch.finfo(dtype).eps * (float(x.abs().max()) if x.numel() else 1.0)
        torch.testing.assert_close(fused, plain, rtol=0, atol=2 * ulp)
        n = L.clamp(max=T_out) if lengths is not None else torch.full((B,), T_out)
        for b in range(B):
            nb = int(n[b])
            assert (fused[b, :, nb:] == 0).all()
            ref = np.stack([np.interp(src[b, :nb].double().numpy(), np.arange(T), row)
                            for row in x[b].double().numpy()]) if nb else np.zeros((C, 0))
            np.testing.assert_allclose(fused[b, :, :nb].double().numpy(), ref, rtol=0, atol=1e-5)


def test_cpu_kernel_keeps_torchs_thread_setting_and_shares_its_openmp_runtime():
    """numba's first parallel launch sets the OpenMP default thread count that torch reads;
    the kernel puts torch's own setting back. Its loops run on the OpenMP runtime torch
    loaded (numba's omp layer), not on a second pool (checked in a fresh process: both are
    process-wide)."""
    import subprocess
    import sys

    code = (
        "import os, torch\n"
        "os.environ.pop('NUMBA_THREADING_LAYER', None)\n"
        "torch.set_num_threads(1)\n"
        "from specstream.functional.frames import interp_time\n"
        "x = torch.randn(2, 8, 50); src = torch.rand(2, 50) * 49\n"
        "interp_time(x, src, torch.tensor([50, 20]))\n"
        "import numba\n"
        "print(torch.get_num_threads(), numba.threading_layer())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_THREADING_LAYER", "SPECSTREAM_NUMBA")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "omp"], out.stdout


def test_cpu_kernels_load_from_numbas_cache_in_a_new_process():
    """Each process that augments (every Ray worker) would otherwise compile the kernels
    again, one to two seconds each: a second fresh process finds every kernel
    ``cpu_kernels.warm_up`` calls (all of them) in numba's on-disk cache (no cache miss)."""
    import subprocess
    import sys

    code = (
        "from specstream.functional import cpu_kernels as ck, _numba_hash as h, _numba_iir as i, _numba_kernels as k,"
        " _numba_mixing as m\n"
        "assert ck.warm_up()\n"
        "used = [f for mod in (h, i, k, m) for f in vars(mod).values() if hasattr(f, 'stats') and f.signatures]\n"
        "print(len(ck._kernel), len(used), sum(sum(f.stats.cache_misses.values()) for f in used))\n"
    )
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-3000:]
    # warm_up called every kernel (17), and none was compiled again
    assert runs[1].stdout.split() == ["17", "17", "0"], runs[1].stdout


def test_cpu_kernel_in_a_forked_child_falls_back_to_the_torch_path():
    """GNU OpenMP is not fork-safe: a child forked after the parent used the kernel (a fork
    DataLoader worker, multiprocessing) takes the torch path and lives, with the same values."""
    import subprocess
    import sys

    code = (
        "import multiprocessing as mp, torch\n"
        "from specstream.functional.frames import interp_time\n"
        "x = torch.randn(4, 8, 300); src = torch.rand(4, 300).sort(-1).values * 299; L = torch.tensor([300, 9, 0, 120])\n"
        "want = interp_time(x, src, L)\n"
        "def child(q):\n"
        "    q.put(interp_time(x, src, L).numpy())\n"
        "ctx = mp.get_context('fork'); q = ctx.Queue(); p = ctx.Process(target=child, args=(q,)); p.start()\n"
        "got = q.get(timeout=120); p.join(120)\n"
        "print(p.exitcode, bool(abs(got - want.numpy()).max() <= 1e-6))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["0", "True"], (out.stdout, out.stderr[-2000:])


def test_specstream_numba_0_turns_the_cpu_kernel_off():
    """The README's switch: with SPECSTREAM_NUMBA=0 interp_time takes the torch path (and
    numba is never imported)."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from specstream.functional import cpu_kernels\n"
        "from specstream.functional.frames import interp_time\n"
        "out = interp_time(torch.randn(2, 8, 50), torch.rand(2, 50) * 49, torch.tensor([50, 20]))\n"
        "print(cpu_kernels.available(), 'numba' in sys.modules, bool((out[1, :, 20:] == 0).all()))\n"
    )
    env = dict(os.environ, SPECSTREAM_NUMBA="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["False", "False", "True"], out.stdout


def test_randint_scalar_bounds_equal_the_tensor_formula():
    """randint's shortcut for integer bounds gives the values (and dtype) of the general
    formula, at the ends of [0, 1) too, and the high bound where high < low."""
    from specstream.augment.core import randint

    u = torch.rand(50000, generator=torch.Generator().manual_seed(0))
    u[:4] = torch.tensor([0.0, 1 - 2 ** -24, 0.5, 1e-9])
    for lo, hi in ((0, 2), (0, 0), (3, 19), (-5, 5), (0, 26), (4, 1)):
        got = randint(u, lo, hi)
        want = randint(u, torch.tensor(lo), torch.tensor(hi))
        assert got.dtype == want.dtype == torch.int64 and torch.equal(got, want), (lo, hi)
        assert int(got.min()) == min(lo, hi) and int(got.max()) == hi


def test_gaussian_stream_kernel_equals_the_torch_path_bit_for_bit():
    """The noise streams' kernel (2u - 1, clamped, written by the hash kernel) gives torch's
    values exactly, so recorded noise keys replay the same noise on either path."""
    from specstream.functional import cpu_kernels
    from specstream.functional.dsp import gaussian_stream

    keys = torch.tensor([0, 1, 7, 2 ** 31 + 5, -3])
    got = gaussian_stream(keys, 20001)
    with cpu_kernels.torch_path():
        want = gaussian_stream(keys, 20001)
    assert torch.equal(got, want)
    assert abs(float(got.std()) - 1.0) < 0.02 and abs(float(got.mean())) < 0.02


@pytest.mark.parametrize("lead", [None, "freq_shift"])
def test_policy_masks_write_in_place_only_on_features_the_chain_owns(lead):
    """A policy's run of masks writes in place on the chain's own intermediate (after
    another spectrogram op) and into a new tensor on the caller's features (masks first):
    the caller's features are never written, and the output is the out-of-place torch
    path's, whichever applies."""
    from specstream.functional import cpu_kernels

    x, L, keys = batch(B=6, T=120, lengths=[120, 100, 64, 30, 3, 1])
    ops = ([FreqShift(max_shift=3)] if lead else []) + [FreqMask(max_width=8, count=2),
                                                       TimeMask(max_width=20, count=2, fill="zero")]
    pol = Policy(ops)
    before = x.clone()
    got = pol(x, L, keys=keys, seed=3).features
    assert torch.equal(x, before), "the caller's features were written"
    with cpu_kernels.torch_path():
        want = pol(x, L, keys=keys, seed=3).features
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert not torch.equal(got, x)  # the masks did mask


def test_host_draw_helpers_give_torchs_values():
    """randint, lerp and the gate finish host draws in numpy (fewer dispatches): the values
    must be torch's float32 arithmetic exactly (scalars cast to float32 as torch casts them),
    over a million uniforms including 0 and the largest below 1, for the ranges and
    probabilities the ops use. A draw with a gradient or on another dtype keeps torch's path."""
    import numpy as np

    from specstream.augment.core import _host, lerp, randint

    g = torch.Generator().manual_seed(3)
    u = torch.rand(1_000_000, generator=g)
    u[:3] = torch.tensor([0.0, 1 - 2 ** -24, 0.5])
    assert _host(u)
    for lo, hi in ((0, 2), (1, 64), (0, 0), (3, 7), (0, 19), (-5, 5), (0, 27)):
        want = torch.floor(u * (hi - lo + 1)).to(torch.int64).clamp_(max=hi - lo).add_(lo)
        got = randint(u, lo, hi)
        assert got.dtype == torch.int64 and torch.equal(got, want), (lo, hi)
    for r in ((0.0, 20.0), (5.0, 30.0), (-60.0, 120.0), (0.9, 1.1), (1e-3, 0.7), (0.1, 0.1)):
        want = r[0] + (r[1] - r[0]) * u
        got = lerp(r, u)
        assert got.dtype == torch.float32 and torch.equal(got, want), r
    # the gate Op.sample draws (numpy on the host) is torch's comparison of the same uniform
    from specstream.augment import Context, Gain

    ids = torch.arange(len(u))
    batch = Batch(torch.zeros(len(u), 2, 3), torch.full((len(u),), 3))
    for p in (0.0, 0.1, 0.3, 1 / 3, 0.5, 0.8, 1.0):
        gate = Context(ids, 0, 0, 3).uniform(1)[:, 0]  # the op's first draw: its gate
        got = Gain(p=p).sample(Context(ids, 0, 0, 3), batch)["active"]
        assert torch.equal(got, gate < p), p
    assert not _host(u.double()) and not _host(u.clone().requires_grad_(True))
    assert torch.equal(lerp((2.0, 3.0), u.double()), 2.0 + 1.0 * u.double())


def test_masked_mean_kernel_is_the_mean_of_each_samples_own_frames():
    """The mean fill's kernel (one serial pass on the CPU) against a float64 numpy mean of each
    sample's own frames (garbage in the padding, lengths 0, 1 and full, float32 and float64)
    and against the torch path to float roundoff."""
    import numpy as np

    from specstream.functional import cpu_kernels
    from specstream.functional.frames import masked_mean

    g = torch.Generator().manual_seed(4)
    for dtype in (torch.float32, torch.float64):
        x = (torch.randn(7, 80, 50, generator=g) * 4 - 9).to(dtype)
        L = torch.tensor([50, 0, 1, 33, 49, 50, 7])
        x[3, :, 33:] = 1e6  # padding: must not be read
        got = masked_mean(x, L)
        assert got.dtype == dtype
        for b in range(7):
            n = int(L[b])
            want = x[b, :, :n].double().numpy().mean() if n else 0.0
            np.testing.assert_allclose(float(got[b]), want, rtol=1e-6 if dtype == torch.float32 else 1e-12)
        with cpu_kernels.torch_path():
            ref = masked_mean(x, L)
        torch.testing.assert_close(got, ref, rtol=2e-7 if dtype == torch.float32 else 1e-15, atol=0)
    # both paths: lengths past the frames divide by length x bins (the frames there are
    # missing), negative lengths count as 0, NaN in the padding is never read
    x = torch.randn(3, 4, 6, generator=g)
    x[1, :, 2:] = float("nan")
    L = torch.tensor([10, 2, -3])
    got = masked_mean(x, L)
    with cpu_kernels.torch_path():
        ref = masked_mean(x, L)
    torch.testing.assert_close(got, ref, rtol=2e-7, atol=0)
    assert float(got[2]) == 0.0 and bool(torch.isfinite(got).all())
    np.testing.assert_allclose(float(got[0]), x[0].double().sum().item() / 40, rtol=1e-6)


def test_draw_table_gives_each_draws_own_values():
    """A policy's host draws come from one table hashed per batch (the first draws of every op
    slot): each draw must equal the draw hashed on its own (keyed_uniform_array), for draws in
    the table and past it (more values, later draws), and a whole policy's recorded
    parameters must equal those drawn without the table."""
    import numpy as np

    from specstream.augment.core import Context
    from specstream.augment.policy import Policy
    from specstream.functional.cpu_kernels import keyed_uniform_array
    from specstream.functional.random import DrawTable, keyed_prefix

    ids = torch.arange(9, dtype=torch.int64) * 7919 + 3
    flat = np.ascontiguousarray(keyed_prefix(5, 2, ids).numpy().reshape(-1))
    table = DrawTable(flat, 6)
    for slot in (0, 3, 5, 6, 70):
        for draw in (0, 1, 3, 4, 10):
            for n in (1, 2, 4, 5, 20):
                op = slot * 64 + draw
                assert np.array_equal(table.uniform(op, n), keyed_uniform_array(flat, op, n)), (slot, draw, n)
    policy = Policy.from_dict({"ops": [{"op": "wave_gain"}, {"op": "noise", "colour": ["white", "pink"], "p": 0.5},
                                       {"op": "filter", "p": 0.5}, {"op": "freq_mask", "count": 3},
                                       {"op": "time_mask", "count": 6}]})
    wave = torch.randn(9, 4000, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([4000, 3000, 4000, 100, 4000, 2500, 4000, 3999, 1])
    from specstream.features import LogMel, MelConfig
    logmel = LogMel(MelConfig())
    with_table = policy.featurize(wave, lengths, logmel, 16000, key_ids=ids, seed=5, epoch=2)
    slots = []

    def plain(slot, op, batch):  # every draw hashed on its own
        slots.append(slot)
        p = op.sample(Context(ids, 5, 2, slot), batch)
        p["__name__"] = op.name
        return p

    drawer = policy._drawer
    policy._drawer = lambda *a: plain
    try:
        without = policy.featurize(wave, lengths, logmel, 16000, key_ids=ids, seed=5, epoch=2)
    finally:
        policy._drawer = drawer
    assert slots == list(range(5))
    for a, b in zip(with_table.params, without.params):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], torch.Tensor):
                assert torch.equal(a[k], b[k]), k
    assert torch.equal(with_table.features, without.features)
