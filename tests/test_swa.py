"""Sliding-window attention: CPU kernels vs the float64 reference, autograd, torch.compile, argument errors."""

import pytest
import torch
from torch.library import opcheck

import ttt_kernels  # noqa: F401  (registers the ops)
from ttt_kernels import reference
from ttt_kernels.ops import swa_attention

_ops = torch.ops.ttt_kernels

# (batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, window)
SHAPES = [
    (1, 1, 1, 1, 1, 64, 1),
    (2, 7, 7, 2, 2, 64, 3),  # window < seqlen
    (1, 97, 97, 4, 2, 80, 32),  # GQA
    (1, 200, 200, 3, 1, 96, 200),  # MQA, window == seqlen
    (2, 97, 200, 2, 2, 128, 1000),  # seqlen_q < seqlen_k, window > seqlen_k
    (1, 61, 1025, 2, 1, 128, 257),  # chunked prefill
    (1, 1, 1025, 4, 2, 64, 100),  # one query (decode)
    (1, 1025, 1025, 2, 2, 64, 300),
    (1, 150, 150, 2, 1, 40, 1),  # generic head_dim, window 1: each query sees only itself
    (1, 101, 101, 1, 1, 20, 49),  # head_dim below one vector
]
SLOW_SHAPES = [
    (1, 2053, 2053, 4, 2, 128, 700),
    (2, 1500, 3001, 2, 1, 96, 3001),
]
# max |error| / max(1, max |expected|), per dtype.
TOL = {torch.float64: 1e-12, torch.float32: 2e-5}


def make_inputs(shape, dtype, seed=0):
    """Random q, k, v (float64 values rounded to dtype), a random output gradient, and the window."""
    b, sq, sk, hq, hkv, d, window = shape
    g = torch.Generator().manual_seed(seed)
    q, k, v, dout = (
        torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)
        for s in ((b, sq, hq, d), (b, sk, hkv, d), (b, sk, hkv, d), (b, sq, hq, d))
    )
    return q, k, v, dout, window


def forward_backward(fn, q, k, v, dout):
    """(out, dq, dk, dv) of fn(q, k, v) for the output gradient dout."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), dout))


def expected(q, k, v, dout, window, scale=None):
    """The float64 reference's (out, dq, dk, dv) for the given (possibly rounded) inputs."""
    return forward_backward(
        lambda q, k, v: reference.swa_attention(q, k, v, window, scale=scale), *(t.double() for t in (q, k, v, dout))
    )


def rel_err(actual, want):
    return ((actual.double() - want).abs().max() / want.abs().max().clamp(min=1)).item()


def check_against_reference(shape, dtype, scale=None):
    q, k, v, dout, window = make_inputs(shape, dtype)
    got = forward_backward(lambda q, k, v: swa_attention(q, k, v, window, scale=scale), q, k, v, dout)
    want = expected(q, k, v, dout, window, scale)
    for name, a, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert a.dtype == dtype and a.shape == w.shape
        assert rel_err(a, w) <= TOL[dtype], f"{name}: error {rel_err(a, w):.2e} for {shape} {dtype}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(shape, dtype):
    check_against_reference(shape, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SLOW_SHAPES)
def test_matches_reference_long(shape, dtype):
    check_against_reference(shape, dtype)


def test_custom_scale():
    check_against_reference((1, 50, 70, 2, 1, 64, 20), torch.float64, scale=0.37)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [SHAPES[2], SHAPES[4], SHAPES[5]])
def test_16bit_within_twice_the_eager_error(shape, dtype):
    """16-bit inputs (computed in float32) are at least half as accurate as the eager reference in that dtype."""
    q, k, v, dout, window = make_inputs(shape, dtype)
    got = forward_backward(lambda q, k, v: swa_attention(q, k, v, window), q, k, v, dout)
    eager = forward_backward(lambda q, k, v: reference.swa_attention(q, k, v, window), q, k, v, dout)
    want = expected(q, k, v, dout, window)
    for name, a, e, w in zip(("out", "dq", "dk", "dv"), got, eager, want):
        assert a.dtype == dtype
        assert rel_err(a, w) <= 2 * rel_err(e, w) + 1e-3, f"{name}: {rel_err(a, w):.2e} vs eager {rel_err(e, w):.2e}"


def test_lse_is_the_row_logsumexp():
    q, k, v, _, window = make_inputs((2, 30, 45, 4, 2, 64, 10), torch.float64)
    scale = 0.125
    out, lse = _ops.swa_fwd(q, k, v, window, scale)
    assert lse.shape == (2, 4, 30) and lse.dtype == torch.float64
    kr = k.repeat_interleave(2, dim=2)
    s = torch.einsum("bihd,bjhd->bhij", q, kr) * scale
    t = torch.arange(15, 45)[:, None]
    j = torch.arange(45)
    want = s.masked_fill((j > t) | (j <= t - window), float("-inf")).logsumexp(-1)
    torch.testing.assert_close(lse, want, rtol=0, atol=1e-12)
    _, lse32 = _ops.swa_fwd(q.bfloat16(), k.bfloat16(), v.bfloat16(), window, scale)
    assert lse32.dtype == torch.float32


def test_strided_inputs_match_contiguous():
    """A packed qkv tensor's views (strided rows and heads) give bitwise the same result as contiguous copies."""
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(2, 77, 3, 4, 64, generator=g)
    q, k, v = qkv.unbind(2)
    dout = torch.randn(2, 77, 4, 64, generator=g)
    strided = forward_backward(lambda q, k, v: swa_attention(q, k, v, 20), q, k, v, dout)
    contiguous = forward_backward(
        lambda q, k, v: swa_attention(q, k, v, 20), q.contiguous(), k.contiguous(), v.contiguous(), dout
    )
    for a, b in zip(strided, contiguous):
        assert torch.equal(a, b)


def test_bitwise_reproducible_across_thread_counts():
    q, k, v, dout, window = make_inputs((1, 300, 300, 2, 1, 64, 100), torch.float32)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(forward_backward(lambda q, k, v: swa_attention(q, k, v, window), q, k, v, dout))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_gradcheck():
    for shape in ((1, 5, 9, 2, 1, 8, 4), (2, 6, 6, 2, 2, 3, 10)):
        q, k, v, _, window = make_inputs(shape, torch.float64)
        inputs = tuple(t.requires_grad_() for t in (q, k, v))
        assert torch.autograd.gradcheck(lambda q, k, v, window=window: swa_attention(q, k, v, window), inputs)


def test_opcheck():
    q, k, v, dout, window = make_inputs((1, 20, 33, 4, 2, 64, 9), torch.float32)
    opcheck(_ops.swa_fwd, (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), window, 0.125))
    out, lse = _ops.swa_fwd(q.detach(), k.detach(), v.detach(), window, 0.125)
    opcheck(_ops.swa_bwd, (dout, q.detach(), k.detach(), v.detach(), out, lse, window, 0.125))


class _Attention(torch.nn.Module):
    """Projections, head split and sliding-window attention (GQA): the op inside a model."""

    def __init__(self, attention, dim=64, heads=4, kv_heads=2, window=13):
        super().__init__()
        self.attention, self.heads, self.kv_heads, self.window = attention, heads, kv_heads, window
        self.head_dim = dim // heads
        self.wq = torch.nn.Linear(dim, dim, bias=False)
        self.wkv = torch.nn.Linear(dim, 2 * kv_heads * self.head_dim, bias=False)
        self.wo = torch.nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, self.heads, self.head_dim)
        k, v = self.wkv(x).view(b, s, 2, self.kv_heads, self.head_dim).unbind(2)
        return self.wo(self.attention(q, k, v, self.window).reshape(b, s, -1))


def test_torch_compile_fullgraph_forward_backward():
    torch.manual_seed(0)
    fused = _Attention(swa_attention).double()
    eager = _Attention(reference.swa_attention).double()
    eager.load_state_dict(fused.state_dict())
    x = torch.randn(2, 50, 64, dtype=torch.float64)
    compiled = torch.compile(fused, fullgraph=True)
    out = compiled(x)
    out.square().sum().backward()
    want = eager(x)
    want.square().sum().backward()
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    for (name, p), (_, w) in zip(fused.named_parameters(), eager.named_parameters()):
        torch.testing.assert_close(p.grad, w.grad, rtol=1e-10, atol=1e-10, msg=name)


def test_python_argument_errors():
    q, k, v, _, _ = make_inputs((1, 4, 6, 4, 2, 16, 3), torch.float32)
    cases = [
        ((q[0], k, v, 3), {}, "q must be a 4-d tensor"),
        ((q, k.numpy(), v, 3), {}, "k must be a 4-d tensor"),
        ((q, k.double(), v, 3), {}, "k must have q's dtype"),
        ((q.int(), k.int(), v.int(), 3), {}, "q must be float32"),
        ((q, k, v[:, :5], 3), {}, "k and v must have the same shape"),
        ((q, k[..., :8], v[..., :8], 3), {}, "head_dim"),
        ((torch.cat([q, q], 1), k, v, 3), {}, "seqlen_q"),
        ((q[:, :, :3], k, v, 3), {}, "multiple of heads_kv"),
        ((q, k, v, 0), {}, r"window must be an int in \[1, 2\^63\)"),
        ((q, k, v, 2.0), {}, r"window must be an int in \[1, 2\^63\)"),
        ((q, k, v, True), {}, r"window must be an int in \[1, 2\^63\)"),
        ((q, k, v, 2**64), {}, r"window must be an int in \[1, 2\^63\)"),
        ((q, k, v, 3), {"scale": float("nan")}, "scale must be a finite number"),
    ]
    for args, kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            swa_attention(*args, **kwargs)


def test_op_argument_errors():
    q, k, v, dout, _ = make_inputs((1, 4, 6, 4, 2, 16, 3), torch.float32)
    out, lse = _ops.swa_fwd(q, k, v, 3, 0.25)
    fwd_cases = [
        ((q, k, v, 0, 0.25), "window must be >= 1"),
        ((torch.cat([q, q], 1), k, v, 3, 0.25), "seqlen_q 8 > seqlen_k 6"),
        ((q[:, :, :3], k, v, 3, 0.25), "heads_q must be a positive multiple of heads_kv"),
        ((q, k, v.double(), 3, 0.25), "v must have q's dtype"),
        ((q, k, v[:, :5], 3, 0.25), "v must have k's shape"),
        ((q.int(), k.int(), v.int(), 3, 0.25), "q must be float32, float64, bfloat16 or float16"),
        ((q.transpose(1, 3).contiguous().transpose(1, 3), k, v, 3, 0.25), "q must have a contiguous last dimension"),
        ((q, k, v, 3, float("inf")), "scale must be finite"),
        ((q[0], k, v, 3, 0.25), "q must have 4 dimensions"),
    ]
    for args, match in fwd_cases:
        with pytest.raises(RuntimeError, match=match):
            _ops.swa_fwd(*args)
    bwd_cases = [
        ((dout[:, :3], q, k, v, out, lse, 3, 0.25), "dout must have q's shape"),
        ((dout, q, k, v, out, lse.double(), 3, 0.25), "lse must be Float"),
        ((dout, q, k, v, out, lse[:, :2], 3, 0.25), "lse must have shape"),
        ((dout, q, k, v, out.double(), lse, 3, 0.25), "out must have q's dtype"),
    ]
    for args, match in bwd_cases:
        with pytest.raises(RuntimeError, match=match):
            _ops.swa_bwd(*args)
