"""Fused RMSNorm (ttt_kernels.ops.rms_norm, torch.ops.ttt_kernels.rms_norm_fwd / rms_norm_bwd).

The CPU kernel and the CUDA kernel (in the simulator, and on a GPU when there is one) against the pure PyTorch
reference on odd shapes, with the fused residual and the fused RoPE; autograd to second and third order; opcheck;
torch.compile; argument checking.

Tolerances follow FlashAttention's tests: the error of a low-precision result against the float64 result on the
same (rounded) inputs must stay within twice the error of the eager reference computed in that same dtype, plus a
slack of one ulp of the result's dtype and of float32 rounding relative to the sums of absolute values the result
adds up (grad_weight sums over rows in another order than torch: its error scales with sum |g x rstd|).
"""

import pytest
import torch
from helpers import run_in_simulator

import ttt_kernels
from ttt_kernels import ops, reference

fwd_op = torch.ops.ttt_kernels.rms_norm_fwd
bwd_op = torch.ops.ttt_kernels.rms_norm_bwd

ROWS = (1, 7, 97, 200, 1025)
DIMS = (1, 7, 64, 80, 97, 128, 1025)
EPS = 1e-6
# Relative accumulation error allowed on top of the FlashAttention-style bound (math runs in float32).
ACCUM_SLACK = 1e-6


def _inputs(shape, dtype, device="cpu", seed=0):
    """x [*shape], weight [shape[-1]] around 1, grad_out [*shape]; float64 draws rounded to `dtype`."""
    gen = torch.Generator().manual_seed(seed)
    d = shape[-1]
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    weight = 1 + 0.5 * torch.randn(d, generator=gen, dtype=torch.float64)
    grad_out = torch.randn(*shape, generator=gen, dtype=torch.float64)
    return [t.to(dtype=dtype, device=device) for t in (x, weight, grad_out)]


def _reference_results(x, weight, grad_out):
    """(out, grad_x, grad_weight) of the reference, by autograd, in the inputs' dtype."""
    x = x.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    out = reference.rms_norm(x, weight, EPS)
    grad_x, grad_weight = torch.autograd.grad(out, (x, weight), grad_out)
    return out.detach(), grad_x, grad_weight


def _kernel_results(x, weight, grad_out):
    """(out, grad_x, grad_weight, rstd) of the native ops."""
    out, rstd = fwd_op(x, weight, EPS)
    grad_x, grad_weight = bwd_op(grad_out, x, weight, rstd)
    return out, grad_x, grad_weight, rstd


def _assert_matches_reference(x, weight, grad_out, results):
    """results = (out, grad_x, grad_weight, rstd) computed by a kernel from (x, weight, grad_out)."""
    dtype = x.dtype
    cpu64 = [t.detach().cpu().double() for t in (x, weight, grad_out)]
    exact = _reference_results(*cpu64)
    rstd_exact = torch.rsqrt(cpu64[0].square().mean(-1) + EPS).reshape(-1)
    out, grad_x, grad_weight, rstd = (t.cpu() for t in results)
    assert rstd.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(rstd.double(), rstd_exact, rtol=1e-12 if dtype == torch.float64 else 1e-5, atol=0)
    if dtype == torch.float64:
        for got, want in zip((out, grad_x, grad_weight), exact, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        return
    eager = _reference_results(*(t.detach().cpu() for t in (x, weight, grad_out)))
    magnitudes = _reference_results(*(t.abs() for t in cpu64))
    for name, got, ref, want, magnitude in zip(
        ("out", "grad_x", "grad_weight"), (out, grad_x, grad_weight), eager, exact, magnitudes, strict=True
    ):
        assert got.dtype == dtype and got.shape == want.shape, name
        err = (got.double() - want).abs().max().item()
        ref_err = (ref.double() - want).abs().max().item()
        slack = torch.finfo(dtype).eps * max(1.0, want.abs().max().item()) + ACCUM_SLACK * magnitude.max().item()
        assert err <= 2 * ref_err + slack, f"{name}: error {err:.3e}, eager {dtype} reference {ref_err:.3e}"


# ---- CPU kernel ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", DIMS)
def test_cpu_kernel_matches_reference(dtype, d):
    for rows in ROWS:
        x, weight, grad_out = _inputs((rows, d), dtype, seed=rows * 7919 + d)
        _assert_matches_reference(x, weight, grad_out, _kernel_results(x, weight, grad_out))


def test_cpu_kernel_float16_and_batch_dims():
    x, weight, grad_out = _inputs((2, 3, 5, 97), torch.float16)
    _assert_matches_reference(x, weight, grad_out, _kernel_results(x, weight, grad_out))


def test_python_api_layouts_and_empty_rows():
    """Non-contiguous x, expanded (stride-0) gradients from .sum(), and x without rows."""
    x, weight, _ = _inputs((97, 6), torch.float64)
    xt = x.t().requires_grad_()  # [6, 97] with strides (1, 6)
    weight = weight.new_ones(97).requires_grad_()
    ops.rms_norm(xt, weight).sum().backward()
    xr, wr = xt.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    reference.rms_norm(xr, wr).sum().backward()
    torch.testing.assert_close(xt.grad, xr.grad)
    torch.testing.assert_close(weight.grad, wr.grad)

    empty = torch.empty(0, 3, 8)
    out, rstd = fwd_op(empty, torch.ones(8), EPS)
    assert out.shape == (0, 3, 8) and rstd.shape == (0,)
    grad_x, grad_weight = bwd_op(empty, empty, torch.ones(8), rstd)
    assert grad_x.shape == (0, 3, 8) and torch.equal(grad_weight, torch.zeros(8))
    grad_weight = run_in_simulator(lambda: bwd_op(empty, empty, torch.ones(8), rstd)[1])
    assert torch.equal(grad_weight, torch.zeros(8))


def test_cpu_backward_is_reproducible_across_thread_counts():
    x, weight, grad_out = _inputs((1025, 96), torch.float32)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(_kernel_results(x, weight, grad_out))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def test_outputs_are_fresh_and_fully_written():
    """The ops allocate their outputs: memory freed after being filled with NaN must never show through."""
    x, weight, grad_out = _inputs((200, 97), torch.float32)
    for _ in range(3):
        poison = torch.full((4 << 20,), float("nan"))
        del poison
        results = _kernel_results(x, weight, grad_out)
        for t in results:
            assert torch.isfinite(t).all()
            assert t.data_ptr() not in (x.data_ptr(), weight.data_ptr(), grad_out.data_ptr())


# ---- autograd --------------------------------------------------------------------------------------------------------


def test_gradcheck_and_gradgradcheck():
    x, weight, _ = _inputs((2, 5, 9), torch.float64)
    x.requires_grad_()
    weight.requires_grad_()
    assert torch.autograd.gradcheck(ops.rms_norm, (x, weight))
    assert torch.autograd.gradgradcheck(ops.rms_norm, (x, weight))


def test_third_order_derivatives():
    """gradgradcheck of the first-order gradient checks the backward of rms_norm_bwd's backward."""
    x, weight, grad_out = _inputs((3, 6), torch.float64)
    x.requires_grad_()
    weight.requires_grad_()

    def first_order(x, weight):
        return torch.autograd.grad(ops.rms_norm(x, weight), (x, weight), grad_out, create_graph=True)

    assert torch.autograd.gradgradcheck(first_order, (x, weight))


def test_second_order_matches_reference():
    """The gradient of a gradient norm (TTT's outer-through-inner pattern) against the reference's autograd."""
    x, weight, grad_out = _inputs((7, 80), torch.float64)

    def outer_grads(fn):
        xr, wr = x.clone().requires_grad_(), weight.clone().requires_grad_()
        gx, gw = torch.autograd.grad(fn(xr, wr, EPS), (xr, wr), grad_out, create_graph=True)
        return torch.autograd.grad(gx.square().sum() + gw.sin().sum(), (xr, wr))

    for got, want in zip(outer_grads(ops.rms_norm), outer_grads(reference.rms_norm), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def _opcheck_samples():
    samples = []
    for shape, dtype in (((3, 5, 64), torch.float32), ((7, 97), torch.float64), ((4, 80), torch.bfloat16)):
        x, weight, grad_out = _inputs(shape, dtype)
        samples.append((x.requires_grad_(), weight.requires_grad_(), grad_out.requires_grad_()))
    return samples


@pytest.mark.parametrize("sample", range(3))
def test_opcheck(sample):
    x, weight, grad_out = _opcheck_samples()[sample]
    torch.library.opcheck(fwd_op, (x, weight, EPS))
    _, rstd = fwd_op(x.detach(), weight.detach(), EPS)
    torch.library.opcheck(bwd_op, (grad_out, x, weight, rstd))


def test_torch_compile_fullgraph_forward_and_backward():
    class Block(torch.nn.Module):
        def __init__(self, d):
            super().__init__()
            self.norm_weight = torch.nn.Parameter(1 + 0.1 * torch.randn(d))
            self.proj = torch.nn.Linear(d, d, bias=False)

        def forward(self, x):
            return x + self.proj(ops.rms_norm(x, self.norm_weight))

    torch.manual_seed(0)
    model = Block(64)
    x = torch.randn(2, 9, 64, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    out.square().sum().backward()
    got = (out.detach(), x.grad, model.norm_weight.grad, model.proj.weight.grad)

    x.grad = None
    model.zero_grad()
    out = x + model.proj(reference.rms_norm(x, model.norm_weight))
    out.square().sum().backward()
    want = (out.detach(), x.grad, model.norm_weight.grad, model.proj.weight.grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---- the fused residual (out = residual + norm(x)) -------------------------------------------------------------------


def _assert_residual_matches_reference(x, weight, residual, run):
    """run(x, weight, residual) -> (out, rstd) of a kernel: out against the float64 reference within twice the eager
    reference's error in x's dtype (plus one ulp), rstd the forward's without a residual."""
    want = reference.rms_norm(*(t.double() for t in (x, weight)), EPS, residual.double())
    out, rstd = run(x, weight, residual)
    _, rstd_plain = run(x, weight, None)
    assert out.dtype == x.dtype and out.shape == x.shape
    torch.testing.assert_close(rstd, rstd_plain, rtol=1e-12 if x.dtype == torch.float64 else 1e-6, atol=0)
    err = (out.double() - want).abs().max().item()
    ref_err = (reference.rms_norm(x, weight, EPS, residual).double() - want).abs().max().item()
    tol = 1e-12 if x.dtype == torch.float64 else torch.finfo(x.dtype).eps * max(1.0, want.abs().max().item())
    assert err <= 2 * ref_err + tol, f"{x.dtype} {tuple(x.shape)}: error {err:.3e}, eager reference {ref_err:.3e}"


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16, torch.float16))
@pytest.mark.parametrize("backend", ("cpu", "simulator"))
def test_residual_matches_reference(dtype, backend):
    def run(x, weight, residual):
        call = (lambda: fwd_op(x, weight, EPS)) if residual is None else (lambda: fwd_op(x, weight, EPS, residual))
        return run_in_simulator(call) if backend == "simulator" else call()

    for rows, d in ((1, 1), (7, 97), (97, 64), (200, 80), (3, 1032), (1, 16400)):
        x, weight, residual = _inputs((rows, d), dtype, seed=rows + 3 * d)
        residual = 4 * residual  # a sum dominated by neither term
        _assert_residual_matches_reference(x, weight, residual, run)
    # A residual view one element into its storage: the CUDA kernel falls back to scalar accesses.
    x, weight, _ = _inputs((5, 64), dtype)
    residual = _inputs((5 * 64 + 1,), dtype, seed=1)[0][1:].view(5, 64)
    _assert_residual_matches_reference(x, weight, residual, run)


def test_residual_gradients():
    x, weight, residual = _inputs((2, 5, 9), torch.float64)
    for t in (x, weight, residual):
        t.requires_grad_()

    def fn(x, weight, residual):
        return ops.rms_norm(x, weight, EPS, residual)

    assert torch.autograd.gradcheck(fn, (x, weight, residual))
    assert torch.autograd.gradgradcheck(fn, (x, weight, residual))
    torch.library.opcheck(fwd_op, (x, weight, EPS, residual))


# ---- RoPE (QK-norm and rotary embeddings in one op) ------------------------------------------------------------------

ROPE_SHAPES = ((1, 1, 1, 2), (2, 7, 3, 10), (1, 97, 2, 64), (2, 5, 4, 80), (1, 3, 1, 1026))  # [B, n, heads, d]


def _rope_table(n, d, dtype, seed=0):
    """[n, d / 2, 2] (cos, sin) of random angles (the kernels take any table; a model's are pos * theta^(-2i/d))."""
    angles = 4 * torch.randn(n, d // 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.stack((angles.cos(), angles.sin()), -1).to(torch.float64 if dtype == torch.float64 else torch.float32)


def _rope_results(fn, x, weight, grad_out, rope):
    """(out, grad_x, grad_weight) of fn(x, weight, EPS, rope=rope) by autograd."""
    x = x.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    out = fn(x, weight, EPS, rope=rope)
    grad_x, grad_weight = torch.autograd.grad(out, (x, weight), grad_out)
    return out.detach(), grad_x, grad_weight


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16, torch.float16))
@pytest.mark.parametrize("backend", ("cpu", "simulator"))
def test_rope_matches_reference(dtype, backend):
    """Forward and backward with RoPE against the float64 reference (a complex multiplication of the norm's pairs):
    within twice the eager reference's error in the same dtype, plus the slack of _assert_matches_reference."""
    for shape in ROPE_SHAPES:
        x, weight, grad_out = _inputs(shape, dtype, seed=sum(shape))
        rope = _rope_table(shape[1], shape[-1], dtype, seed=shape[1])
        args = (ops.rms_norm, x, weight, grad_out, rope)
        got = run_in_simulator(_rope_results, *args) if backend == "simulator" else _rope_results(*args)
        cpu64 = [t.double() for t in (x, weight, grad_out)]
        exact = _rope_results(reference.rms_norm, *cpu64, rope.double())
        eager = _rope_results(reference.rms_norm, x, weight, grad_out, rope)
        magnitudes = _rope_results(reference.rms_norm, *(t.abs() for t in cpu64), rope.double().abs())
        for name, g, ref, want, magnitude in zip(("out", "grad_x", "grad_weight"), got, eager, exact, magnitudes):
            assert g.dtype == dtype and g.shape == want.shape, name
            err = (g.double() - want).abs().max().item()
            if dtype == torch.float64:
                assert err <= 1e-12 * max(1.0, magnitude.max().item()), f"{shape} {name}: error {err:.3e}"
                continue
            ref_err = (ref.double() - want).abs().max().item()
            slack = torch.finfo(dtype).eps * max(1.0, want.abs().max().item()) + ACCUM_SLACK * magnitude.max().item()
            assert err <= 2 * ref_err + slack, f"{shape} {name}: error {err:.3e}, eager {dtype} reference {ref_err:.3e}"


def _rope_second_order(fn, x, weight, grad_out, rope):
    """Gradients in (x, weight, grad_out) of sum(grad_x^2) + sum(grad_weight^2), grad_x and grad_weight the VJP of
    fn with grad_out: through the double backward (with both cotangents)."""
    x, weight, grad_out = (t.detach().requires_grad_() for t in (x, weight, grad_out))
    out = fn(x, weight, EPS, rope=rope)
    grad_x, grad_weight = torch.autograd.grad(out, (x, weight), grad_out, create_graph=True)
    return torch.autograd.grad(grad_x.square().sum() + grad_weight.square().sum(), (x, weight, grad_out))


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
@pytest.mark.parametrize("backend", ("cpu", "simulator"))
def test_rope_double_backward_matches_reference(dtype, backend):
    for shape in ((2, 5, 3, 8), (1, 33, 2, 66)):
        x, weight, grad_out = _inputs(shape, dtype, seed=sum(shape))
        rope = _rope_table(shape[1], shape[-1], dtype)
        args = (ops.rms_norm, x, weight, grad_out, rope)
        got = run_in_simulator(_rope_second_order, *args) if backend == "simulator" else _rope_second_order(*args)
        want = _rope_second_order(reference.rms_norm, *(t.double() for t in (x, weight, grad_out)), rope.double())
        for name, g, w in zip(("x", "weight", "grad_out"), got, want):
            scale = w.abs().max().item()
            err = (g.double() - w).abs().max().item()
            assert err <= (1e-11 if dtype == torch.float64 else 2e-5) * scale, f"{shape} d/d{name}: error {err:.3e}"


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_simulated_rope_double_backward_16bit_matches_cpu_kernel(dtype):
    """The 16-bit double backward with RoPE in the simulator (d = 66: pairs, not 16-byte vectors) against the CPU
    kernel, which computes the same float32 math (checked against float64 above): equal up to about one rounding of
    the result's dtype."""
    shape = (1, 33, 2, 66)
    x, weight, grad_out = _inputs(shape, dtype, seed=3)
    u, v, _ = _inputs(shape, dtype, seed=4)
    v = v[:66].contiguous()
    rope = _rope_table(33, 66, dtype)
    _, rstd = fwd_op(x, weight, EPS, rope=rope)
    args = (grad_out, x, weight, rstd, u, v)
    bwd_bwd_op = torch.ops.ttt_kernels.rms_norm_bwd_bwd
    got = run_in_simulator(lambda: bwd_bwd_op(*args, rope=rope))
    for name, g, want in zip(("grad_grad_out", "grad_x", "grad_weight"), got, bwd_bwd_op(*args, rope=rope)):
        err = (g.double() - want.double()).abs().max().item()
        assert err <= 2 * torch.finfo(dtype).eps * want.abs().max().item(), f"{name}: difference {err:.3e}"


def test_rope_gradients_to_third_order_and_opcheck():
    x, weight, grad_out = _inputs((2, 5, 2, 6), torch.float64)
    rope = _rope_table(5, 6, torch.float64)
    x.requires_grad_()
    weight.requires_grad_()
    grad_out.requires_grad_()

    def fn(x, weight):
        return ops.rms_norm(x, weight, EPS, rope=rope)

    def vjp(x, weight, grad_out):
        return torch.autograd.grad(fn(x, weight), (x, weight), grad_out, create_graph=True)

    assert torch.autograd.gradcheck(fn, (x, weight))
    assert torch.autograd.gradgradcheck(fn, (x, weight))
    assert torch.autograd.gradgradcheck(vjp, (x, weight, grad_out))  # third order: rms_norm_bwd_bwd's backward
    _, rstd = fwd_op(x, weight, EPS, rope=rope)
    u, v = torch.randn_like(x), torch.randn_like(weight)
    torch.library.opcheck(fwd_op, (x, weight, EPS), {"rope": rope})
    torch.library.opcheck(bwd_op, (grad_out, x, weight, rstd), {"rope": rope})
    torch.library.opcheck(torch.ops.ttt_kernels.rms_norm_bwd_bwd, (grad_out, x, weight, rstd, u, v), {"rope": rope})


def test_rope_rejects_bad_arguments():
    x, weight, grad_out = _inputs((2, 3, 2, 8), torch.float32)
    rope = _rope_table(3, 8, torch.float32)
    bad_api = [
        ((x, weight, EPS, None, rope.tolist()), "rope must be None or a tensor"),
        ((x, weight, EPS, x, rope), "residual and rope cannot be combined"),
        ((x[0, 0], weight, EPS, None, rope), r"x must be \[..., n, heads, d\] with d even"),
        ((x[..., :7], weight[:7], EPS, None, rope), "with d even"),
        ((x, weight, EPS, None, rope[:2]), r"rope must have shape \(3, 4, 2\)"),
        ((x, weight, EPS, None, rope.double()), "dtype torch.float32"),
        ((x, weight, EPS, None, rope.clone().requires_grad_()), "rope is a constant table"),
    ]
    for args, message in bad_api:
        with pytest.raises(ValueError, match=message):
            ops.rms_norm(*args[:4], rope=args[4])
    bad_op = [
        ((x, weight, EPS), {"residual": x, "rope": rope}, "residual and rope cannot be combined"),
        ((x[0, 0], weight, EPS), {"rope": rope}, r"x must be \[..., positions, heads, dim\]"),
        ((x, weight, EPS), {"rope": rope[:2]}, r"rope must have shape \[3, 4, 2\]"),
        ((x, weight, EPS), {"rope": rope.double()}, "rope must be Float for Float x"),
        ((x, weight, EPS), {"rope": rope.transpose(0, 1).contiguous().transpose(0, 1)}, "rope must be contiguous"),
    ]
    for args, kwargs, message in bad_op:
        with pytest.raises(RuntimeError, match=message):
            fwd_op(*args, **kwargs)
    _, rstd = fwd_op(x, weight, EPS, rope=rope)
    with pytest.raises(RuntimeError, match=r"rope must have shape \[3, 4, 2\]"):
        bwd_op(grad_out, x, weight, rstd, rope[:2])


def test_rope_tensors_starting_at_odd_elements():
    """The CUDA kernels rotate pairs within a thread; the op copies a tensor that starts at an odd element."""
    shape = (2, 3, 2, 8)
    odd = [t[1:].view(shape) for t in _inputs((2 * 3 * 2 * 8 + 1,), torch.float32, seed=4)[::2]]
    weight = _inputs((8,), torch.float32, seed=5)[0]
    rope = _rope_table(3, 8, torch.float32)
    for x, grad_out in (odd, odd[::-1]):
        args = (ops.rms_norm, x, weight, grad_out, rope)
        for got, want in zip(run_in_simulator(_rope_results, *args), _rope_results(*args)):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


# ---- argument checking -----------------------------------------------------------------------------------------------


def test_python_api_rejects_bad_arguments():
    x, weight, _ = _inputs((4, 8), torch.float32)
    bad = [
        ((x.tolist(), weight), "must be tensors"),
        ((torch.tensor(1.0), weight), "non-empty last dimension"),
        ((torch.empty(4, 0), torch.empty(0)), "non-empty last dimension"),
        ((x, weight[:7]), r"weight must have shape \(8,\)"),
        ((x, weight.double()), "match x's dtype and device"),
        ((x, weight, 0.0), "eps must be a finite number > 0"),
        ((x, weight, -1e-6), "eps must be a finite number > 0"),
        ((x, weight, float("nan")), "eps must be a finite number > 0"),
        ((x, weight, True), "eps must be a finite number > 0"),
        ((x, weight, "1e-6"), "eps must be a finite number > 0"),
        ((x, weight, EPS, x.tolist()), "residual must be None or a tensor"),
        ((x, weight, EPS, x[:3]), "residual must match x's shape, dtype and device"),
        ((x, weight, EPS, x.double()), "residual must match x's shape, dtype and device"),
    ]
    for args, message in bad:
        with pytest.raises(ValueError, match=message):
            ops.rms_norm(*args)


def test_ops_reject_bad_arguments():
    x, weight, grad_out = _inputs((4, 8), torch.float32)
    _, rstd = fwd_op(x, weight, EPS)
    fwd_bad = [
        ((x.int(), weight.int(), EPS), "x must be float32, float64, bfloat16 or float16"),
        ((torch.tensor(1.0), weight, EPS), "at least 1 dimension"),
        ((torch.empty(4, 0), torch.empty(0), EPS), "non-empty last dimension"),
        ((x.t(), weight[:4], EPS), "x must be contiguous"),
        ((x, weight[:7], EPS), r"weight must have shape \[8\]"),
        ((x, weight.double(), EPS), "weight must have x's dtype"),
        ((x, torch.ones(16)[::2], EPS), "weight must be contiguous"),
        ((x, weight, 0.0), "eps must be a finite number > 0"),
        ((x, weight, float("inf")), "eps must be a finite number > 0"),
        ((x, weight, EPS, x[:3]), "residual must have x's shape"),
        ((x, weight, EPS, x.double()), "residual must have x's dtype"),
        ((x, weight, EPS, x.t().contiguous().t()), "residual must be contiguous"),
    ]
    for args, message in fwd_bad:
        with pytest.raises(RuntimeError, match=message):
            fwd_op(*args)
    bwd_bad = [
        ((grad_out[:3], x, weight, rstd), "grad_out must have x's shape"),
        ((grad_out.double(), x, weight, rstd), "grad_out must have x's dtype"),
        ((grad_out.t().contiguous().t(), x, weight, rstd), "grad_out must be contiguous"),
        ((grad_out, x, weight, rstd[:3]), r"rstd must have shape \[4\]"),
        ((grad_out, x, weight, rstd.double()), "rstd must be Float for Float x"),
        ((grad_out, x, weight[:7], rstd), r"weight must have shape \[8\]"),
    ]
    for args, message in bwd_bad:
        with pytest.raises(RuntimeError, match=message):
            bwd_op(*args)


# ---- CUDA kernels: dispatch, simulator, GPU --------------------------------------------------------------------------


@pytest.mark.skipif(not ttt_kernels.build_info()["cuda_dispatch"], reason="built without CUDA dispatch")
def test_cuda_dispatch_is_registered():
    assert torch.version.cuda
    for op in ("rms_norm_fwd", "rms_norm_bwd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ttt_kernels::{op}", "CUDA"), op


# Besides ROWS x DIMS, shapes that reach the remaining launch configurations of the CUDA kernels: several warps per
# row (shared-memory reduction across warps) and rows longer than one register chunk (backward: float32 d > 4096,
# forward: float32 d > 16384), vectorized and scalar.
SIM_EXTRA_SHAPES = ((3, 1032), (2, 4104), (2, 4099), (1, 16400))


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16, torch.float64))
def test_simulated_cuda_kernel_matches_reference(dtype):
    shapes = [(rows, d) for rows in ROWS for d in DIMS] + list(SIM_EXTRA_SHAPES)
    for rows, d in shapes:
        x, weight, grad_out = _inputs((rows, d), dtype, seed=rows * 31 + d)
        results = run_in_simulator(lambda x=x, weight=weight, grad_out=grad_out: _kernel_results(x, weight, grad_out))
        _assert_matches_reference(x, weight, grad_out, results)


def test_simulated_cuda_kernel_misaligned_rows():
    """Views starting one element into their storage: the kernels must fall back to scalar accesses."""
    flat = _inputs((3 * 64 + 1,), torch.float32)
    x, grad_out = (t[1:].view(3, 64) for t in (flat[0], flat[2]))
    weight = flat[1][1:65]
    assert x.data_ptr() % 16 != 0 and weight.data_ptr() % 16 != 0
    results = run_in_simulator(lambda: _kernel_results(x, weight, grad_out))
    _assert_matches_reference(x, weight, grad_out, results)


def test_simulated_backward_grid_loops_over_rows():
    """More rows than the backward grid has row slots: each block accumulates several rows into its partial."""
    x, weight, grad_out = _inputs((260, 3844), torch.float32)
    results = run_in_simulator(lambda: _kernel_results(x, weight, grad_out))
    _assert_matches_reference(x, weight, grad_out, results)


def test_simulated_backward_rejects_too_long_rows():
    """The CUDA backward keeps a [dim] float32 grad_weight partial in shared memory: dim <= 40960."""
    x, weight, grad_out = _inputs((1, 40968), torch.float32)

    def run():
        _, rstd = fwd_op(x, weight, EPS)
        return bwd_op(grad_out, x, weight, rstd)

    with pytest.raises(RuntimeError, match="rms_norm_bwd: dim=40968 needs 163872 bytes of shared memory"):
        run_in_simulator(run)


# ---- the fused double backward (rms_norm_bwd_bwd) ------------------------------------------------------------------

bwd_bwd_op = torch.ops.ttt_kernels.rms_norm_bwd_bwd
# (rows, d) of the double-backward tests: scalar and 16-byte paths, one row per block and the grid loop.
DOUBLE_SHAPES = ((1, 1), (7, 7), (97, 64), (200, 80), (33, 1025), (260, 3844))
COTANGENTS = ("u and v", "u only", "v only")


def _cotangents(x, weight, which, seed):
    """(u, v): the cotangents of grad_x [*x.shape] and grad_weight [d], one of them None (zero) per `which`."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype)
    v = torch.randn(weight.shape, generator=gen, dtype=torch.float64).to(x.dtype)
    return (None if which == "v only" else u), (None if which == "u only" else v)


def _double_backward_exact(x, weight, grad_out, u, v):
    """(grad_grad_out, grad_x, grad_weight): the VJP of the reference's (grad_x, grad_weight) with (u, v), float64."""
    x, weight, grad_out = (t.detach().cpu().double().requires_grad_() for t in (x, weight, grad_out))
    gx, gw = torch.autograd.grad(reference.rms_norm(x, weight, EPS), (x, weight), grad_out, create_graph=True)
    pairs = [(o, c.cpu().double()) for o, c in ((gx, u), (gw, v)) if c is not None]
    grads = torch.autograd.grad([o for o, _ in pairs], (grad_out, x, weight), [c for _, c in pairs], allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, (grad_out, x, weight))]


def _double_backward_kernel(x, weight, grad_out, u, v):
    _, rstd = fwd_op(x, weight, EPS)
    return bwd_bwd_op(grad_out, x, weight, rstd, u, v)


def _assert_double_backward_close(got, x, weight, grad_out, u, v):
    """Within 1e-10 (float64), 2e-5 (float32) or 4 ulps of the 16-bit dtype, relative to the largest exact value of
    the outputs or of their leading terms r u w, r v x, r v g (the outputs cancel: with d = 1 they are ~1e-5 of
    their terms)."""
    exact = _double_backward_exact(x, weight, grad_out, u, v)
    tol = {torch.float64: 1e-10, torch.float32: 2e-5}.get(x.dtype, 4 * torch.finfo(x.dtype).eps)
    x64, w64, g64 = (t.cpu().double() for t in (x, weight, grad_out))
    r = torch.rsqrt(x64.square().mean(-1, keepdim=True) + EPS)
    terms = [r * u.cpu().double() * w64] if u is not None else []
    terms += [r * v.cpu().double() * t for t in (x64, g64)] if v is not None else []
    scale = max(t.abs().max().item() for t in (*exact, *terms))
    for name, g, want in zip(("grad_grad_out", "grad_x", "grad_weight"), got, exact):
        assert g.dtype == x.dtype and g.shape == want.shape, name
        err = (g.cpu().double() - want).abs().max().item()
        assert err <= tol * scale, f"{name}: error {err:.3e}, largest output {scale:.3e}"


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16))
@pytest.mark.parametrize("which", COTANGENTS)
def test_double_backward_kernel_matches_reference(dtype, which):
    for rows, d in DOUBLE_SHAPES:
        x, weight, grad_out = _inputs((rows, d), dtype, seed=rows + d)
        u, v = _cotangents(x, weight, which, seed=rows * d)
        _assert_double_backward_close(_double_backward_kernel(x, weight, grad_out, u, v), x, weight, grad_out, u, v)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16, torch.float64))
@pytest.mark.parametrize("which", COTANGENTS)
def test_simulated_double_backward_kernel_matches_reference(dtype, which):
    """The CUDA double backward in the simulator (every schedule bitwise equal): 16-byte and scalar accesses, rows
    sharing a warp, rows spanning warps, the grid loop; misaligned views fall back to scalar accesses."""
    shapes = list(DOUBLE_SHAPES[:-1]) + ([(260, 3844)] if dtype == torch.float32 else [])
    for rows, d in shapes:
        x, weight, grad_out = _inputs((rows, d), dtype, seed=rows + d)
        u, v = _cotangents(x, weight, which, seed=rows * d)
        got = run_in_simulator(lambda x=x, w=weight, g=grad_out, u=u, v=v: _double_backward_kernel(x, w, g, u, v))
        _assert_double_backward_close(got, x, weight, grad_out, u, v)
    flat = _inputs((3 * 64 + 1,), dtype)
    x, grad_out = (t[1:].view(3, 64) for t in (flat[0], flat[2]))
    weight = flat[1][1:65]
    u, v = _cotangents(x, weight, which, seed=5)
    got = run_in_simulator(lambda: _double_backward_kernel(x, weight, grad_out, u, v))
    _assert_double_backward_close(got, x, weight, grad_out, u, v)


def test_double_backward_op_checks_and_opcheck():
    x, weight, grad_out = _inputs((6, 16), torch.float32)
    _, rstd = fwd_op(x, weight, EPS)
    u, v = _cotangents(x, weight, "u and v", seed=1)
    torch.library.opcheck(bwd_bwd_op, (grad_out, x, weight, rstd, u, v))
    torch.library.opcheck(bwd_bwd_op, (grad_out, x, weight, rstd, None, v))
    for args, message in [
        ((grad_out, x, weight, rstd, u[:3], v), r"grad_grad_x must have x's shape \[6, 16\]"),
        ((grad_out, x, weight, rstd, u, v[:4]), r"grad_grad_weight must have weight's shape \[16\]"),
        ((grad_out, x, weight, rstd, u.double(), v), "grad_grad_x must have x's dtype"),
        ((grad_out, x, weight, rstd[:2], u, v), r"rms_norm_bwd_bwd: rstd must have shape \[6\]"),
    ]:
        with pytest.raises(RuntimeError, match=message):
            bwd_bwd_op(*args)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16, torch.float64))
def test_gpu_kernel_matches_reference(dtype):
    for rows in ROWS:
        for d in DIMS + (4104, 8192, 16385):
            x, weight, grad_out = _inputs((rows, d), dtype, device="cuda", seed=rows + d)
            first = _kernel_results(x, weight, grad_out)
            _assert_matches_reference(x, weight, grad_out, first)
            for a, b in zip(first, _kernel_results(x, weight, grad_out), strict=True):
                assert torch.equal(a, b), "the CUDA kernels must be deterministic"


@pytest.mark.gpu
def test_gpu_autograd_and_compile():
    x, weight, _ = _inputs((2, 5, 9), torch.float64, device="cuda")
    x.requires_grad_()
    weight.requires_grad_()
    assert torch.autograd.gradgradcheck(ops.rms_norm, (x, weight))
    xb, wb, gb = _inputs((4, 33, 768), torch.bfloat16, device="cuda")
    torch.library.opcheck(fwd_op, (xb.requires_grad_(), wb.requires_grad_(), EPS))
    compiled = torch.compile(ops.rms_norm, fullgraph=True)
    torch.testing.assert_close(compiled(xb, wb), ops.rms_norm(xb, wb), rtol=0, atol=0)
