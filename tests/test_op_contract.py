"""The op contract, checked for every registered augmentation op on real speech.

Parametrised over ``sorted(REGISTRY)`` (each op built with its default arguments, p = 1)
plus a table of extra modes, so a new op is covered without writing a test. An op whose
constructor needs arguments must be added to ``NEEDS`` (``test_every_registered_op_is_
built_by_the_table`` fails loudly otherwise).

For every case:

1. a sample alone equals the same sample inside a padded batch of longer, different clips
   (also with p = 0.5, where only the active rows go through the op);
2. padding stays exactly 0 and the returned lengths are consistent;
3. replay from the recorded parameters (and from the logged per-row records) is exact;
4. the same key and epoch at another batch position (or alone) draws the same parameters;
5. the CPU kernels agree with the torch path, and CPU and CUDA agree (skipped without a GPU).

Waveform and filterbank ops run through ``Policy([op]).featurize`` with ``LogMel(MelConfig())``;
spectrogram ops through ``Policy([op])(features, lengths, ...)`` on the log-mel of the clips.
"""
import os
import shutil

import pytest
import torch

from conftest import ALSA, ASTERISK, need_recordings
from specstream.augment import REGISTRY, Batch, FeatureDomain, Policy, WaveBatch
from specstream.augment.wave import BankOp
from specstream.augment.random import key_ids
from specstream.features import LogMel, MelConfig
from specstream.io.banks import load_bank

SR = 16000
CFG = MelConfig()
SEED, EPOCH = 7, 3
NUM_CLASSES = 3

# Ops whose constructor needs arguments: name -> kwargs built from the banks fixture.
NEEDS = {
    "background_noise": lambda banks: {"bank": banks["noise"]},
    "babble": lambda banks: {"bank": banks["speech"]},
    "reverb": lambda banks: {"bank": banks["rirs"]},
}

# Extra settings worth testing (besides every op's defaults): id -> (op name, kwargs).
MODES = {
    "time_mask[adaptive]": ("time_mask", dict(width_fraction=0.05, count_fraction=0.04, max_count=20)),
    "time_mask[fill=min]": ("time_mask", dict(count=4, max_width=30, fill="min")),
    "freq_mask[fill=zero]": ("freq_mask", dict(count=3, fill="zero")),
    "cutout[fraction,fill=-3]": ("cutout", dict(count=3, max_time_fraction=0.2, fill=-3.0)),
    "freq_shift[cyclic]": ("freq_shift", dict(cyclic=True)),
    "freq_shift[fill=mean]": ("freq_shift", dict(fill="mean")),
    "freq_warp[0.8-1.2]": ("freq_warp", dict(alpha=(0.8, 1.2), boundary=0.6)),
    "time_stretch[0.5-2]": ("time_stretch", dict(rates=(0.5, 2.0))),
    "frame_drop_dup[heavy]": ("frame_drop_dup", dict(drop=0.3, dup=0.3)),
    "random_eq[12dB,8]": ("random_eq", dict(max_db=12.0, bands=8)),
    "band_limit[highpass]": ("band_limit", dict(kind="highpass")),
    "band_limit[random]": ("band_limit", dict(kind="random", cutoff=(0.2, 0.8))),
    "feature_noise[white]": ("feature_noise", dict(colour="white")),
    "feature_noise[pink]": ("feature_noise", dict(colour="pink")),
    "feature_noise[brown]": ("feature_noise", dict(colour="brown", snr_db=(0.0, 10.0))),
    "mixup[smoothing]": ("mixup", dict(alpha=1.0, smoothing=0.1)),
    "overlay[-5..5dB]": ("overlay", dict(snr_db=(-5.0, 5.0))),
    "noise[pink]": ("noise", dict(colour="pink")),
    "noise[brown]": ("noise", dict(colour="brown")),
    "noise[mixed]": ("noise", dict(colour=["white", "pink", "brown"], snr_db=(-5.0, 10.0))),
    "filter[lowpass]": ("filter", dict(kind="lowpass")),
    "filter[highpass]": ("filter", dict(kind="highpass")),
    "filter[bandpass]": ("filter", dict(kind="bandpass")),
    "filter[lowpass 1-40 Hz]": ("filter", dict(kind="lowpass", lowpass_hz=(1.0, 40.0))),
    "filter[highpass 1-3 Hz]": ("filter", dict(kind="highpass", highpass_hz=(1.0, 3.0))),
    "distortion[clip]": ("distortion", dict(kind="clip")),
    "distortion[asymmetric]": ("distortion", dict(kind="asymmetric")),
    "background_noise[1-3 clips]": ("background_noise", dict(count=(1, 3), snr_db=(-5.0, 5.0))),
    "reverb[energy,raw level]": ("reverb", dict(normalize="energy", keep_level=False)),
    "speed[0.85,1.15]": ("speed", dict(factors=(0.85, 1.15))),
    "tempo[0.8,1.25]": ("tempo", dict(factors=(0.8, 1.25))),
    "vtlp[0.8-1.2]": ("vtlp", dict(alpha=(0.8, 1.2), boundary_hz=6000.0)),
}

CASES = [pytest.param(name, {}, id=name) for name in sorted(REGISTRY)] + \
    [pytest.param(name, kw, id=cid) for cid, (name, kw) in sorted(MODES.items())]

ORDER = [3, 8, 0, 9, 6, 1, 7, 4, 2, 5]  # the batch: every clip among longer, different ones
EXTRA = 2500  # padding past the longest clip (samples; spectrogram batches: EXTRA // hop frames)
ORDER2 = [5, 1, 2, 7, 4, 0, 9, 3, 8, 6]  # the same clips at other positions, other padding
EXTRA2 = 700


# Violations found by these tests and not yet fixed: (property, case) -> reason; the test is
# expected to fail (strict: take it out of this table once fixed). Empty: none known.
KNOWN = {}


def known(request, prop):
    reason = KNOWN.get((prop, request.node.callspec.id))
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


def build(name, kw, banks):
    kw = dict(kw)
    if name in NEEDS:
        kw.update(NEEDS[name](banks))
    return REGISTRY[name](**kw, p=1.0)


# ----------------------------------------------------------------------------- inputs

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Hundreds of small batches: one intra-op thread is as fast alone and several times
    faster on a shared machine (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def banks(tmp_path_factory):
    """Real recordings: alsa-utils' noise and speech (48 kHz), other asterisk prompts as a
    speech bank for babble, and simulated room impulse responses."""
    need_recordings(ALSA, ASTERISK)
    from specstream.rirs import make_rir_bank

    noise = tmp_path_factory.mktemp("contract_noise")
    shutil.copy(os.path.join(ALSA, "Noise.wav"), noise / "noise.wav")
    shutil.copy(os.path.join(ALSA, "Front_Center.wav"), noise / "front.wav")
    talkers = tmp_path_factory.mktemp("contract_babble")
    for n in ("agent-alreadyon", "agent-incorrect", "agent-loggedoff", "agent-loginok", "agent-newlocation",
              "conf-onlyperson"):
        shutil.copy(os.path.join(ASTERISK, n + ".wav"), talkers / (n + ".wav"))
    rirs = str(tmp_path_factory.mktemp("contract_rirs"))
    make_rir_bank(rirs, count=4, seed=3, rt60=(0.3, 0.8))
    return {"noise": load_bank(str(noise), SR), "speech": load_bank(str(talkers), SR),
            "rirs": load_bank(rirs, SR)}


class Clips:
    """The speech clips one by one (waveforms, and their log-mel computed alone), from which
    padded batches in any order are assembled."""

    def __init__(self, speech):
        wave, lengths = speech
        self.waves = [torch.from_numpy(wave[i, : int(n)].copy()) for i, n in enumerate(lengths)]
        logmel = LogMel(CFG)
        self.feats = [logmel(w[None], torch.tensor([w.numel()]))[0][0] for w in self.waves]
        self.keys = [f"contract-{i}" for i in range(len(self.waves))]
        self.targets = torch.arange(len(self.waves)) % NUM_CLASSES

    def wave_batch(self, order, extra):
        L = torch.tensor([self.waves[i].numel() for i in order])
        w = torch.zeros(len(order), int(L.max()) + extra)
        for b, i in enumerate(order):
            w[b, : L[b]] = self.waves[i]
        frames = CFG.num_frames(L)
        return w, L, self._frame_targets(frames, int(CFG.num_frames(torch.tensor(w.shape[1])))), frames

    def spec_batch(self, order, extra):
        L = torch.tensor([self.feats[i].shape[1] for i in order])
        x = torch.zeros(len(order), CFG.n_mels, int(L.max()) + extra // CFG.hop_length)
        for b, i in enumerate(order):
            x[b, :, : L[b]] = self.feats[i]
        return x, L, self._frame_targets(L, x.shape[-1])

    @staticmethod
    def _frame_targets(frames, T):
        """[B, T] int64: t + 1 on each sample's frames (never 0), 0 past them."""
        t = torch.arange(T)[None, :]
        return torch.where(t < frames[:, None], t + 1, 0)


@pytest.fixture(scope="module")
def clips(speech):
    return Clips(speech)


_LOGMELS = {}


def _jittered(x: torch.Tensor, jitter: float) -> torch.Tensor:
    """x with each element moved by ``jitter`` of its own size (a fixed random sign pattern):
    the size of the roundoff two FFT implementations (CPU and CUDA) leave in the input."""
    if not jitter:
        return x
    g = torch.Generator().manual_seed(1234)
    return x * (1 + jitter * torch.randn(x.shape, generator=g).to(x.device))


def augment(op, clips, order, extra, params=None, device="cpu", jitter: float = 0.0):
    """Policy([op]) on the clips ``order`` (keys, class targets and frame targets t + 1 go
    with them), drawn from the keys or replaying ``params``; ``jitter``: the input moved
    by that much relative roundoff first."""
    dev = torch.device(device)
    policy = Policy([op], num_classes=NUM_CLASSES, domain=FeatureDomain.from_mel(CFG))
    keys = [clips.keys[i] for i in order]
    y = clips.targets[order].to(dev)
    if params is not None:
        params = [{k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in p.items()} for p in params]
    if op.domain == "spec":
        x, L, ft = (t.to(dev) for t in clips.spec_batch(order, extra))
        x = _jittered(x, jitter)
        if params is not None:
            return policy.apply(x, L, params=params, targets=y, frame_targets=ft)
        return policy(x, L, keys=keys, targets=y, frame_targets=ft, seed=SEED, epoch=EPOCH)
    w, n, ft, _ = (t.to(dev) for t in clips.wave_batch(order, extra))
    w = _jittered(w, jitter)
    if device not in _LOGMELS:
        _LOGMELS[device] = LogMel(CFG).to(dev)
    return policy.featurize(w, n, _LOGMELS[device], SR, keys=keys, targets=y, frame_targets=ft,
                            seed=SEED, epoch=EPOCH, params=params)


def mixing(out) -> bool:
    """Ops that record a partner (a batch index): mixup, overlay."""
    return "partner" in out.params[0]


def assert_same_features(a, b, wave_domain, what, power_tol=2e-6, log_tol=1e-4):
    """a, b: one sample's log-mel [F, n]. Spectrogram ops: |a - b| <= 1e-4. Waveform and
    filterbank ops: the waveform is convolved/transformed with FFT sizes that depend on the
    padding, so roundoff (~1e-7 of the sample's own scale) is legitimate; the log-mel blows
    it up in digitally silent cells (ln of ~0 + offset). There the check is in mel power:
    |Pa - Pb| <= 1e-4 Pa + ``power_tol`` * max(Pa) (cells well above the sample's float
    noise floor still agree to 1e-4 in log)."""
    a, b = a.double().cpu(), b.double().cpu()
    assert a.shape == b.shape, (what, a.shape, b.shape)
    if not wave_domain:
        err = (a - b).abs()
        worst = float(err.max()) if err.numel() else 0.0
        assert worst <= log_tol, f"{what}: log-mel differs by {worst:.3g} at {divmod(int(err.argmax()), a.shape[1])}"
        return
    pa, pb = a.exp(), b.exp()
    allowed = log_tol * pa + power_tol * pa.max()
    ratio = (pa - pb).abs() / allowed
    worst = float(ratio.max()) if ratio.numel() else 0.0
    if worst > 1:
        i = int(ratio.argmax())
        f, t = divmod(i, a.shape[1])
        raise AssertionError(f"{what}: mel power differs by {worst:.3g} x the float tolerance at bin {f}, frame {t} "
                             f"(log-mel {float(a.flatten()[i]):.5g} vs {float(b.flatten()[i]):.5g}, "
                             f"cell power {float(pa.flatten()[i] / pa.max()):.2g} of the sample's peak)")


@pytest.fixture(scope="module")
def batch_runs():
    """(op name, kwargs) -> (op, the batch's AugmentResult), computed once per module."""
    return {}


def case_run(name, kw, clips, banks, cache):
    key = (name, repr(sorted(kw.items())))
    if key not in cache:
        op = build(name, kw, banks)
        cache[key] = (op, augment(op, clips, ORDER, EXTRA))
    return cache[key]


# ----------------------------------------------------------------------------- the table

def test_every_registered_op_is_built_by_the_table(banks):
    """Every registered op is constructed by the table (its defaults, or NEEDS): a new op
    whose constructor needs arguments fails here, loudly, instead of being skipped."""
    for name, cls in sorted(REGISTRY.items()):
        try:
            op = build(name, {}, banks)
        except TypeError as e:
            pytest.fail(f"op {name!r} cannot be built with default arguments ({e}): add it to NEEDS in "
                        f"tests/test_op_contract.py")
        assert type(op) is cls and op.p == 1.0
        assert op.domain in ("wave", "filterbank", "spec"), (name, op.domain)
        assert issubclass(cls, BankOp) == (name in NEEDS), f"{name}: bank ops (only) need a bank in NEEDS"
    assert set(NEEDS) <= set(REGISTRY)
    for cid, (name, kw) in MODES.items():
        assert name in REGISTRY, cid
        assert kw, f"{cid}: a mode sets something"
    assert {p.values[0] for p in CASES} == set(REGISTRY)


def test_a_new_family_file_registers_its_ops_with_no_other_edit(tmp_path):
    """Adding an op is one class in a family file: in a copy of the package, a new file
    under augment/spec/ makes its op buildable by name from a config, importable by class
    name from specstream.augment, and a member of REGISTRY; nothing else is edited."""
    import subprocess
    import sys

    import specstream

    pkg = os.path.dirname(specstream.__file__)
    shutil.copytree(pkg, tmp_path / "specstream", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "specstream" / "augment" / "spec" / "zz_probe.py").write_text(
        "from ..core import Batch, Op\n\n\n"
        "class ZzProbe(Op):\n"
        "    name = 'zz_probe'\n\n"
        "    def draw(self, ctx, batch):\n"
        "        return {}\n\n"
        "    def transform(self, batch: Batch, params):\n"
        "        return batch.replace(features=batch.features + 1.0)\n")
    code = ("import torch, specstream.augment as A\n"
            "assert A.REGISTRY['zz_probe'] is A.ZzProbe and 'ZzProbe' in A.__all__\n"
            "p = A.Policy.from_dict({'ops': [{'op': 'zz_probe', 'p': 1.0}]})\n"
            "out = p(torch.zeros(2, 4, 5), torch.tensor([5, 3]), keys=['a', 'b'])\n"
            "assert out.features[0].eq(1).all() and out.features[1, :, :3].eq(1).all()\n"
            "assert out.features[1, :, 3:].eq(0).all()\n"
            "print('ok', len(A.REGISTRY))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(tmp_path)), timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-2000:]
    assert int(r.stdout.split()[1]) == len(REGISTRY) + 1
    # a class name already exported (another op's, here the waveform Noise) is refused loudly
    (tmp_path / "specstream" / "augment" / "spec" / "zz_clash.py").write_text(
        "from ..core import Op\n\n\nclass Noise(Op):\n    name = 'zz_clash'\n")
    r = subprocess.run([sys.executable, "-c", "import specstream.augment"], cwd=tmp_path, capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=str(tmp_path)), timeout=120)
    assert r.returncode != 0 and "class name Noise is taken" in r.stderr, r.stderr[-2000:]


# ----------------------------------------------------------------------------- 1. batch invariance

@pytest.mark.parametrize("name,kw", CASES)
def test_alone_equals_inside_a_padded_batch(name, kw, clips, banks, batch_runs, request):
    known(request, "alone")
    op, out = case_run(name, kw, clips, banks, batch_runs)
    wave_domain = op.domain != "spec"
    if mixing(out):
        # The partner is the one thing drawn from the batch: replay the batch's recorded
        # parameters on a tight batch of two (the sample and its partner, nothing else, no
        # padding) and compare the sample. lambda / SNR per key: test_same_key_same_draw.
        p = {k: v for k, v in out.params[0].items() if k != "__name__"}
        for pos, i in enumerate(ORDER):
            jpos = int(p["partner"][pos])
            assert jpos != pos  # ten labelled rows: everyone has a partner
            pair = {k: v[[pos, jpos]] for k, v in p.items()}
            pair["partner"] = torch.tensor([1, 0])
            pair["__name__"] = op.name
            two = augment(op, clips, [i, ORDER[jpos]], 0, params=[pair])
            n = int(two.lengths[0])
            assert n == int(out.lengths[pos])
            assert_same_features(two.features[0, :, :n], out.features[pos, :, :n], False, f"{name} sample {i}")
            torch.testing.assert_close(two.targets[0], out.targets[pos], rtol=0, atol=1e-6)
            assert torch.equal(two.frame_targets[0, :n], out.frame_targets[pos, :n])
        return
    for pos, i in enumerate(ORDER):
        alone = augment(op, clips, [i], 0)
        n = int(alone.lengths[0])
        assert n == int(out.lengths[pos]), (name, i, n, int(out.lengths[pos]))
        assert_same_features(alone.features[0, :, :n], out.features[pos, :, :n], wave_domain, f"{name} sample {i}")
        assert torch.equal(alone.frame_targets[0, :n], out.frame_targets[pos, :n]), f"{name}: frame targets of {i}"
        if out.targets is not None:
            torch.testing.assert_close(alone.targets[0], out.targets[pos], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_gated_rows_alone_equal_inside_a_padded_batch(name, clips, banks):
    """p < 1: the active rows go through the op as a sub-batch (taken out and written back),
    the others are left alone; either way a sample equals itself alone."""
    op = build(name, {}, banks)
    op.p = 0.5
    out = augment(op, clips, ORDER, EXTRA)
    active = out.params[0]["active"]
    assert 0 < int(active.sum()) < len(ORDER)  # both kinds of rows (the gate is keyed: fixed here)
    if mixing(out):
        return  # partners come from the batch: covered by the replay on a pair above
    for pos, i in enumerate(ORDER):
        alone = augment(op, clips, [i], 0)
        assert bool(alone.params[0]["active"][0]) == bool(active[pos])
        n = int(alone.lengths[0])
        assert n == int(out.lengths[pos])
        assert_same_features(alone.features[0, :, :n], out.features[pos, :, :n], op.domain != "spec",
                             f"{name} (p=0.5) sample {i}")
    past = torch.arange(out.features.shape[-1])[None, :] >= out.lengths[:, None]
    assert bool((out.features.masked_select(past[:, None, :]) == 0).all())


@pytest.mark.parametrize("path", ["kernels", "torch"])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_gated_rows_in_a_batch_the_chain_owns(name, path, clips, banks, monkeypatch):
    """p < 1 on a batch the caller hands over (owned: a policy's chain after its first op)
    and on one it keeps: the same output bit for bit, the kept batch never written. An op
    that transforms its rows in place (``in_place``) writes the owned tensor itself, with
    no gathered copy (so this runs its transform_rows): with the CPU kernels, and on the
    torch path (what CUDA runs: the rows gathered, transformed and written back)."""
    from specstream.functional import cpu_kernels

    if path == "torch":
        monkeypatch.setattr(cpu_kernels, "_kernel", False)  # cpu_kernels.torch_path() for the whole test
    op = build(name, {}, banks)
    if op.domain == "filterbank":
        return  # acts in the log-mel's filterbanks: no batch to own (covered through featurize)
    op.p = 0.5
    params = augment(op, clips, ORDER, EXTRA).params[0]
    if op.domain == "wave":
        w, n, _, _ = clips.wave_batch(ORDER, EXTRA)
        make = lambda data: WaveBatch(data, n, SR, clips.targets[ORDER])  # noqa: E731
    else:
        x, n, ft = clips.spec_batch(ORDER, EXTRA)
        w = x
        make = lambda data: Batch(data, n, clips.targets[ORDER], ft, FeatureDomain.from_mel(CFG))  # noqa: E731
    kept, given = w.clone(), w.clone()
    takes = []  # the gathered copies of the active rows (the take/put path)
    cls = type(make(w))
    monkeypatch.setattr(cls, "take", lambda self, rows, _f=cls.take: takes.append(1) or _f(self, rows))
    a = op.apply(make(kept), params, owned=False, clean=True)
    gathered = len(takes)
    b = op.apply(make(given), params, owned=True, clean=True)
    assert torch.equal(kept, w), f"{name}: wrote the caller's batch"
    assert torch.equal(a.data, b.data) and torch.equal(a.lengths, b.lengths), f"{name}: owned and kept differ"
    if op.in_place:
        assert gathered == 1 and len(takes) == 1, f"{name}: in_place, yet the owned batch went through take/put"
        assert b.data is given and not torch.equal(given, w)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_inactive_rows_come_out_unchanged(name, clips, banks):
    """The gate, wherever it is applied (the base class's gather of the active rows, or the
    op itself when it takes every row, ``rows = "all"``: the masks' fused pass, mixing,
    VTLP's filterbanks): rows whose recorded ``active`` is False come out as they went in
    (features, lengths, targets, frame targets): exactly for spectrogram ops, and as the
    plain log-mel of the same batch for waveform and filterbank ops. The active rows change."""
    from specstream.augment.spec.mixing import soft_targets

    op = build(name, {}, banks)
    p = dict(augment(op, clips, ORDER, EXTRA).params[0])
    on = torch.arange(len(ORDER)) % 2 == 0
    p["active"] = on
    got = augment(op, clips, ORDER, EXTRA, params=[p])
    y = clips.targets[ORDER]
    if op.domain == "spec":
        x, L, ft = clips.spec_batch(ORDER, EXTRA)
    else:
        w, n, ft, _ = clips.wave_batch(ORDER, EXTRA)
        if "cpu" not in _LOGMELS:
            _LOGMELS["cpu"] = LogMel(CFG)
        ref = Policy([]).featurize(w, n, _LOGMELS["cpu"], SR, frame_targets=ft, params=[])
        x, L, ft = ref.features, ref.lengths, ref.frame_targets
    if got.targets is not None and got.targets.dim() == 2 and y.dim() == 1:
        y = soft_targets(y, NUM_CLASSES)  # mixup's soft rows: an inactive row's is its one-hot
    changed = 0
    for pos in range(len(ORDER)):
        k = int(L[pos])
        if bool(on[pos]):
            changed += int(int(got.lengths[pos]) != k or not torch.equal(got.features[pos, :, :k], x[pos, :, :k]))
            continue
        what = f"{name}: inactive row {pos}"
        assert int(got.lengths[pos]) == k, what
        if op.domain == "spec":
            assert torch.equal(got.features[pos, :, :k], x[pos, :, :k]), what
        else:
            assert_same_features(got.features[pos, :, :k], x[pos, :, :k], True, what)
        assert torch.equal(got.frame_targets[pos, :k], ft[pos, :k]), what
        if got.targets is not None:
            assert torch.equal(got.targets[pos], y[pos].to(got.targets.dtype)), what
    assert changed >= 3, f"{name}: only {changed} of the 5 active rows changed"


# ----------------------------------------------------------------------------- 2. padding, lengths

@pytest.mark.parametrize("name,kw", CASES)
def test_padding_stays_zero_and_lengths_are_consistent(name, kw, clips, banks, batch_runs, request):
    known(request, "padding")
    op, out = case_run(name, kw, clips, banks, batch_runs)
    B, _, T = out.features.shape
    L = out.lengths
    assert L.dtype == torch.int64 and L.shape == (B,)
    assert bool(((L >= 1) & (L <= T)).all()), (name, L.tolist(), T)
    past = torch.arange(T)[None, :] >= L[:, None]
    assert bool((out.features.masked_select(past[:, None, :]) == 0).all()), f"{name}: features in the padding"
    ft = out.frame_targets
    assert ft.shape == (B, T), (name, ft.shape, (B, T))
    assert bool((ft[past] == 0).all()), f"{name}: frame targets in the padding"
    assert bool((ft[~past] > 0).all()), f"{name}: a valid frame took its label from the padding"
    if op.domain == "spec":
        clean = clips.spec_batch(ORDER, EXTRA)[1]
    else:
        clean = clips.wave_batch(ORDER, EXTRA)[3]
    if "lengths" not in op.changes:
        assert torch.equal(L, clean), f"{name}: lengths changed without declaring it"
    # a batch with garbage past its lengths, every row active (the op called on its own,
    # not vouched clean): the output's padding is 0 all the same
    params = {k: v for k, v in out.params[0].items() if k != "__name__"}
    if op.domain == "filterbank":  # no apply of its own: its banks go into the log-mel
        pass
    elif op.domain == "spec":
        x, n, ft = clips.spec_batch(ORDER, EXTRA)
        dirty = x + (torch.arange(x.shape[-1])[None, None, :] >= n[:, None, None]) * 3.0
        res = op.apply(Batch(dirty, n, clips.targets[ORDER], ft, FeatureDomain.from_mel(CFG)), params)
        data = res.features
    else:
        w, n, _, _ = clips.wave_batch(ORDER, EXTRA)
        dirty = w + (torch.arange(w.shape[-1])[None, :] >= n[:, None]) * 0.25
        res = op.apply(WaveBatch(dirty, n, SR, clips.targets[ORDER]), params)
        data = res.audio
    if op.domain != "filterbank":
        past_n = torch.arange(data.shape[-1])[None, :] >= res.lengths[:, None]
        past_n = past_n.reshape(past_n.shape[0], *([1] * (data.dim() - 2)), past_n.shape[1]).expand_as(data)
        assert bool((data[past_n] == 0).all()), f"{name}: padding not zeroed on a batch with garbage past its lengths"
    if op.domain != "wave":
        return
    # the waveform itself: zero past the op's output lengths, which give the frames
    w, n, _, _ = clips.wave_batch(ORDER, EXTRA)
    params = {k: v for k, v in out.params[0].items() if k != "__name__"}
    wb = op.apply(WaveBatch(w, n, SR), params)
    assert bool((wb.audio.masked_select(torch.arange(wb.audio.shape[1])[None, :] >= wb.lengths[:, None]) == 0).all())
    # every other row active, on a batch the caller vouches is zero-padded (a policy's
    # waveform chain): an op that declares keeps_zero_padding skips the contract's zeroing pass,
    # and must give what the contract would
    half = dict(params, active=torch.arange(len(ORDER)) % 2 == 0)
    fast, ref = op.apply(WaveBatch(w, n, SR), half, clean=True), op.apply(WaveBatch(w, n, SR), half)
    assert torch.equal(fast.lengths, ref.lengths) and torch.equal(fast.audio, ref.audio), name
    assert bool((fast.audio.masked_select(torch.arange(fast.audio.shape[1])[None, :] >= fast.lengths[:, None]) == 0
                 ).all()), f"{name}: waveform padding with half the rows active"
    assert torch.equal(CFG.num_frames(wb.lengths), L), f"{name}: frames do not follow the waveform lengths"
    expect = n.double() / op.time_factor(params)
    assert bool(((wb.lengths.double() - expect).abs() <= 1).all()), (name, wb.lengths.tolist(), expect.tolist())


# ----------------------------------------------------------------------------- 3. replay

@pytest.mark.parametrize("name,kw", CASES)
def test_replay_from_recorded_params_is_exact(name, kw, clips, banks, batch_runs):
    op, out = case_run(name, kw, clips, banks, batch_runs)
    rows = out.params_rows()  # the JSON-able rows the stage logs (each field read once per batch)
    assert rows == [out.params_for(b) for b in range(len(ORDER))], name
    logged = Policy.params_from_rows(rows)
    for params in (out.params, logged):
        again = augment(op, clips, ORDER, EXTRA, params=params)
        assert torch.equal(again.lengths, out.lengths)
        torch.testing.assert_close(again.features, out.features, rtol=0, atol=1e-6)
        assert torch.equal(again.frame_targets, out.frame_targets)
        torch.testing.assert_close(again.targets, out.targets, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- 4. keyed draws

def _rows(params, positions):
    return {k: v[positions] for k, v in params.items() if k not in ("__name__", "partner", "partner_id")}


@pytest.mark.parametrize("name,kw", CASES)
def test_same_key_same_draw_at_any_batch_position(name, kw, clips, banks, batch_runs):
    op, out = case_run(name, kw, clips, banks, batch_runs)
    other = augment(op, clips, ORDER2, EXTRA2)
    pos1 = [ORDER.index(i) for i in range(len(ORDER))]
    pos2 = [ORDER2.index(i) for i in range(len(ORDER2))]
    a, b = _rows(out.params[0], pos1), _rows(other.params[0], pos2)
    assert set(a) == set(b) and a, name
    for k in a:
        assert torch.equal(a[k], b[k]), f"{name}: parameter {k!r} depends on the batch position"
    for i in (ORDER[0], ORDER[-1]):  # and alone
        alone = _rows(augment(op, clips, [i], 0).params[0], [0])
        for k in a:
            assert torch.equal(alone[k][0], a[k][i]), f"{name}: parameter {k!r} of sample {i} alone"
    # the draws are per key: some parameter differs between samples
    assert any(not torch.equal(v[0], v[j]) for v in a.values() for j in range(1, len(ORDER))), name


# ----------------------------------------------------------------------------- 5. CPU / CUDA

@pytest.mark.parametrize("name,kw", CASES)
def test_roundoff_in_the_input_stays_roundoff(name, kw, clips, banks, batch_runs):
    """What CPU/CUDA parity needs, checked on any machine: the input moved by float roundoff
    (1e-7 relative, the size of the difference between two FFT implementations) and the
    same recorded parameters replayed give features within the CUDA parity tolerance. An op
    that amplifies roundoff (the phase vocoder's running phase did) cannot agree across
    devices, whatever the kernels."""
    op, out = case_run(name, kw, clips, banks, batch_runs)
    params = [{k: v for k, v in p.items()} for p in out.params]
    moved = augment(op, clips, ORDER, EXTRA, params=params, jitter=1e-7)
    assert torch.equal(moved.lengths, out.lengths)
    for b in range(len(ORDER)):
        n = int(out.lengths[b])
        assert_same_features(moved.features[b, :, :n], out.features[b, :, :n], op.domain != "spec",
                             f"{name} row {b} with its input moved by roundoff", power_tol=1e-5, log_tol=1e-3)


@pytest.mark.parametrize("name,kw", CASES)
def test_cpu_kernels_agree_with_the_torch_path(name, kw, clips, banks, batch_runs):
    """The fused CPU kernels (numba: interpolation, IIR filters, noise hashes, masks) and the
    torch paths give the same draws and features within the CUDA parity tolerance, for every
    op: the CPU's own torch path (without numba) and the path CUDA runs (its filters are FFT
    products with the impulse response), both run here on the CPU. CUDA itself is checked
    below."""
    from specstream.functional import cpu_kernels, dsp

    assert cpu_kernels.available(), "numba is a dependency: the CPU kernels must be in use"
    op, fused = case_run(name, kw, clips, banks, batch_runs)
    with cpu_kernels.torch_path():
        plain = augment(op, clips, ORDER, EXTRA)
    with cpu_kernels.torch_path(), dsp.gpu_path_on_cpu():
        gpu_path = augment(op, clips, ORDER, EXTRA)
    for label, other in (("torch path", plain), ("CUDA's path on the CPU", gpu_path)):
        for k, v in fused.params[0].items():
            if k != "__name__":
                assert torch.equal(other.params[0][k], v), f"{name}: parameter {k!r} ({label})"
        assert torch.equal(other.lengths, fused.lengths)
        for b in range(len(ORDER)):
            n = int(fused.lengths[b])
            assert_same_features(other.features[b, :, :n], fused.features[b, :, :n], op.domain != "spec",
                                 f"{name} row {b}, kernels vs {label}", power_tol=1e-5, log_tol=1e-3)
            assert (other.features[b, :, n:] == 0).all() and (fused.features[b, :, n:] == 0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU box)")
@pytest.mark.parametrize("name,kw", CASES)
def test_cpu_cuda_parity(name, kw, clips, banks, batch_runs):
    op, cpu = case_run(name, kw, clips, banks, batch_runs)
    gpu = augment(op, clips, ORDER, EXTRA, device="cuda")
    for k, v in cpu.params[0].items():
        if k == "__name__":
            continue
        g = gpu.params[0][k].cpu()
        if v.dtype.is_floating_point:
            torch.testing.assert_close(g, v, rtol=1e-5, atol=1e-6, msg=f"{name}: parameter {k!r}")
        else:
            assert torch.equal(g, v), f"{name}: parameter {k!r}"
    assert torch.equal(gpu.lengths.cpu(), cpu.lengths)
    for b in range(len(ORDER)):
        n = int(cpu.lengths[b])
        assert_same_features(gpu.features[b, :, :n], cpu.features[b, :, :n], op.domain != "spec",
                             f"{name} row {b} on CUDA", power_tol=1e-5, log_tol=1e-3)
    # frame targets: nearest-frame rounding may land on the neighbour where the source is x.5
    assert int((gpu.frame_targets.cpu() - cpu.frame_targets).abs().max()) <= 1
    torch.testing.assert_close(gpu.targets.cpu(), cpu.targets, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(n for n, cls in REGISTRY.items() if not cls.draw_reads_batch))
def test_ops_drawn_before_the_chain_read_nothing_of_the_batch(name, clips, banks):
    """A policy draws the leading ops that declare ``draw_reads_batch = False`` before its
    chain runs, on the batch as it enters: such an op's parameters must not depend on the
    batch (content, lengths, width) at all, only on the keys. An op that reads the batch
    keeps the default (True) and is drawn in its turn (the other tests)."""
    from specstream.augment.core import Context

    op = build(name, {}, banks)
    ids = torch.from_numpy(key_ids([clips.keys[i] for i in ORDER]))
    w, L, _, _ = clips.wave_batch(ORDER, 0)
    other = WaveBatch(torch.randn(len(ORDER), w.shape[1] + 777) * 3, (L // 2).clamp(min=1), SR, None)
    a = op.sample(Context(ids, 4, 1, 2), WaveBatch(w, L, SR, None))
    b = op.sample(Context(ids, 4, 1, 2), other)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k], (name, k)
