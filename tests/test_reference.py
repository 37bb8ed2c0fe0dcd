"""The reference (and so the layers on the `torch` backend) against docs/rule.md section 2 written out
per sample: e_bij[t] = alpha_pre psi_bi[t] trpre_bj[t] + alpha_post trpost_bi[t-1] x_bj[t],
dW_ij = sum_t sum_b L_bi[t] e_bij[t], with the LIF simulated step by step in this file."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close_policy, backend
from stllr_kernels.nn import Conv2dSTLLR, LinearRecSTLLR, LinearSTLLR

# docs/rule.md section 3, written again here on purpose: the tests must not read the table they check.
PSI = {
    "fast_sigmoid": lambda u: 1.0 / (1.0 + 100.0 * u.abs()) ** 2,
    "triangle": lambda u: 0.3 * torch.clamp(1.0 - u.abs(), min=0.0),
    "sigmoid": lambda u: 4.0 * torch.sigmoid(4 * u) * (1.0 - torch.sigmoid(4 * u)),
}
T = 4


def random_factors(gen=None):
    """lambdas in (0, 1), alpha_post negative or positive, alpha_pre around 1."""
    lp, lq = torch.rand(2).tolist()
    ap = (torch.rand(1).item() - 0.7) * 2
    aq = 0.5 + torch.rand(1).item()
    return [lp, lq, ap, aq]


def simulate(currents_fn, inputs, n_shape, beta, theta, factors, psi, reset, post):
    """Step the LIF of docs/rule.md section 1 by hand; returns per-step dicts of what the rule needs."""
    lam_post, lam_pre = factors[0], factors[1]
    v = torch.zeros(n_shape, dtype=torch.float64)
    trpost = torch.zeros(n_shape, dtype=torch.float64)
    trpre = torch.zeros_like(inputs[0])
    s_prev = torch.zeros(n_shape, dtype=torch.float64)
    trrec = torch.zeros(n_shape, dtype=torch.float64)
    steps = []
    for x in inputs:
        trpre = lam_pre * trpre + x
        v = beta * v + currents_fn(x, s_prev)
        u = v - theta
        s = (u > 0).double()
        v = v - theta * s if reset == "soft" else v * (1 - s)
        p = PSI[psi](u)
        post_term = s if post == "spike" else p
        steps.append(dict(x=x, trpre=trpre, trpost_prev=trpost, psi=p, s=s, causal=post_term,
                          s_prev=s_prev, trrec_prev=trrec))
        trpost = lam_post * trpost + post_term
        trrec = lam_pre * trrec + s
        s_prev = s
    return steps


def explicit_linear_grads(steps, grads, weight, factors, key_x="x", key_tr="trpre"):
    """dW, db, dx[t] by explicit per-sample outer products (B x N x K temporaries on purpose)."""
    _, _, a_post, a_pre = factors
    dW = torch.zeros_like(weight)
    db = torch.zeros(weight.shape[0], dtype=weight.dtype)
    dxs = []
    for st, L in zip(steps, grads):
        e = (a_pre * st["causal"][:, :, None] * st[key_tr][:, None, :]
             + a_post * st["trpost_prev"][:, :, None] * st[key_x][:, None, :])
        dW += (L[:, :, None] * e).sum(0)
        db += (L * st["psi"]).sum(0)
        dxs.append(torch.einsum("bi,bi,ij->bj", L, st["psi"], weight))
    return dW, db, dxs


def run_layer(layer, inputs, grads):
    """Step a layer through the inputs with loss_t = <s[t], grads[t]> and a backward per step."""
    layer.reset_state()
    xs = [x.clone().requires_grad_() for x in inputs]
    outs = []
    for x, g in zip(xs, grads):
        s = layer(x)
        (s * g).sum().backward()
        outs.append(s.detach())
    return outs, [x.grad for x in xs]


def scalar_params(layer):
    beta = torch.sigmoid(layer.leak.detach().double()).item()
    theta = max(layer.threshold.item(), 0.5)
    return beta, theta


@pytest.mark.parametrize("psi", sorted(PSI))
@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("post", ["psi", "spike"])
@pytest.mark.parametrize("B,K,N", [(1, 7, 5), (3, 13, 11)])
def test_linear_layer_matches_per_sample_sums(seed, psi, reset, post, B, K, N):
    factors = random_factors()
    layer = LinearSTLLR(K, N, normalization=False, factors=factors, psi=psi, reset_mechanism=reset,
                        post=post, leak=0.3, threshold=0.55).double()
    with torch.no_grad():
        layer.weight.mul_(4.0)  # enough current that some neurons spike
        layer.bias[0] = 50.0  # and one at every step, whatever the seed
    inputs = [(torch.rand(B, K) < 0.5).double() for _ in range(T)]
    grads = [torch.randn(B, N, dtype=torch.float64) for _ in range(T)]
    with backend("torch"):
        outs, dxs = run_layer(layer, inputs, grads)
    beta, theta = scalar_params(layer)
    W, b = layer.weight.detach(), layer.bias.detach()
    steps = simulate(lambda x, _: x @ W.t() + b, inputs, (B, N), beta, theta, factors, psi, reset, post)
    dW, db, dx_exp = explicit_linear_grads(steps, grads, W, factors)
    for out, st in zip(outs, steps):
        assert_close_policy(out, st["s"])
    assert_close_policy(layer.weight.grad, dW, reduction=B * T)
    assert_close_policy(layer.bias.grad, db, reduction=B * T)
    for got, want in zip(dxs, dx_exp):
        assert_close_policy(got, want, reduction=N)
    assert any(o.any() for o in outs), "no spike at all: the test would not exercise the reset"


@pytest.mark.parametrize("psi", sorted(PSI))
@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("B,K,N", [(1, 5, 3), (4, 9, 6)])
def test_recurrent_layer_matches_per_sample_sums(seed, psi, reset, B, K, N):
    factors = random_factors()
    layer = LinearRecSTLLR(K, N, normalization=False, factors=factors, psi=psi,
                           reset_mechanism=reset, leak=0.5).double()
    with torch.no_grad():
        layer.weight.mul_(6.0)
        layer.weight_rec.mul_(3.0)
        layer.bias.fill_(0.4)  # keeps some neurons spiking so that W_rec sees non-zero s[t-1]
        layer.bias[0] = 50.0  # and one at every step, whatever the seed
    inputs = [(torch.rand(B, K) < 0.5).double() for _ in range(T + 1)]
    grads = [torch.randn(B, N, dtype=torch.float64) for _ in range(T + 1)]
    with backend("torch"):
        outs, dxs = run_layer(layer, inputs, grads)
    beta, theta = scalar_params(layer)
    W, b, Wr = layer.weight.detach(), layer.bias.detach(), layer.weight_rec.detach()
    steps = simulate(lambda x, s_prev: x @ W.t() + b + s_prev @ Wr.t(), inputs, (B, N), beta, theta,
                     factors, psi, reset, "psi")
    dW, db, dx_exp = explicit_linear_grads(steps, grads, W, factors)
    dWr, _, _ = explicit_linear_grads(steps, grads, Wr, factors, key_x="s_prev", key_tr="trrec_prev")
    for out, st in zip(outs, steps):
        assert_close_policy(out, st["s"])
    assert_close_policy(layer.weight.grad, dW, reduction=B * T)
    assert_close_policy(layer.weight_rec.grad, dWr, reduction=B * T)
    assert_close_policy(layer.bias.grad, db, reduction=B * T)
    for got, want in zip(dxs, dx_exp):
        assert_close_policy(got, want, reduction=N)
    assert any(o.any() for o in outs[:-1]), "no spike before the last step: W_rec untested"


def test_readout_layer_matches_per_sample_sums(seed):
    B, K, N = 3, 7, 4
    layer = LinearSTLLR(K, N, accumulate=True, leak=5.0, factors=[0, 0.99, 0, 1]).double()
    inputs = [(torch.rand(B, K) < 0.5).double() for _ in range(T)]
    grads = [torch.randn(B, N, dtype=torch.float64) for _ in range(T)]
    with backend("torch"):
        outs, dxs = run_layer(layer, inputs, grads)
    beta = torch.sigmoid(torch.tensor(5.0, dtype=torch.float64))
    W, b = layer.weight.detach(), layer.bias.detach()
    v = torch.zeros(B, N, dtype=torch.float64)
    trpre = torch.zeros(B, K, dtype=torch.float64)
    dW = torch.zeros_like(W)
    for t, (x, L) in enumerate(zip(inputs, grads)):
        v = beta * v + x @ W.t() + b
        trpre = 0.99 * trpre + x
        assert_close_policy(outs[t], v, reduction=K * (t + 1))
        dW += torch.einsum("bi,bj->ij", L, trpre)
        assert_close_policy(dxs[t], L @ W, reduction=N)
    assert_close_policy(layer.weight.grad, dW, reduction=B * T)
    assert_close_policy(layer.bias.grad, sum(g.sum(0) for g in grads), reduction=B * T)
    assert layer.gain is None, "the readout uses the raw weight"


def explicit_conv_dW(steps, grads, weight_shape, factors, stride, padding, dilation, groups):
    """dW by explicit per-sample, per-position sums over unfolded patches."""
    _, _, a_post, a_pre = factors
    out_c, in_per_group, kh, kw = weight_shape
    dW = torch.zeros(weight_shape, dtype=torch.float64)
    for st, L in zip(steps, grads):
        for g in range(groups):
            ci = slice(g * in_per_group, (g + 1) * in_per_group)
            co = slice(g * out_c // groups, (g + 1) * out_c // groups)
            unf = lambda z: F.unfold(z[:, ci], (kh, kw), dilation, padding, stride)  # noqa: E731
            x_p, tr_p = unf(st["x"]), unf(st["trpre"])  # [B, Cg*kh*kw, P]
            Lg = L[:, co].flatten(2)
            pre = (Lg * st["causal"][:, co].flatten(2))
            post = (Lg * st["trpost_prev"][:, co].flatten(2))
            e = (a_pre * pre[:, :, None, :] * tr_p[:, None, :, :]
                 + a_post * post[:, :, None, :] * x_p[:, None, :, :])  # [B, O, CKK, P] per sample
            dW[co] += e.sum((0, 3)).view(-1, in_per_group, kh, kw)
    return dW


@pytest.mark.parametrize("psi", sorted(PSI))
@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("geom", [
    dict(B=1, C=2, O=3, H=5, k=3, stride=1, padding=1, dilation=1, groups=1),
    dict(B=2, C=4, O=6, H=7, k=3, stride=2, padding=2, dilation=2, groups=2),
    dict(B=3, C=3, O=5, H=6, k=2, stride=1, padding=0, dilation=1, groups=1),
])
def test_conv_layer_matches_per_sample_sums(seed, psi, reset, geom):
    post = "spike" if psi == "triangle" and reset == "hard" else "psi"
    factors = random_factors()
    g = geom
    layer = Conv2dSTLLR(g["C"], g["O"], g["k"], g["stride"], g["padding"], g["dilation"], g["groups"],
                        normalization=False, factors=factors, psi=psi, reset_mechanism=reset,
                        post=post, leak=0.0).double()
    with torch.no_grad():
        layer.weight.mul_(3.0)
    inputs = [(torch.rand(g["B"], g["C"], g["H"], g["H"]) < 0.5).double() for _ in range(T)]
    out_hw = layer.output_shape(g["H"], g["H"])
    grads = [torch.randn(g["B"], g["O"], *out_hw, dtype=torch.float64) for _ in range(T)]
    with backend("torch"):
        outs, dxs = run_layer(layer, inputs, grads)
    beta, theta = scalar_params(layer)
    W, b = layer.weight.detach(), layer.bias.detach()
    conv = lambda x, _: F.conv2d(x, W, b, g["stride"], g["padding"], g["dilation"], g["groups"])  # noqa: E731
    steps = simulate(conv, inputs, (g["B"], g["O"], *out_hw), beta, theta, factors, psi, reset, post)
    dW = explicit_conv_dW(steps, grads, W.shape, factors, g["stride"], g["padding"], g["dilation"],
                          g["groups"])
    db = sum((L * st["psi"]).sum((0, 2, 3)) for st, L in zip(steps, grads))
    for out, st in zip(outs, steps):
        assert_close_policy(out, st["s"])
    red = g["B"] * out_hw[0] * out_hw[1] * T
    assert_close_policy(layer.weight.grad, dW, reduction=red)
    assert_close_policy(layer.bias.grad, db, reduction=red)
    for x, got, st, L in zip(inputs, dxs, steps, grads):
        # dx is the conv input-gradient of L*psi: check it against autograd of the plain conv
        xr = x.clone().requires_grad_()
        F.conv2d(xr, W, None, g["stride"], g["padding"], g["dilation"], g["groups"]).backward(L * st["psi"])
        assert_close_policy(got, xr.grad, reduction=red)


def plain_standardize(w, gain):
    """docs/rule.md section 4 written out: gain * (W - mean) / sqrt(var * fan_in + 1e-4)."""
    rows = w.reshape(w.shape[0], -1)
    n = rows.shape[1]
    mean = rows.sum(1, keepdim=True) / n
    var = ((rows - mean) ** 2).sum(1, keepdim=True) / (n - 1)
    return (gain.reshape(-1, 1) * (rows - mean) / torch.sqrt(var * n + 1e-4)).reshape(w.shape)


@pytest.mark.parametrize("kind", ["linear", "conv", "recurrent"])
def test_weight_standardization_gradients(seed, kind):
    """With normalization the rule's dW_hat flows back through the standardization to W and gain."""
    B = 3
    if kind == "conv":
        layer = Conv2dSTLLR(2, 4, 3, padding=1, leak=0.0).double()
        inputs = [(torch.rand(B, 2, 5, 5) < 0.5).double() for _ in range(T)]
        grads = [torch.randn(B, 4, 5, 5, dtype=torch.float64) for _ in range(T)]
    else:
        cls = LinearRecSTLLR if kind == "recurrent" else LinearSTLLR
        layer = cls(9, 6).double()
        inputs = [(torch.rand(B, 9) < 0.5).double() for _ in range(T)]
        grads = [torch.randn(B, 6, dtype=torch.float64) for _ in range(T)]
    with torch.no_grad():
        layer.gain.uniform_(0.5, 3.0)
    with backend("torch"):
        run_layer(layer, inputs, grads)
    # The same run with the standardized weight frozen into a plain layer gives dW_hat.
    plain_kwargs = dict(normalization=False, factors=layer.factors, psi=layer.rule.psi,
                        leak=layer.leak.item(), threshold=layer.threshold.item())
    if kind == "conv":
        plain = Conv2dSTLLR(2, 4, 3, padding=1, **plain_kwargs).double()
    else:
        plain = type(layer)(9, 6, **plain_kwargs).double()
    with torch.no_grad():
        plain.weight.copy_(plain_standardize(layer.weight, layer.gain))
        plain.bias.copy_(layer.bias)
        if kind == "recurrent":
            plain.weight_rec.copy_(plain_standardize(layer.weight_rec, layer.gain_rec))
    with backend("torch"):
        run_layer(plain, inputs, grads)
    w = layer.weight.detach().clone().requires_grad_()
    gain = layer.gain.detach().clone().requires_grad_()
    dw, dgain = torch.autograd.grad(plain_standardize(w, gain), (w, gain), plain.weight.grad)
    # dW_hat sums batch, steps and positions; the standardization's backward then sums a row
    red = B * T * (25 if kind == "conv" else 1) * layer.weight[0].numel()
    assert_close_policy(layer.weight.grad, dw, reduction=red)
    assert_close_policy(layer.gain.grad, dgain, reduction=red)
    if kind == "recurrent":
        w = layer.weight_rec.detach().clone().requires_grad_()
        gain = layer.gain_rec.detach().clone().requires_grad_()
        dw, dgain = torch.autograd.grad(plain_standardize(w, gain), (w, gain), plain.weight_rec.grad)
        assert_close_policy(layer.weight_rec.grad, dw, reduction=red)
        assert_close_policy(layer.gain_rec.grad, dgain, reduction=red)


def test_psi_table_matches_spec():
    from stllr_kernels.psi import PSI_FUNCTIONS
    u = torch.linspace(-2, 2, 101, dtype=torch.float64)
    assert set(PSI_FUNCTIONS) == set(PSI)
    for name, fn in PSI.items():
        assert_close_policy(PSI_FUNCTIONS[name](u), fn(u))
    for name, at_zero in (("fast_sigmoid", 1.0), ("triangle", 0.3), ("sigmoid", 1.0)):
        assert_close_policy(PSI_FUNCTIONS[name](torch.tensor(0.0)), torch.tensor(at_zero), msg=name)
