"""Double backward of sliding-window attention, CUDA kernels (csrc/cuda/swa_bwd_bwd.cu): in the simulator, on a
GPU when there is one, and their SASS.

The reference is float64 autograd-of-autograd of the dense ttt_kernels.reference.swa_attention. Tolerances follow
tests/test_swa_cuda.py: the error of a bfloat16/float16 result must stay within twice the error of the same
double backward computed eagerly in that dtype, plus one ulp of the dtype at the result's magnitude. Outputs are
allocated NaN-filled, so an element a kernel does not write fails the comparison.
"""

import itertools

import pytest
import torch
from helpers import assert_bit_identical, requires_simulator, run_in_simulator
from test_swa_cuda import assert_tensor_core_kernels, make_inputs, nan_filled_allocations, swa_sass_or_skip

import ttt_kernels
from ttt_kernels import reference
from ttt_kernels.ops import swa_attention

_ops = torch.ops.ttt_kernels
DTYPES = (torch.bfloat16, torch.float16)
COTANGENTS = ("gdq", "gdk", "gdv")
# Every non-empty subset of the cotangents (an absent one is zero; with none the op returns zeros without a launch).
COTANGENT_SETS = [set(c) for n in (1, 2, 3) for c in itertools.combinations(COTANGENTS, n)]

# (batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, window): every head_dim, lengths 1, 7, 33, 97 (none a
# multiple of the 64-row blocks or the 16/32-column tiles), seqlen_q < seqlen_k, windows 1, 5, 16, 64 and >= seqlen_k,
# GQA 4:2 and MQA.
SHAPES = [
    (1, 1, 1, 1, 1, 64, 1),
    (2, 7, 7, 2, 1, 64, 5),  # MQA
    (1, 33, 33, 4, 2, 80, 16),  # GQA 4:2
    (1, 33, 70, 2, 2, 96, 64),  # seqlen_q < seqlen_k
    (1, 33, 40, 2, 1, 128, 1000),  # window > seqlen_k: plain causal, MQA
    (1, 97, 97, 1, 1, 64, 1),  # every query sees only itself
    (1, 7, 90, 2, 1, 80, 16),  # keys 0..67 are seen by no query: grad_k = grad_v = 0 there
    (2, 80, 80, 6, 2, 64, 65),  # 3 query heads per kv head, the window's edge one key after a tile boundary
    (1, 80, 80, 8, 2, 64, 63),  # 4 per kv head, one key before
]
SLOW_SHAPES = [
    (1, 97, 150, 4, 2, 128, 64),
    (2, 130, 130, 2, 1, 80, 40),
    (1, 200, 260, 2, 2, 96, 100),
    (1, 97, 97, 4, 1, 64, 97),
]


def make_cotangents(shape, dtype, present, seed=1):
    """{name: tensor or None}: gdq like q, gdk and gdv like k."""
    b, sq, sk, hq, hkv, d, _ = shape
    g = torch.Generator().manual_seed(seed)
    sizes = {"gdq": (b, sq, hq, d), "gdk": (b, sk, hkv, d), "gdv": (b, sk, hkv, d)}
    return {
        name: torch.randn(*sizes[name], generator=g, dtype=torch.float64).to(dtype) if name in present else None
        for name in COTANGENTS
    }


def forward(inputs, scale):
    """out, lse of swa_fwd: the inputs of the double backward. Called outside the simulator, so on CPU tensors the
    CPU kernel (float32 math) computes them."""
    q, k, v, _, window = inputs
    return _ops.swa_fwd(q, k, v, window, scale)


def op_double_backward(inputs, cotangents, scale, out, lse):
    """(grad_q, grad_k, grad_v, grad_dout) of torch.ops.ttt_kernels.swa_bwd_bwd."""
    q, k, v, dout, window = inputs
    return _ops.swa_bwd_bwd(
        cotangents["gdq"], cotangents["gdk"], cotangents["gdv"], q, k, v, out, dout, lse, window, scale
    )


def reference_double_backward(inputs, cotangents, scale, dtype):
    """(grad_q, grad_k, grad_v, grad_dout) by autograd of autograd of the dense reference, computed in dtype."""
    q, k, v, dout, window = (
        t.detach().to(dtype).requires_grad_() if isinstance(t, torch.Tensor) else t for t in inputs
    )
    out = reference.swa_attention(q, k, v, window, scale=scale)
    grads = torch.autograd.grad(out, (q, k, v), dout, create_graph=True)
    loss = sum((c.to(dtype) * g).sum() for c, g in zip(cotangents.values(), grads, strict=True) if c is not None)
    wrt = (q, k, v, dout)
    results = torch.autograd.grad(loss, wrt, allow_unused=True)
    return tuple(torch.zeros_like(x) if r is None else r.detach() for r, x in zip(results, wrt, strict=True))


def assert_matches_reference(inputs, cotangents, results, scale):
    dtype = inputs[0].dtype
    exact = reference_double_backward(inputs, cotangents, scale, torch.float64)
    eager = reference_double_backward(inputs, cotangents, scale, dtype)
    names = ("grad_q", "grad_k", "grad_v", "grad_dout")
    for name, got, ref, want in zip(names, results, eager, exact, strict=True):
        got = got.cpu()
        assert got.dtype == dtype and got.shape == want.shape, name
        err = (got.double() - want).abs().max().item()
        ref_err = (ref.double() - want).abs().max().item()
        slack = torch.finfo(dtype).eps * max(1.0, want.abs().max().item())
        assert err <= 2 * ref_err + slack, f"{name}: error {err:.3e}, eager {dtype} reference {ref_err:.3e}"


def simulate(inputs, cotangents, scale, **kwargs):
    """The simulated kernels' results, identical under the given schedules, with NaN-filled output allocations."""
    out, lse = forward(inputs, scale)
    with nan_filled_allocations():
        return run_in_simulator(lambda: op_double_backward(inputs, cotangents, scale, out, lse), **kwargs)


def check_simulated(shape, dtype, scale, schedules, present=COTANGENTS, seed=None, cotangent_seed=1):
    """The simulated kernels on random inputs of `shape` against the reference."""
    inputs = make_inputs(shape, dtype, seed=sum(shape) if seed is None else seed)
    cotangents = make_cotangents(shape, dtype, set(present), seed=cotangent_seed)
    results = simulate(inputs, cotangents, scale, schedules=schedules)
    assert_matches_reference(inputs, cotangents, results, scale)


# ---- simulator -------------------------------------------------------------------------------------------------------

SIMULATED_SHAPES = [pytest.param(shape, ("in_order", "reverse"), id=str(shape)) for shape in SHAPES] + [
    pytest.param(shape, ("in_order", "shuffle"), id=str(shape), marks=pytest.mark.slow) for shape in SLOW_SHAPES
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "schedules"), SIMULATED_SHAPES)
def test_simulated_kernels_match_reference(shape, schedules, dtype):
    check_simulated(shape, dtype, shape[5] ** -0.5, schedules)


@pytest.mark.parametrize("present", COTANGENT_SETS, ids=lambda s: "+".join(sorted(s)))
def test_simulated_absent_cotangents_count_as_zero(present):
    """Each subset of cotangents: the kernels skip the absent ones (the reference sees zeros) and still write every
    output element."""
    shape = (1, 33, 47, 4, 2, 64, 20)
    check_simulated(shape, torch.float16, 0.125, ("in_order", "reverse"), present, seed=7, cotangent_seed=len(present))


@pytest.mark.parametrize("window", [63, 64, 65, 129])
def test_simulated_windows_around_tile_boundaries(window):
    """Window edges just before, on and after 16-, 32- and 64-position tile boundaries."""
    shape = (1, 90, 130, 1, 1, 80, window)
    check_simulated(shape, torch.bfloat16, 0.11, ("in_order",), seed=window, cotangent_seed=window)


@pytest.mark.parametrize("scale", [-0.37, 0.0])
def test_simulated_kernels_any_finite_scale(scale):
    check_simulated((1, 40, 50, 2, 1, 64, 24), torch.float16, scale, ("in_order",), seed=11)


def test_simulated_results_do_not_depend_on_the_worker_count_or_schedule():
    shape = (2, 40, 75, 2, 1, 128, 30)
    inputs = make_inputs(shape, torch.bfloat16, seed=3)
    cotangents = make_cotangents(shape, torch.bfloat16, {"gdq", "gdv"})
    one = simulate(inputs, cotangents, 0.1, schedules=("in_order",), num_workers=1)
    many = simulate(inputs, cotangents, 0.1, schedules=("shuffle", "reverse"), num_workers=3)
    assert_bit_identical(one, many, "1 worker vs 3 workers")


def test_simulated_strided_inputs_match_contiguous():
    """Packed-qkv views (strided rows and heads) and a broadcast (stride-0) dout run in place and give bitwise the
    contiguous result."""
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(1, 45, 3, 2, 64, generator=g).half()
    q, k, v = qkv.unbind(2)
    dout = torch.randn(1, 45, 2, 64, generator=g).half()[:1, :1, :1].expand(1, 45, 2, 64)
    grads = torch.randn(1, 45, 3, 2, 64, generator=g).half().unbind(2)
    cotangents = dict(zip(COTANGENTS, grads, strict=True))
    got = simulate((q, k, v, dout, 17), cotangents, 0.125, schedules=("in_order",))
    contiguous = {name: c.contiguous() for name, c in cotangents.items()}
    want = simulate(
        (q.contiguous(), k.contiguous(), v.contiguous(), dout.contiguous(), 17),
        contiguous,
        0.125,
        schedules=("in_order",),
    )
    assert_bit_identical(got, want, "strided vs contiguous")


def test_simulated_second_order_autograd_runs_the_kernels():
    """Differentiating swa_attention twice in the simulator (dk unused: its cotangent arrives as None) equals calling
    swa_fwd and swa_bwd_bwd explicitly."""
    shape = (1, 30, 41, 2, 1, 64, 12)
    q, k, v, dout, window = make_inputs(shape, torch.bfloat16, seed=2)
    cotangents = make_cotangents(shape, torch.bfloat16, {"gdq", "gdv"})
    leaves = tuple(t.requires_grad_() for t in (q, k, v))

    def run():
        dq, _, dv = torch.autograd.grad(swa_attention(*leaves, window), leaves, dout, create_graph=True)
        loss = (dq * cotangents["gdq"]).sum() + (dv * cotangents["gdv"]).sum()
        return tuple(g.detach() for g in torch.autograd.grad(loss, leaves))

    got = run_in_simulator(run, schedules=("in_order", "reverse"))
    plain = (q.detach(), k.detach(), v.detach(), dout, window)
    with ttt_kernels.sim.enabled():
        out, lse = _ops.swa_fwd(*plain[:3], window, 64**-0.5)  # the simulated forward, as autograd's
        want = op_double_backward(plain, cotangents, 64**-0.5, out, lse)[:3]
    assert_bit_identical(got, want, "autograd vs explicit swa_bwd_bwd")


def test_simulated_empty_queries_write_zero_grad_k_grad_v():
    shape = (1, 0, 9, 2, 1, 64, 4)
    inputs = make_inputs(shape, torch.bfloat16)
    cotangents = make_cotangents(shape, torch.bfloat16, {"gdk", "gdv"})
    grad_q, grad_k, grad_v, grad_dout = simulate(inputs, cotangents, 0.125)
    assert grad_q.shape == grad_dout.shape == (1, 0, 2, 64)
    assert torch.equal(grad_k, torch.zeros_like(grad_k)) and torch.equal(grad_v, torch.zeros_like(grad_v))


@requires_simulator
def test_simulated_kernels_reject_unsupported_arguments():
    """What the CUDA kernels do not support fails with the op, the argument and what is expected."""
    cases = [
        ((1, 8, 8, 1, 1, 64, 3), torch.float32, "the CUDA kernels take bfloat16 or float16"),
        ((1, 8, 8, 1, 1, 64, 3), torch.float64, "the CUDA kernels take bfloat16 or float16"),
        ((1, 8, 8, 1, 1, 40, 3), torch.bfloat16, "head_dim must be 64, 80, 96 or 128, got 40"),
        ((1, 8, 8, 1, 1, 256, 3), torch.float16, "head_dim must be 64, 80, 96 or 128, got 256"),
    ]
    for shape, dtype, message in cases:
        inputs = make_inputs(shape, dtype)
        cotangents = make_cotangents(shape, dtype, {"gdv"})
        out, lse = forward(inputs, 0.1)
        with ttt_kernels.sim.enabled():
            with pytest.raises(RuntimeError, match=r"swa_bwd_bwd \(CUDA\): .*" + message):
                op_double_backward(inputs, cotangents, 0.1, out, lse)


# ---- GPU -------------------------------------------------------------------------------------------------------------


def on(device, inputs, cotangents):
    moved = tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in inputs)
    return moved, {name: None if c is None else c.to(device) for name, c in cotangents.items()}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_kernels_match_reference_and_are_deterministic(dtype):
    for shape in SHAPES + SLOW_SHAPES + [(1, 1025, 2049, 4, 2, 128, 512)]:
        for present in (set(COTANGENTS), {"gdk"}, {"gdq", "gdv"}):
            cpu_inputs = make_inputs(shape, dtype, seed=sum(shape))
            cpu_cotangents = make_cotangents(shape, dtype, present)
            inputs, cotangents = on("cuda", cpu_inputs, cpu_cotangents)
            scale = shape[5] ** -0.5
            out, lse = forward(inputs, scale)
            with nan_filled_allocations():
                first = op_double_backward(inputs, cotangents, scale, out, lse)
                second = op_double_backward(inputs, cotangents, scale, out, lse)
            assert_matches_reference(cpu_inputs, cpu_cotangents, first, scale)
            assert_bit_identical(first, second, f"two runs of {shape}")


@pytest.mark.gpu
def test_gpu_kernels_match_the_simulator():
    """Hardware and simulator differ only in the tensor cores' fp32 summation order."""
    shape = (1, 97, 150, 4, 2, 96, 70)
    inputs = make_inputs(shape, torch.bfloat16)
    cotangents = make_cotangents(shape, torch.bfloat16, set(COTANGENTS))
    simulated = simulate(inputs, cotangents, 0.1, schedules=("in_order",))
    out, lse = forward(inputs, 0.1)  # the simulated run's out and lse
    on_gpu = op_double_backward(*on("cuda", inputs, cotangents), 0.1, out.cuda(), lse.cuda())
    for a, b in zip(simulated, on_gpu, strict=True):
        torch.testing.assert_close(b.cpu().float(), a.float(), rtol=2e-2, atol=2e-2)


# ---- SASS ------------------------------------------------------------------------------------------------------------

# kernel name -> instantiations per arch: 2 dtypes x 4 head dims (x 2 passes for the query kernel)
MMA_KERNELS = {"swa_bwd_bwd_query_kernel": 16, "swa_bwd_bwd_key_kernel": 8}


@pytest.mark.skipif(not ttt_kernels.build_info()["cuda_kernels"], reason="built without CUDA kernels (no nvcc)")
def test_sass_uses_tensor_cores_and_no_local_memory():
    assert_tensor_core_kernels(swa_sass_or_skip(), MMA_KERNELS)
