"""Dynamic SwiGLU MLP (ttt_kernels.ops.swiglu_mlp).

The CPU path (BLAS or AVX-512 GEMMs + fused element-wise kernels) against the pure PyTorch reference in float64;
batched fast weights; autograd to second order (gradcheck, gradgradcheck, and a meta-learning step through a clipped
inner update); the CUDA path in the simulator (the hand-written kernels and the CUTLASS GEMMs) under several
schedules; opcheck; torch.compile; argument checks.

Tolerances of 16-bit results follow FlashAttention's tests: the error against the float64 result on the same
(rounded) inputs must stay within twice the error of eager PyTorch computing the same math in that 16-bit dtype,
plus one ulp of the dtype relative to the result's magnitude.
"""

import math

import pytest
import torch
from helpers import RecordedCalls, requires_simulator, run_in_simulator

import ttt_kernels
from ttt_kernels import ops, reference

fwd_op = torch.ops.ttt_kernels.swiglu_mlp_fwd
bwd_op = torch.ops.ttt_kernels.swiglu_mlp_bwd
gate_op = torch.ops.ttt_kernels.swiglu_gate_bwd_bwd

ROWS = (1, 7, 1025)


def _mlp_inputs(lead, d, m, dtype=torch.float64, weight_dtype=None, device="cpu", seed=0):
    """x [*lead, d], w1, w3 [m, d], w2 [d, m] (N(0, 1/d) and N(0, 1/m): unit-scale activations), grad_y like x."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, d, generator=gen, dtype=torch.float64)
    w1 = torch.randn(m, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
    w3 = torch.randn(m, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
    w2 = torch.randn(d, m, generator=gen, dtype=torch.float64) / math.sqrt(m)
    gy = torch.randn(*lead, d, generator=gen, dtype=torch.float64)
    wd = weight_dtype or dtype
    return (x.to(device, dtype), w1.to(device, wd), w3.to(device, wd), w2.to(device, wd), gy.to(device, dtype))


def _results(fn, x, w1, w3, w2, gy):
    """(y, dx, dw1, dw3, dw2) of fn by autograd."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, w1, w3, w2)]
    y = fn(*leaves)
    return (y.detach(), *torch.autograd.grad(y, leaves, gy))


def _eager_16bit_mlp(x, w1, w3, w2):
    """The reference's math run by eager PyTorch in x's 16-bit dtype (the weights cast to it), as the GPU runs it."""
    return torch.nn.functional.silu(x @ w1.to(x.dtype).mT) * (x @ w3.to(x.dtype).mT) @ w2.to(x.dtype).mT


def _eager_16bit(x, w1, w3, w2, gy):
    return _results(_eager_16bit_mlp, x, w1, w3, w2, gy)


def _assert_close_to_reference(inputs, got):
    """got = (y, dx, dw1, dw3, dw2) from `inputs` (x, w1, w3, w2, gy); float64 results tight, others bounded by the
    error of eager PyTorch in x's dtype."""
    exact = _results(reference.swiglu_mlp, *(t.detach().cpu().double() for t in inputs))
    names = ("y", "dx", "dw1", "dw3", "dw2")
    got = [t.detach().cpu() for t in got]
    for name, g, inp in zip(names, got, (inputs[0], inputs[0], inputs[1], inputs[2], inputs[3])):
        assert g.dtype == inp.dtype and g.shape == inp.shape, name
    if inputs[0].dtype == torch.float64:
        for name, g, want in zip(names, got, exact):
            torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-11, msg=name)
        return
    if inputs[0].dtype == torch.float32:
        for name, g, want in zip(names, got, exact):
            torch.testing.assert_close(g.double(), want, rtol=2e-5, atol=2e-5 * want.abs().max().item(), msg=name)
        return
    eager = _eager_16bit(*(t.detach().cpu() for t in inputs))
    eps = torch.finfo(inputs[0].dtype).eps
    for name, g, ref, want in zip(names, got, eager, exact):
        err = (g.double() - want).abs().max().item()
        ref_err = (ref.double() - want).abs().max().item()
        assert err <= 2 * ref_err + eps * want.abs().max().item(), f"{name}: error {err:.3e}, eager {ref_err:.3e}"


def _op_results(x, w1, w3, w2, gy):
    y, h = fwd_op(x, w1, w3, w2)
    return (y, *bwd_op(gy, x, w1, w3, w2, h, None))


# ---- CPU ---------------------------------------------------------------------------------------------------------


@pytest.fixture(params=["native", "blas"])
def cpu_gemm(request, monkeypatch):
    """Runs a test with the CPU path's float32 GEMMs on the AVX-512 sgemm (where built) and on BLAS."""
    monkeypatch.setenv("TTT_KERNELS_CPU_GEMM", request.param)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("d, m", [(16, 24), (13, 7), (64, 96)])
def test_cpu_matches_reference(dtype, d, m, cpu_gemm):
    for rows in ROWS:
        inputs = _mlp_inputs((rows,), d, m, dtype, seed=rows + d)
        _assert_close_to_reference(inputs, _op_results(*inputs))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("weight_dtype", [None, torch.float32])
def test_cpu_16bit_and_master_weights(dtype, weight_dtype, cpu_gemm):
    """16-bit x (computed in float32 on the CPU), with 16-bit or float32 weights; batch dimensions."""
    inputs = _mlp_inputs((3, 5), 24, 40, dtype, weight_dtype)
    _assert_close_to_reference(inputs, _results(ops.swiglu_mlp, *inputs))


def test_empty_rows_and_layouts():
    x, w1, w3, w2, _ = _mlp_inputs((0, 4), 16, 8)
    y, h = fwd_op(x, w1, w3, w2)
    assert y.shape == (0, 4, 16) and h.shape == (0, 8, 2)
    dx, dw1, dw3, dw2 = bwd_op(y, x, w1, w3, w2, h, None)
    assert dx.shape == x.shape and all(torch.equal(g, torch.zeros_like(g)) for g in (dw1, dw3, dw2))
    # Non-contiguous inputs through the Python API.
    x, w1, w3, w2, gy = _mlp_inputs((6,), 16, 8)
    xt = x.T.contiguous().T
    got = _results(ops.swiglu_mlp, xt, w1.T.contiguous().T, w3, w2, gy)
    _assert_close_to_reference((x, w1, w3, w2, gy), got)


def test_gradcheck_and_gradgradcheck():
    x, w1, w3, w2, _ = _mlp_inputs((2, 3), 6, 5)
    args = [t.requires_grad_() for t in (x, w1, w3, w2)]
    assert torch.autograd.gradcheck(ops.swiglu_mlp, args)
    assert torch.autograd.gradgradcheck(ops.swiglu_mlp, args)


def test_backward_with_grad_h_matches_autograd():
    """swiglu_mlp_bwd's grad_h input (the gradient reaching h, nonzero in double backward) against autograd."""
    x, w1, w3, w2, gy = _mlp_inputs((7,), 16, 24)
    _, h = fwd_op(x, w1, w3, w2)
    grad_h = torch.randn_like(h)
    leaves = [t.clone().requires_grad_() for t in (x, w1, w3, w2)]
    xl, w1l, w3l, w2l = leaves
    h1, h3 = xl @ w1l.T, xl @ w3l.T
    y = (torch.nn.functional.silu(h1) * h3) @ w2l.T
    want = torch.autograd.grad((y * gy).sum() + (h1 * grad_h[..., 0]).sum() + (h3 * grad_h[..., 1]).sum(), leaves)
    for g, w in zip(bwd_op(gy, x, w1, w3, w2, h, grad_h), want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def _meta_step(mlp, clip, x, w1, w3, w2, gy, lr=0.7, max_norm=0.05):
    """A TTT-E2E inner step and its outer loss: W1 = W0 - lr clip(dL/dW0), outer = L(W1) on the same x."""
    w = [w1, w3, w2]
    inner = (mlp(x, *w) * gy).sum()
    grads = torch.autograd.grad(inner, w, create_graph=True)
    new_w = clip(w, list(grads), lr, max_norm)
    return (mlp(x, *new_w).square()).sum()


def test_meta_learning_second_order_matches_reference():
    """The outer gradient through an inner clipped SGD step (second order in the MLP and through the clip's norm)."""
    inputs = _mlp_inputs((9,), 16, 24, seed=3)

    def outer_grads(mlp, clip):
        leaves = [t.clone().requires_grad_() for t in inputs[:4]]
        return torch.autograd.grad(_meta_step(mlp, clip, *leaves, inputs[4]), leaves)

    got = outer_grads(ops.swiglu_mlp, ops.clip_sgd_update)
    want = outer_grads(reference.swiglu_mlp, reference.clip_sgd_update)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


def test_third_order_raises():
    x, w1, w3, w2, gy = (t.requires_grad_() for t in _mlp_inputs((3,), 8, 8))
    grads = torch.autograd.grad((ops.swiglu_mlp(x, w1, w3, w2) * gy).sum(), (x, w1, w3, w2), create_graph=True)
    second = torch.autograd.grad(sum(g.square().sum() for g in grads), (x, w1), create_graph=True)
    with pytest.raises(NotImplementedError, match="third order"):
        torch.autograd.grad(second[0].sum(), x)


# ---- batched fast weights ------------------------------------------------------------------------------------------


def _batched_inputs(batch, n, d, m, dtype=torch.float64, weight_dtype=None, seed=0):
    """x [B, n, d], w1, w3 [B, m, d], w2 [B, d, m], grad_y [B, n, d]: each sequence its own weights."""
    per_seq = [_mlp_inputs((n,), d, m, dtype, weight_dtype, seed=seed + b) for b in range(batch)]
    return tuple(torch.stack(ts) for ts in zip(*per_seq))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch, n, d, m", [(1, 7, 16, 24), (3, 1, 13, 7), (4, 97, 16, 24), (2, 200, 64, 96)])
def test_batched_cpu_matches_reference(dtype, batch, n, d, m, cpu_gemm):
    """Batched weights (one MLP per sequence) against the reference and against one unbatched call per sequence."""
    inputs = _batched_inputs(batch, n, d, m, dtype, seed=batch + n)
    got = _results(ops.swiglu_mlp, *inputs)
    _assert_close_to_reference(inputs, got)
    for b in range(batch):
        one = _results(ops.swiglu_mlp, *(t[b] for t in inputs))
        for g, w in zip(got, one):
            tol = 1e-12 if dtype == torch.float64 else 1e-5
            torch.testing.assert_close(g[b], w, rtol=tol, atol=tol)


def test_batched_gradcheck_and_gradgradcheck():
    x, w1, w3, w2, _ = _batched_inputs(3, 4, 5, 6, seed=3)
    args = [t.requires_grad_() for t in (x, w1, w3, w2)]
    assert torch.autograd.gradcheck(ops.swiglu_mlp, args)
    assert torch.autograd.gradgradcheck(ops.swiglu_mlp, args)


def test_batched_meta_step_matches_reference():
    """Second order through batched fast weights and a batched clipped step (one norm per sequence)."""
    inputs = _batched_inputs(3, 9, 16, 24, seed=4)
    inputs[4][1] *= 40  # sequence 1's gradient is clipped, the others are not

    def outer_grads(mlp, clip):
        leaves = [t.clone().requires_grad_() for t in inputs[:4]]
        w = leaves[1:]
        grads = torch.autograd.grad((mlp(leaves[0], *w) * inputs[4]).sum(), w, create_graph=True)
        new_w = clip(w, list(grads), 0.7, 0.5, batched=True)
        return torch.autograd.grad((mlp(leaves[0], *new_w) ** 2).sum(), leaves)

    got = outer_grads(ops.swiglu_mlp, ops.clip_sgd_update)
    want = outer_grads(reference.swiglu_mlp, reference.clip_sgd_update)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-11)


@requires_simulator
@pytest.mark.parametrize("weight_dtype", [None, torch.float32])
def test_simulated_batched_cuda_mlp_matches_reference(weight_dtype):
    """One batched launch per GEMM in the simulated CUDA pipeline (batched pack_rows, batch strides of every
    operand), forward and backward."""
    for batch, n, d, m in [(3, 7, 16, 24), (2, 1, 32, 8), (4, 33, 16, 40)]:
        inputs = _batched_inputs(batch, n, d, m, torch.bfloat16, weight_dtype, seed=batch * n)
        got = run_in_simulator(lambda inputs=inputs: _op_results(*inputs))
        _assert_close_to_reference(inputs, got)


# (grad_x, grad_w1, grad_w3, grad_w2) selected: the static MLP of an inference step, the fast weights of the first
# suffix block, one weight, and the input with one weight.
OUTPUT_MASKS = [
    (True, False, False, False),
    (False, True, True, True),
    (False, False, False, True),
    (True, True, False, False),
]


@pytest.mark.parametrize("simulated", [False, True], ids=["cpu", "simulator"])
@pytest.mark.parametrize("batched", [False, True], ids=["unbatched", "batched"])
def test_output_mask_selects_gradients(simulated, batched):
    """swiglu_mlp_bwd(output_mask): the selected gradients equal those of the full call bit for bit (their GEMMs are
    the same), the others are None."""
    dtype = torch.bfloat16 if simulated else torch.float32
    if batched:
        x, w1, w3, w2, gy = _batched_inputs(2, 7, 16, 24, dtype, torch.float32, seed=4)
    else:
        x, w1, w3, w2, gy = _mlp_inputs((2, 5), 16, 24, dtype, seed=4)

    def run():
        _, h = fwd_op(x, w1, w3, w2)
        full = bwd_op(gy, x, w1, w3, w2, h, None)
        return full, [bwd_op(gy, x, w1, w3, w2, h, None, list(mask)) for mask in OUTPUT_MASKS]

    full, masked = run_in_simulator(run) if simulated else run()
    for mask, got in zip(OUTPUT_MASKS, masked, strict=True):
        for keep, g, f in zip(mask, got, full, strict=True):
            if keep:
                assert torch.equal(g, f), mask
            else:
                assert g is None, mask


def test_frozen_weights_get_no_gradient_work():
    """The autograd formula asks the backward only for the inputs that need a gradient: with frozen weights, the
    input's gradient and the second order through it are those of trainable ones."""
    x, w1, w3, w2, gy = _mlp_inputs((3, 4), 12, 20)
    xl = x.clone().requires_grad_()
    want = torch.autograd.grad(
        ops.swiglu_mlp(xl, *(w.clone().requires_grad_() for w in (w1, w3, w2))), xl, gy, create_graph=True
    )[0]
    got = torch.autograd.grad(ops.swiglu_mlp(xl, w1, w3, w2), xl, gy, create_graph=True)[0]
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(
        torch.autograd.grad(got.square().sum(), xl)[0],
        torch.autograd.grad(want.square().sum(), xl)[0],
        rtol=1e-12,
        atol=1e-12,
    )


def _output_mask(args: tuple) -> list:
    """swiglu_mlp_bwd's output_mask from a call's arguments (the dispatcher leaves out the default, all true)."""
    return list(args[7]) if len(args) > 7 else [True] * 4


def test_backward_computes_only_the_gradients_the_engine_needs():
    """Under an inner gradient (torch.autograd.grad with respect to some inputs) the backward op is asked only for
    the gradients the engine will use, as torch's own derivatives do (e.g. not the static weights' under the
    gradient with respect to the fast weights); backward() asks for all. Gradients and their second order are those
    of the backward that computes every gradient."""
    x, w1, w3, w2, gy = _mlp_inputs((3, 4), 12, 20)
    leaves = [t.clone().requires_grad_() for t in (x, w1, w3, w2)]

    def grads(wrt: list, asked: list) -> tuple:
        """The first gradients with respect to leaves[wrt] (of those with respect to leaves[asked]) and the second
        order of their squared norm; the masks swiglu_mlp_bwd got."""
        with RecordedCalls(torch.ops.ttt_kernels.swiglu_mlp_bwd) as calls:
            first = torch.autograd.grad(ops.swiglu_mlp(*leaves), [leaves[i] for i in asked], gy, create_graph=True)
        first = [g for i, g in zip(asked, first) if i in wrt]
        second = torch.autograd.grad(sum(g.square().sum() for g in first), leaves, allow_unused=True)
        return [_output_mask(args) for args in calls.args], [g for g in (*first, *second) if g is not None]

    for wrt in ([1], [0, 3], [2]):
        masks, got = grads(wrt, wrt)
        assert masks == [[i in wrt for i in range(4)]], (wrt, masks)
        masks, want = grads(wrt, [0, 1, 2, 3])
        assert masks == [[True] * 4], (wrt, masks)
        for g, f in zip(got, want, strict=True):
            torch.testing.assert_close(g, f, rtol=1e-12, atol=1e-12)
    with RecordedCalls(torch.ops.ttt_kernels.swiglu_mlp_bwd) as calls:
        ops.swiglu_mlp(*leaves).backward(gy)
    assert [_output_mask(args) for args in calls.args] == [[True] * 4], calls.args


def test_batched_arguments_are_checked():
    x, w1, w3, w2, _ = _batched_inputs(2, 3, 8, 16)
    bad = [
        ((x[:1], w1, w3, w2), r"x must have shape \(2, n, d\)"),
        ((x[0], w1, w3, w2), r"x must have shape \(2, n, d\)"),
        ((x, w1, w3, w2[:, :, :4]), r"w2 must have shape \(2, 8, 16\)"),
        ((x, w1, w3[:1], w2), "w3 must have w1's shape"),
    ]
    for args, message in bad:
        with pytest.raises(ValueError, match=message):
            ops.swiglu_mlp(*args)
    with pytest.raises(RuntimeError, match=r"x must have shape \[B, n, d\] with B = 2"):
        fwd_op(x[:1].contiguous(), w1, w3, w2)
    with pytest.raises(RuntimeError, match=r"w2 must have shape \[2, 8, 16\]"):
        fwd_op(x, w1, w3, w2[:1].contiguous())


# ---- op checks, compile, argument errors ----------------------------------------------------------------------------


def test_opcheck():
    x, w1, w3, w2, gy = (t.float().requires_grad_() for t in _mlp_inputs((2, 3), 16, 8))
    torch.library.opcheck(fwd_op, (x, w1, w3, w2))
    _, h = fwd_op(x.detach(), w1.detach(), w3.detach(), w2.detach())
    torch.library.opcheck(bwd_op, (gy, x, w1, w3, w2, h.requires_grad_(), None))
    torch.library.opcheck(bwd_op, (gy, x, w1, w3, w2, h, torch.randn_like(h).requires_grad_()))
    hd = h.detach()
    torch.library.opcheck(gate_op, (hd, torch.randn(6, 8), None, torch.randn(6, 2, 8), torch.randn(6, 8)))
    xb, w1b, w3b, w2b, gyb = (t.float().requires_grad_() for t in _batched_inputs(3, 4, 16, 8))
    torch.library.opcheck(fwd_op, (xb, w1b, w3b, w2b))
    _, hb = fwd_op(xb.detach(), w1b.detach(), w3b.detach(), w2b.detach())
    torch.library.opcheck(bwd_op, (gyb, xb, w1b, w3b, w2b, hb.requires_grad_(), None))
    for mask in OUTPUT_MASKS:
        torch.library.opcheck(bwd_op, (gyb, xb, w1b, w3b, w2b, hb, None, list(mask)))


def test_torch_compile_fullgraph():
    class TTTBlock(torch.nn.Module):
        """A dynamic MLP whose fast weights take one clipped step from given gradients."""

        def __init__(self, d, m):
            super().__init__()
            self.w1 = torch.nn.Parameter(torch.randn(m, d) / d**0.5)
            self.w3 = torch.nn.Parameter(torch.randn(m, d) / d**0.5)
            self.w2 = torch.nn.Parameter(torch.randn(d, m) / m**0.5)

        def forward(self, x, grads):
            w = ops.clip_sgd_update([self.w1, self.w3, self.w2], grads, 0.5, 1.0)
            return x + ops.swiglu_mlp(x, *w)

    torch.manual_seed(0)
    model = TTTBlock(16, 24)
    x = torch.randn(2, 9, 16, requires_grad=True)
    grads = [torch.randn_like(p, requires_grad=True) for p in model.parameters()]
    leaves = [x, *model.parameters(), *grads]
    out = torch.compile(model, fullgraph=True)(x, grads)
    got = (out.detach(), *torch.autograd.grad(out.square().sum(), leaves))
    w = reference.clip_sgd_update([model.w1, model.w3, model.w2], grads, 0.5, 1.0)
    out = x + reference.swiglu_mlp(x, *w)
    want = (out.detach(), *torch.autograd.grad(out.square().sum(), leaves))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_python_api_rejects_bad_arguments():
    x, w1, w3, w2, _ = _mlp_inputs((4,), 8, 16, torch.float32)
    bad = [
        ((x.tolist(), w1, w3, w2), "x must be a tensor"),
        ((x.int(), w1, w3, w2), "x must be float32"),
        ((torch.empty(4, 0), w1, w3, w2), "non-empty last dimension"),
        ((x, w1[:, :7], w3, w2), r"w1 must have shape \(m, 8\)"),
        ((x, w1, w3[:8], w2), "w3 must have w1's shape"),
        ((x, w1, w3, w2.T), r"w2 must have shape \(8, 16\)"),
        ((x, w1.double(), w3.double(), w2.double()), "must share one dtype"),
        ((x.bfloat16(), w1.half(), w3.half(), w2.half()), "must share one dtype"),
    ]
    for args, message in bad:
        with pytest.raises(ValueError, match=message):
            ops.swiglu_mlp(*args)


def test_ops_reject_bad_arguments():
    x, w1, w3, w2, gy = _mlp_inputs((4,), 8, 16, torch.float32)
    _, h = fwd_op(x, w1, w3, w2)
    for args, message in [
        ((x, w1, w3, w2.T.contiguous()), r"w2 must have shape \[8, 16\]"),
        ((x.T, w1[:, :4].contiguous(), w3[:, :4].contiguous(), w2[:4].contiguous()), "x must be contiguous"),
        ((x.bfloat16(), w1.half(), w3.half(), w2.half()), "the weights must have x's dtype"),
    ]:
        with pytest.raises(RuntimeError, match=message):
            fwd_op(*args)
    for args, message in [
        ((gy[:3], x, w1, w3, w2, h, None), "grad_y must have x's shape"),
        ((gy, x, w1, w3, w2, h[:3], None), r"h must have shape \[4, 16, 2\]"),
        ((gy, x, w1, w3, w2, h, h.double()), "grad_h must have x's dtype"),
    ]:
        with pytest.raises(RuntimeError, match=message):
            bwd_op(*args)


# ---- the CUDA path in the simulator ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_simulated_cuda_mlp_matches_reference(dtype):
    """Forward and backward of the CUDA pipeline in the simulator: pack_rows, the CUTLASS GEMMs and swiglu_bwd."""
    cases = [((rows,), 16, 24, None) for rows in ROWS] + [((2, 3), 32, 16, torch.float32)]
    for lead, d, m, weight_dtype in cases:
        inputs = _mlp_inputs(lead, d, m, dtype, weight_dtype, seed=sum(lead) + d)
        got = run_in_simulator(lambda inputs=inputs: _op_results(*inputs))
        _assert_close_to_reference(inputs, got)


def _meta_grads(mlp, clip, inputs):
    """The outer gradients (dx, dw1, dw3, dw2) of _meta_step on inputs (x, w1, w3, w2, gy)."""
    leaves = [t.clone().requires_grad_() for t in inputs[:4]]
    return torch.autograd.grad(_meta_step(mlp, clip, *leaves, inputs[4]), leaves)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "lead, d, m",
    [((5,), 16, 8), ((97,), 24, 72), ((2, 65), 32, 136)],  # one row tile; rows and m across tiles; batched
    ids=["small", "rows-97", "batched-2x65"],
)
def test_simulated_cuda_mlp_second_order(dtype, lead, d, m):
    """The meta-gradient through the simulated CUDA forward/backward (the backward with grad_h) and the simulated
    gate kernel, against float64: at most twice the error of eager PyTorch in the same 16-bit dtype (float32 master
    weights, cast to it for the matmuls). Errors are norm-wise (||got - exact|| / ||exact||): the maximum over a few
    hundred elements of 16-bit rounding noise varies too much from one element to the next to compare two methods."""
    inputs = _mlp_inputs(lead, d, m, dtype, torch.float32, seed=5 + d)
    got = run_in_simulator(lambda: _meta_grads(ops.swiglu_mlp, ops.clip_sgd_update, inputs))
    exact = _meta_grads(reference.swiglu_mlp, reference.clip_sgd_update, [t.double() for t in inputs])
    eager = _meta_grads(_eager_16bit_mlp, reference.clip_sgd_update, inputs)
    for name, g, e, want in zip(("dx", "dw1", "dw3", "dw2"), got, eager, exact, strict=True):
        assert g.dtype == e.dtype and g.shape == e.shape, name
        err = ((g.double() - want).norm() / want.norm()).item()
        eager_err = ((e.double() - want).norm() / want.norm()).item()
        assert 0 < eager_err and err <= 2 * eager_err, f"{name}: error {err:.3e}, same-dtype eager {eager_err:.3e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_simulated_gate_bwd_bwd_kernel(dtype):
    gen = torch.Generator().manual_seed(4)
    rows, m = 33, 20
    args = [
        torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        for shape in ((rows, m, 2), (rows, m), (rows, m, 2), (rows, 2, m), (rows, m))
    ]
    for grad_h in (None, args[2]):
        inputs = (args[0], args[1], grad_h, args[3], args[4])
        got = run_in_simulator(lambda inputs=inputs: gate_op(*inputs))
        want = gate_op(*(None if t is None else t.double() for t in inputs))
        for g, w in zip(got, want):
            assert g.dtype == dtype
            tol = 1e-12 if dtype == torch.float64 else (2e-6 if dtype == torch.float32 else 2e-2)
            torch.testing.assert_close(g.double(), w, rtol=tol, atol=tol * w.abs().max().item())


@requires_simulator
def test_simulated_cuda_rejects_unsupported_shapes():
    x, w1, w3, w2, _ = _mlp_inputs((4,), 12, 16, torch.bfloat16)
    with ttt_kernels.sim.enabled():
        with pytest.raises(RuntimeError, match="d and m must be multiples of 8 .* got d=12, m=16"):
            fwd_op(x, w1, w3, w2)
        x, w1, w3, w2, _ = _mlp_inputs((4,), 16, 16, torch.float32)
        with pytest.raises(RuntimeError, match="x must be bfloat16 or float16"):
            fwd_op(x, w1, w3, w2)


# ---- CUDA -----------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not ttt_kernels.build_info()["cuda_dispatch"], reason="built without CUDA dispatch")
def test_cuda_dispatch_is_registered():
    for op in ("swiglu_mlp_fwd", "swiglu_mlp_bwd", "swiglu_gate_bwd_bwd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ttt_kernels::{op}", "CUDA"), op


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_mlp_matches_reference(dtype):
    for lead, d, m, weight_dtype in [((1,), 16, 24, None), ((1025,), 768, 1664, torch.float32), ((3, 7), 64, 96, None)]:
        inputs = _mlp_inputs(lead, d, m, dtype, weight_dtype, device="cuda")
        first = _op_results(*inputs)
        _assert_close_to_reference(inputs, first)
        assert all(torch.equal(a, b) for a, b in zip(first, _op_results(*inputs))), "deterministic"


@pytest.mark.gpu
def test_gpu_second_order():
    inputs = _mlp_inputs((5,), 16, 8, torch.bfloat16, torch.float32, device="cuda")
    leaves = [t.requires_grad_() for t in inputs[:4]]
    loss = _meta_step(ops.swiglu_mlp, ops.clip_sgd_update, *leaves, inputs[4])
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(loss, leaves))
