"""Double backward of sliding-window attention (CPU kernel): gradients of gradients against autograd of the dense
float64 reference, partial cotangents, Hessian-vector products, gradgradcheck, a second-order training step, opcheck,
reproducibility and argument errors."""

import itertools

import pytest
import torch
from helpers import RecordedCalls
from torch.library import opcheck

import ttt_kernels  # noqa: F401  (registers the ops)
from ttt_kernels import reference
from ttt_kernels.ops import swa_attention

_ops = torch.ops.ttt_kernels

# (batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, window)
SHAPES = [
    (1, 1, 1, 1, 1, 64, 1),
    (2, 7, 7, 2, 1, 5, 3),  # GQA, tiny head_dim
    (1, 97, 120, 4, 2, 16, 20),  # seqlen_q < seqlen_k
    (1, 200, 200, 2, 2, 64, 1000),  # window > seqlen: causal
    (2, 100, 150, 3, 3, 80, 49),
    (1, 1, 300, 2, 1, 96, 77),  # one query (decode)
    (1, 150, 150, 1, 1, 128, 1),  # window 1: each query sees only itself
]
SLOW_SHAPES = [
    (1, 1025, 1025, 2, 1, 64, 300),
    (1, 500, 1500, 4, 2, 128, 700),
]
# Which of the cotangents (of dq, dk, dv) are defined: all, each alone, and pairs.
COTANGENTS = [(1, 1, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1), (1, 0, 1)]
TOL = {torch.float64: 1e-12, torch.float32: 5e-5}


def make_inputs(shape, dtype, seed=0):
    """Random q, k, v, dout and cotangents (gdq, gdk, gdv) of dq, dk, dv (float64 values rounded to dtype)."""
    b, sq, sk, hq, hkv, d, window = shape
    g = torch.Generator().manual_seed(seed)
    q_shape, k_shape = (b, sq, hq, d), (b, sk, hkv, d)
    shapes = (q_shape, k_shape, k_shape, q_shape, q_shape, k_shape, k_shape)
    q, k, v, dout, gdq, gdk, gdv = (torch.randn(*s, generator=g, dtype=torch.float64).to(dtype) for s in shapes)
    return (q, k, v, dout), (gdq, gdk, gdv), window


def double_backward(attention, q, k, v, dout, cotangents, window, scale=None):
    """The gradients w.r.t. (q, k, v, dout) of <gdq, dq> + <gdk, dk> + <gdv, dv> (absent cotangents: None), dq, dk,
    dv the gradients of <attention(q, k, v), dout>."""
    q, k, v, dout = (t.detach().requires_grad_() for t in (q, k, v, dout))
    out = attention(q, k, v, window, scale=scale)
    grads = torch.autograd.grad(out, (q, k, v), dout, create_graph=True)
    loss = sum((g * c).sum() for g, c in zip(grads, cotangents) if c is not None)
    result = torch.autograd.grad(loss, (q, k, v, dout), allow_unused=True)
    return tuple(torch.zeros_like(t) if r is None else r for t, r in zip((q, k, v, dout), result))


def rel_err(actual, want):
    return ((actual.double() - want).abs().max() / want.abs().max().clamp(min=1)).item()


def check_against_reference(shape, dtype, which=(1, 1, 1), seed=0):
    inputs, cotangents, window = make_inputs(shape, dtype, seed)
    cotangents = tuple(c if w else None for c, w in zip(cotangents, which))
    got = double_backward(swa_attention, *inputs, cotangents, window)
    want = double_backward(
        reference.swa_attention,
        *(t.double() for t in inputs),
        tuple(None if c is None else c.double() for c in cotangents),
        window,
    )
    for name, a, w in zip(("grad_q", "grad_k", "grad_v", "grad_dout"), got, want):
        assert a.dtype == dtype and a.shape == w.shape, name
        assert rel_err(a, w) <= TOL[dtype], f"{name}: {rel_err(a, w):.3g} for {shape}, cotangents {which}"


@pytest.mark.parametrize("which", COTANGENTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference_float64(shape, which):
    check_against_reference(shape, torch.float64, which)


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference_float32(shape):
    check_against_reference(shape, torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SLOW_SHAPES)
def test_matches_reference_long(shape, dtype):
    check_against_reference(shape, dtype)


def test_random_windows_and_lengths():
    g = torch.Generator().manual_seed(1)
    for seed in range(6):
        sk = int(torch.randint(1, 260, (), generator=g))
        sq = int(torch.randint(1, sk + 1, (), generator=g))
        window = int(torch.randint(1, sk + 50, (), generator=g))
        hkv = int(torch.randint(1, 3, (), generator=g))
        shape = (1, sq, sk, 2 * hkv, hkv, 24, window)
        check_against_reference(shape, torch.float64, COTANGENTS[seed % len(COTANGENTS)], seed)


def test_custom_scale():
    inputs, cotangents, window = make_inputs((1, 50, 60, 2, 1, 32, 17), torch.float64)
    got = double_backward(swa_attention, *inputs, cotangents, window, scale=-0.7)
    want = double_backward(reference.swa_attention, *inputs, cotangents, window, scale=-0.7)
    assert max(rel_err(a, w) for a, w in zip(got, want)) <= 1e-12


def test_gradgradcheck():
    for shape in ((1, 5, 9, 2, 1, 8, 4), (2, 6, 6, 2, 2, 3, 10), (1, 11, 11, 1, 1, 4, 1)):
        (q, k, v, _), _, window = make_inputs(shape, torch.float64)
        inputs = tuple(t.requires_grad_() for t in (q, k, v))
        assert torch.autograd.gradgradcheck(lambda q, k, v, window=window: swa_attention(q, k, v, window), inputs)


def test_gradgradcheck_partial_cotangents():
    """Only some of dq, dk, dv reach the second loss: gradgradcheck of functions returning one or two of them."""
    (q, k, v, dout), _, window = make_inputs((1, 7, 10, 2, 1, 6, 5), torch.float64)
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    for keep in ((0,), (1,), (2,), (1, 2), (0, 2)):

        def first_grads(q, k, v, keep=keep):
            grads = torch.autograd.grad(swa_attention(q, k, v, window), (q, k, v), dout, create_graph=True)
            return tuple(grads[i] for i in keep)

        assert torch.autograd.gradcheck(first_grads, inputs)


def test_hessian_vector_products():
    """grad(grad(f)) twice through create_graph: H v for f = sum(out * w), against the reference."""
    (q, k, v, w), (vq, vk, vv), window = make_inputs((2, 40, 64, 4, 2, 16, 23), torch.float64, seed=3)

    def hvp(attention):
        x = tuple(t.detach().requires_grad_() for t in (q, k, v))
        f = (attention(*x, window) * w).sum()
        grads = torch.autograd.grad(f, x, create_graph=True)
        dot = sum((g * d).sum() for g, d in zip(grads, (vq, vk, vv)))
        return torch.autograd.grad(dot, x, create_graph=True)

    got, want = hvp(swa_attention), hvp(reference.swa_attention)
    for a, b in zip(got, want):
        assert rel_err(a, b) <= 1e-12


def test_second_order_training_step():
    """A tiny inner SGD step on projections through swa_attention, then the outer gradient through that step
    (gradients of gradients w.r.t. the initial weights), equals the reference's."""
    torch.manual_seed(0)
    dim, heads, kv_heads, window, lr = 32, 4, 2, 9, 0.3
    hd = dim // heads
    x_inner, x_outer = torch.randn(2, 2, 37, dim, dtype=torch.float64)
    y_inner, y_outer = torch.randn(2, 2, 37, dim, dtype=torch.float64)
    w0 = [torch.randn(dim, n, dtype=torch.float64) / dim**0.5 for n in (dim, kv_heads * hd, kv_heads * hd, dim)]

    def loss(attention, weights, x, y):
        wq, wk, wv, wo = weights
        b, s, _ = x.shape
        q = (x @ wq).view(b, s, heads, hd)
        k, v = ((x @ w).view(b, s, kv_heads, hd) for w in (wk, wv))
        return ((attention(q, k, v, window).reshape(b, s, dim) @ wo - y) ** 2).mean()

    def outer_grads(attention):
        weights = [w.clone().requires_grad_() for w in w0]
        inner = torch.autograd.grad(loss(attention, weights, x_inner, y_inner), weights, create_graph=True)
        stepped = [w - lr * g for w, g in zip(weights, inner)]
        return torch.autograd.grad(loss(attention, stepped, x_outer, y_outer), weights)

    got, want = outer_grads(swa_attention), outer_grads(reference.swa_attention)
    for a, b in zip(got, want):
        assert rel_err(a, b) <= 1e-12
    # The second-order terms matter: the same step taken first order (inner gradients as constants) differs.
    weights = [w.clone().requires_grad_() for w in w0]
    inner = torch.autograd.grad(loss(swa_attention, weights, x_inner, y_inner), weights)
    stepped = [w - lr * g for w, g in zip(weights, inner)]
    first_order = torch.autograd.grad(loss(swa_attention, stepped, x_outer, y_outer), weights)
    assert max(rel_err(a, b) for a, b in zip(first_order, want)) > 1e-3


def test_absent_cotangents_reach_the_op_as_none():
    """Only dv reaches the loss: the kernel gets gdq = gdk = None (it skips their products)."""
    (q, k, v, dout), _, window = make_inputs((1, 9, 9, 1, 1, 8, 4), torch.float64)
    x = tuple(t.requires_grad_() for t in (q, k, v))
    _, _, dv = torch.autograd.grad(swa_attention(*x, window), x, dout, create_graph=True)
    with RecordedCalls(_ops.swa_bwd_bwd) as calls:
        dv.sum().backward()
    assert [tuple(a is None for a in args[:3]) for args in calls.args] == [(True, True, False)]


def test_no_cotangent_gives_zeros():
    (q, k, v, dout), _, window = make_inputs((1, 9, 12, 2, 1, 8, 4), torch.float64)
    out, lse = _ops.swa_fwd(q, k, v, window, 0.3)
    for grad, like in zip(_ops.swa_bwd_bwd(None, None, None, q, k, v, out, dout, lse, window, 0.3), (q, k, v, q)):
        assert grad.shape == like.shape and not grad.any()


def test_16bit_inputs_are_computed_in_float32():
    (q, k, v, dout), cotangents, window = make_inputs((1, 40, 40, 2, 1, 32, 11), torch.bfloat16)
    out, lse = _ops.swa_fwd(q, k, v, window, 0.2)
    args = (*cotangents, q, k, v, out, dout)
    got = _ops.swa_bwd_bwd(*args, lse, window, 0.2)
    want = _ops.swa_bwd_bwd(*(t.float() for t in args), lse, window, 0.2)
    for a, w in zip(got, want):
        assert a.dtype == torch.bfloat16 and torch.equal(a, w.to(torch.bfloat16))


def test_strided_inputs_match_contiguous():
    (q, k, v, dout), (gdq, gdk, gdv), window = make_inputs((2, 30, 30, 2, 2, 16, 7), torch.float64)
    out, lse = _ops.swa_fwd(q, k, v, window, 0.25)
    args = (gdq, gdk, gdv, q, k, v, out, dout)
    # Each tensor as a view into a larger [batch, seqlen, 2 * heads, head_dim + 3] buffer.
    strided = []
    for t in args:
        b, s, h, d = t.shape
        buf = torch.randn(b, s, 2 * h, d + 3, dtype=t.dtype)
        view = buf[:, :, h:, 1 : d + 1]
        view.copy_(t)
        strided.append(view)
    want = _ops.swa_bwd_bwd(*args, lse, window, 0.25)
    got = _ops.swa_bwd_bwd(*strided, lse, window, 0.25)
    for a, w in zip(got, want):
        assert torch.equal(a, w)


def test_bitwise_reproducible_across_thread_counts():
    (q, k, v, dout), cotangents, window = make_inputs((2, 400, 400, 2, 1, 64, 130), torch.float32)
    out, lse = _ops.swa_fwd(q, k, v, window, 0.125)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(_ops.swa_bwd_bwd(*cotangents, q, k, v, out, dout, lse, window, 0.125))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_third_derivative_raises():
    (q, k, v, dout), _, window = make_inputs((1, 8, 8, 1, 1, 16, 4), torch.float64)
    q.requires_grad_()
    (dq,) = torch.autograd.grad((swa_attention(q, k, v, window) * dout).sum(), q, create_graph=True)
    (ddq,) = torch.autograd.grad(dq.square().sum(), q, create_graph=True)
    with pytest.raises(NotImplementedError, match="third derivative"):
        ddq.sum().backward()


def test_opcheck():
    (q, k, v, dout), (gdq, gdk, gdv), window = make_inputs((1, 20, 33, 4, 2, 64, 9), torch.float32)
    out, lse = _ops.swa_fwd(q, k, v, window, 0.125)
    for mask in itertools.product((0, 1), repeat=3):
        cot = tuple(c if m else None for c, m in zip((gdq, gdk, gdv), mask))
        opcheck(_ops.swa_bwd_bwd, (*cot, q, k, v, out, dout, lse, window, 0.125))
    # swa_bwd's autograd formula (the double backward) through opcheck's autograd registration checks.
    x = tuple(t.clone().requires_grad_() for t in (dout, q, k, v))
    opcheck(_ops.swa_bwd, (*x, out, lse, window, 0.125))


def test_op_argument_errors():
    (q, k, v, dout), (gdq, gdk, gdv), window = make_inputs((1, 9, 12, 2, 1, 8, 4), torch.float32)
    out, lse = _ops.swa_fwd(q, k, v, window, 0.3)

    def call(gdq=gdq, gdk=gdk, gdv=gdv, q=q, dout=dout, lse=lse, window=window):
        return _ops.swa_bwd_bwd(gdq, gdk, gdv, q, k, v, out, dout, lse, window, 0.3)

    with pytest.raises(RuntimeError, match=r"swa_bwd_bwd: gdq must have shape"):
        call(gdq=gdq[:, :5])
    with pytest.raises(RuntimeError, match=r"swa_bwd_bwd: gdk must have shape"):
        call(gdk=gdq)
    with pytest.raises(RuntimeError, match=r"swa_bwd_bwd: gdv must have q's dtype"):
        call(gdv=gdv.double())
    with pytest.raises(RuntimeError, match=r"swa_bwd_bwd: dout must have q's shape"):
        call(dout=dout[:, 1:])
    with pytest.raises(RuntimeError, match=r"swa_bwd_bwd: lse must have shape"):
        call(lse=lse[:, :, 1:])
    with pytest.raises(RuntimeError, match=r"swa_bwd_bwd: window must be >= 1"):
        call(window=0)
    with pytest.raises(RuntimeError, match=r"swa_bwd_bwd: gdq must have a contiguous last dimension"):
        call(gdq=gdq.transpose(1, 3).contiguous().transpose(1, 3))
