"""specstream.losses: mixup-aware CTC and cross-entropy (pure torch)."""
import math

import pytest
import torch
import torch.nn.functional as F

from specstream.losses import mixed_ctc_loss, mixed_cross_entropy


def _case(seed=0, B=5, T=40, V=12, U=8, U2=6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, requires_grad=True)
    in_len = torch.randint(T // 2, T + 1, (B,), generator=g)
    tok_len = torch.randint(1, U + 1, (B,), generator=g)
    tokens = torch.randint(1, V, (B, U), generator=g) * (torch.arange(U)[None] < tok_len[:, None])
    mix_len = torch.randint(1, U2 + 1, (B,), generator=g)
    mix_tokens = torch.randint(1, V, (B, U2), generator=g) * (torch.arange(U2)[None] < mix_len[:, None])
    return logits, in_len, tokens, tok_len, mix_tokens, mix_len


def _ctc(logits, in_len, tokens, tok_len, reduction="mean"):
    return F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), tokens, in_len, tok_len, blank=0,
                      reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ctc_equals_torch_ctc_without_mixing(reduction):
    logits, in_len, tokens, tok_len, mix_tokens, mix_len = _case()
    want = _ctc(logits, in_len, tokens, tok_len, reduction)
    lp = logits.log_softmax(-1)
    # plain (no mix columns), explicit tensors
    assert torch.allclose(mixed_ctc_loss(lp, in_len, tokens, tok_len, reduction=reduction), want)
    # lam = 1 everywhere: the partner never counts
    ones = torch.ones(len(tokens))
    got = mixed_ctc_loss(lp, in_len, tokens, tok_len, mix_lambda=ones, mix_tokens=mix_tokens,
                         mix_token_length=mix_len, reduction=reduction)
    assert torch.allclose(got, want)
    # the batch dict form, and time-major input
    batch = {"tokens": tokens, "token_length": tok_len, "mix_lambda": ones, "mix_tokens": mix_tokens,
             "mix_token_length": mix_len, "key": ["a"] * len(tokens)}
    assert torch.allclose(mixed_ctc_loss(lp, in_len, batch, reduction=reduction), want)
    assert torch.allclose(mixed_ctc_loss(lp.transpose(0, 1), in_len, batch=batch, reduction=reduction,
                                         time_major=True), want)
    # lengths inferred from the padding (0 = blank = padding)
    assert torch.allclose(mixed_ctc_loss(lp, in_len, tokens, reduction=reduction), want)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ctc_is_the_convex_combination_of_two_ctc_losses(reduction):
    logits, in_len, tokens, tok_len, mix_tokens, mix_len = _case(1)
    lp = logits.log_softmax(-1)
    own = _ctc(logits, in_len, tokens, tok_len, reduction="none")
    other = _ctc(logits, in_len, mix_tokens, mix_len, reduction="none")
    lam = torch.tensor([0.3, 0.5, 0.9, 1.0, 0.05])
    if reduction == "mean":
        want = (lam * own / tok_len + (1 - lam) * other / mix_len).mean()
    elif reduction == "sum":
        want = (lam * own + (1 - lam) * other).sum()
    else:
        want = lam * own + (1 - lam) * other
    got = mixed_ctc_loss(lp, in_len, tokens, tok_len, mix_lambda=lam, mix_tokens=mix_tokens,
                         mix_token_length=mix_len, reduction=reduction)
    assert torch.allclose(got, want, rtol=1e-5)
    # one lambda for the whole batch: the combination of two batch-level ctc_loss calls
    if reduction != "none":
        want = 0.7 * _ctc(logits, in_len, tokens, tok_len, reduction) + 0.3 * _ctc(logits, in_len, mix_tokens,
                                                                                     mix_len, reduction)
        got = mixed_ctc_loss(lp, in_len, tokens, tok_len, mix_lambda=torch.tensor(0.7), mix_tokens=mix_tokens,
                             mix_token_length=mix_len, reduction=reduction)
        assert torch.allclose(got, want, rtol=1e-5)


def test_ctc_gradients_flow_to_both_terms():
    logits, in_len, tokens, tok_len, mix_tokens, mix_len = _case(2)
    lam = torch.full((len(tokens),), 0.6)
    loss = mixed_ctc_loss(logits.log_softmax(-1), in_len, tokens, tok_len, mix_lambda=lam,
                          mix_tokens=mix_tokens, mix_token_length=mix_len)
    loss.backward()
    g = logits.grad
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # the gradient is the same combination of the two terms' gradients
    x = logits.detach().clone().requires_grad_(True)
    want = 0.6 * _ctc(x, in_len, tokens, tok_len) + 0.4 * _ctc(x, in_len, mix_tokens, mix_len)
    want.backward()
    assert torch.allclose(g, x.grad, atol=1e-6)
    # frames past a row's input length get no gradient
    for b, n in enumerate(in_len.tolist()):
        assert g[b, n:].abs().sum() == 0


def test_ctc_unmixed_row_with_impossible_partner_stays_finite():
    logits, in_len, tokens, tok_len, _, _ = _case(3, T=12, U=3)
    in_len = torch.full((len(tokens),), 12)
    long_partner = torch.randint(1, 12, (len(tokens), 30))  # 30 tokens cannot fit 12 frames
    lam = torch.tensor([1.0, 1.0, 0.5, 1.0, 1.0])
    lp = logits.log_softmax(-1)
    loss = mixed_ctc_loss(lp, in_len, tokens, tok_len, mix_lambda=lam, mix_tokens=long_partner,
                          reduction="none")
    assert torch.isfinite(loss[[0, 1, 3, 4]]).all() and torch.isinf(loss[2])
    loss = mixed_ctc_loss(lp, in_len, tokens, tok_len, mix_lambda=lam, mix_tokens=long_partner,
                          reduction="none", zero_infinity=True)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_ctc_bad_input_is_a_clear_error():
    logits, in_len, tokens, tok_len, mix_tokens, mix_len = _case(4)
    lp = logits.log_softmax(-1)
    with pytest.raises(ValueError, match="mix_lambda must lie in"):
        mixed_ctc_loss(lp, in_len, tokens, tok_len, mix_lambda=torch.full((5,), 1.5), mix_tokens=mix_tokens)
    with pytest.raises(ValueError, match="without mix_tokens"):
        mixed_ctc_loss(lp, in_len, tokens, tok_len, mix_lambda=torch.ones(5))
    with pytest.raises(KeyError, match="labels.tokenizer"):
        mixed_ctc_loss(lp, in_len, {"target": tokens})
    with pytest.raises(ValueError, match="outside"):
        mixed_ctc_loss(lp, in_len, tokens + 100, tok_len)
    with pytest.raises(ValueError, match="exceeds"):
        mixed_ctc_loss(lp, in_len + 100, tokens, tok_len)
    with pytest.raises(ValueError, match="reduction"):
        mixed_ctc_loss(lp, in_len, tokens, tok_len, reduction="avg")


def test_cross_entropy_classification():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 4, generator=g, requires_grad=True)
    y = torch.randint(0, 4, (6,), generator=g)
    y2 = torch.randint(0, 4, (6,), generator=g)
    assert torch.allclose(mixed_cross_entropy(logits, y), F.cross_entropy(logits, y))
    lam = torch.tensor([1.0, 0.2, 0.5, 0.8, 0.6, 1.0])
    got = mixed_cross_entropy(logits, y, mix_lambda=lam, mix_targets=y2)
    want = (lam * F.cross_entropy(logits, y, reduction="none")
            + (1 - lam) * F.cross_entropy(logits, y2, reduction="none")).mean()
    assert torch.allclose(got, want)
    got.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_cross_entropy_classification_skips_rows_without_a_label():
    """Class -1 ("no label", labels.required: false) costs 0 and the mean is over the
    labelled rows, as trainer.loss_fn; mixing such a row (or with such a partner) is an
    error, since mixup never does."""
    from specstream.trainer import loss_fn

    g = torch.Generator().manual_seed(7)
    logits = torch.randn(6, 4, generator=g, requires_grad=True)
    y = torch.tensor([0, -1, 2, 3, -1, 1])
    has = y >= 0
    got = mixed_cross_entropy(logits, y)
    torch.testing.assert_close(got, F.cross_entropy(logits[has], y[has]))
    torch.testing.assert_close(got, loss_fn(logits, y, False))
    lam = torch.tensor([0.3, 1.0, 0.5, 1.0, 1.0, 0.7])
    y2 = torch.tensor([2, -1, 0, 1, -1, 3])  # an unlabelled row's partner is itself
    got = mixed_cross_entropy(logits, y, mix_lambda=lam, mix_targets=y2)
    per = lam * F.cross_entropy(logits, y.clamp(min=0), reduction="none") \
        + (1 - lam) * F.cross_entropy(logits, y2.clamp(min=0), reduction="none")
    torch.testing.assert_close(got, per[has].mean())
    none = mixed_cross_entropy(logits, y, mix_lambda=lam, mix_targets=y2, reduction="none")
    assert torch.equal(none[~has], torch.zeros(2)) and torch.allclose(none[has], per[has])
    got.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[~has].abs().sum() == 0
    for bad_lam, bad_y2 in ((torch.tensor([0.3, 0.5, 0.5, 1.0, 1.0, 0.7]), y2),
                            (lam, torch.tensor([-1, -1, 0, 1, -1, 3]))):
        with pytest.raises(ValueError, match="mix_lambda < 1"):
            mixed_cross_entropy(logits, y, mix_lambda=bad_lam, mix_targets=bad_y2)
    with pytest.raises(ValueError, match="outside"):
        mixed_cross_entropy(logits, torch.tensor([0, -2, 2, 3, 0, 1]))
    masked = logits.detach().clone()
    masked[1] = -math.inf  # an unlabelled row's non-finite logits: out of loss and gradient
    masked.requires_grad_(True)
    loss = mixed_cross_entropy(masked, y, mix_lambda=lam, mix_targets=y2)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(masked.grad).all())


def test_cross_entropy_sequences():
    g = torch.Generator().manual_seed(6)
    B, U, U2, V = 4, 7, 5, 9
    logits = torch.randn(B, U, V, generator=g, requires_grad=True)
    mix_logits = torch.randn(B, U2, V, generator=g, requires_grad=True)
    n = torch.tensor([7, 3, 5, 1])
    n2 = torch.tensor([2, 5, 4, 3])
    t = torch.randint(1, V, (B, U), generator=g) * (torch.arange(U)[None] < n[:, None])
    t2 = torch.randint(1, V, (B, U2), generator=g) * (torch.arange(U2)[None] < n2[:, None])

    def ce(lg, tt, nn):  # per-sample summed token CE over valid positions
        return torch.stack([F.cross_entropy(lg[b, :k], tt[b, :k], reduction="sum") for b, k in enumerate(nn.tolist())])

    assert torch.allclose(mixed_cross_entropy(logits, t, target_length=n), (ce(logits, t, n) / n).mean())
    assert torch.allclose(mixed_cross_entropy(logits, t), (ce(logits, t, n) / n).mean())  # padding = 0
    lam = torch.tensor([0.5, 1.0, 0.75, 0.25])
    batch = {"tokens": t, "token_length": n, "mix_lambda": lam, "mix_tokens": t2, "mix_token_length": n2}
    got = mixed_cross_entropy(logits, batch, mix_logits=mix_logits, reduction="none")
    want = lam * ce(logits, t, n) + (1 - lam) * ce(mix_logits, t2, n2)
    assert torch.allclose(got, want, rtol=1e-5)
    got.sum().backward()
    assert logits.grad.abs().sum() > 0 and mix_logits.grad.abs().sum() > 0
    assert mix_logits.grad[1].abs().sum() == 0  # lam = 1: the partner term does not count
    with pytest.raises(ValueError, match="mix_logits"):
        mixed_cross_entropy(logits[:, :4], t[:, :4], mix_lambda=lam, mix_targets=t2)
