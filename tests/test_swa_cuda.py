"""Sliding-window attention, CUDA kernels (csrc/cuda/swa.cu): in the simulator, on a GPU when there is one, and
their SASS.

Tolerances follow FlashAttention's tests: the error of a bfloat16/float16 result against the float64 reference on the
same (rounded) inputs must stay within twice the error of the eager reference computed in that dtype, plus one ulp
of the dtype at the result's magnitude. Outputs are allocated NaN-filled (deterministic mode fills uninitialized
memory), so an element a kernel does not write fails the comparison.
"""

import contextlib
import os

import pytest
import torch
from helpers import SASS_ARCHS, assert_bit_identical, requires_simulator, run_in_simulator, sass_or_skip

import ttt_kernels
from ttt_kernels import reference
from ttt_kernels.ops import swa_attention

_ops = torch.ops.ttt_kernels
DTYPES = (torch.bfloat16, torch.float16)

# (batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, window): every head_dim, lengths 1, 7, 97, 200 and ones
# that are not multiples of the 64-row tiles, seqlen_q < seqlen_k, windows below / equal to / above seqlen_k, GQA/MQA.
SHAPES = [
    (1, 1, 1, 1, 1, 64, 1),
    (2, 7, 7, 2, 1, 64, 3),
    (1, 97, 97, 2, 2, 80, 97),  # window == seqlen_k: plain causal
    (1, 97, 200, 4, 2, 96, 1000),  # seqlen_q < seqlen_k, window > seqlen_k
    (1, 200, 200, 1, 1, 128, 50),  # the window's left edge crosses tiles
    (1, 7, 200, 2, 1, 128, 20),  # keys 0..173 are seen by no query: dk = dv = 0 there
    (1, 1, 97, 3, 1, 80, 64),  # one query (decode), MQA
    (1, 200, 200, 2, 2, 64, 1),  # every query sees only itself
    (1, 130, 197, 2, 1, 96, 70),  # query and key tiles misaligned (offset 67)
]
SLOW_SHAPES = [
    (2, 700, 1500, 4, 2, 128, 300),
    (1, 1100, 1100, 2, 1, 64, 1100),
    (1, 600, 600, 4, 4, 80, 129),
]


def make_inputs(shape, dtype, device="cpu", seed=0):
    """q, k, v, dout (float64 draws rounded to dtype) and the window."""
    b, sq, sk, hq, hkv, d, window = shape
    g = torch.Generator().manual_seed(seed)
    q, k, v, dout = (
        torch.randn(*s, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
        for s in ((b, sq, hq, d), (b, sk, hkv, d), (b, sk, hkv, d), (b, sq, hq, d))
    )
    return q, k, v, dout, window


def ops_forward_backward(q, k, v, dout, window, scale):
    """(out, lse, dq, dk, dv) from the native ops."""
    out, lse = _ops.swa_fwd(q, k, v, window, scale)
    dq, dk, dv = _ops.swa_bwd(dout, q, k, v, out, lse, window, scale)
    return out, lse, dq, dk, dv


def reference_forward_backward(q, k, v, dout, window, scale):
    """(out, dq, dk, dv) of the reference in the inputs' dtype, by autograd."""
    q, k, v = (t.detach().cpu().requires_grad_() for t in (q, k, v))
    out = reference.swa_attention(q, k, v, window, scale=scale)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), dout.cpu()))


def reference_lse(q, k, window, scale):
    """float64 logsumexp of each row of masked scores, [batch, heads_q, seqlen_q]."""
    q, k = q.cpu().double(), k.cpu().double()
    sq, sk = q.shape[1], k.shape[1]
    k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
    s = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    t = torch.arange(sk - sq, sk)[:, None]
    j = torch.arange(sk)
    return s.masked_fill((j > t) | (j <= t - window), float("-inf")).logsumexp(-1)


@contextlib.contextmanager
def nan_filled_allocations():
    """at::empty returns NaN-filled tensors inside (deterministic mode's fill_uninitialized_memory)."""
    was_on = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_on)


def assert_matches_reference(inputs, results, scale):
    """results = (out, lse, dq, dk, dv) computed by a CUDA kernel from inputs = (q, k, v, dout, window)."""
    q, k, v, dout, window = inputs
    dtype = q.dtype
    out, lse, dq, dk, dv = (t.cpu() for t in results)
    assert lse.dtype == torch.float32 and lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    want_lse = reference_lse(q, k, window, scale)
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-5, atol=1e-5)
    exact = reference_forward_backward(*(t.double() for t in (q, k, v, dout)), window, scale)
    eager = reference_forward_backward(q, k, v, dout, window, scale)
    for name, got, ref, want in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), eager, exact, strict=True):
        assert got.dtype == dtype and got.shape == want.shape, name
        err = (got.double() - want).abs().max().item()
        ref_err = (ref.double() - want).abs().max().item()
        slack = torch.finfo(dtype).eps * max(1.0, want.abs().max().item())
        assert err <= 2 * ref_err + slack, f"{name}: error {err:.3e}, eager {dtype} reference {ref_err:.3e}"


# ---- simulator -------------------------------------------------------------------------------------------------------


def simulate(inputs, scale, **kwargs):
    """(out, lse, dq, dk, dv) of the simulated CUDA kernels, identical under the in_order, reverse and shuffle
    schedules, with NaN-filled output allocations."""
    q, k, v, dout, window = inputs
    with nan_filled_allocations():
        return run_in_simulator(lambda: ops_forward_backward(q, k, v, dout, window, scale), **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_simulated_kernels_match_reference(shape, dtype):
    inputs = make_inputs(shape, dtype, seed=sum(shape))
    scale = shape[5] ** -0.5
    assert_matches_reference(inputs, simulate(inputs, scale), scale)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SLOW_SHAPES)
def test_simulated_kernels_match_reference_long(shape, dtype):
    inputs = make_inputs(shape, dtype)
    scale = shape[5] ** -0.5
    assert_matches_reference(inputs, simulate(inputs, scale, schedules=("in_order", "shuffle")), scale)


@pytest.mark.parametrize("seqlen_q", [260, 223, 197])
def test_simulated_windows_around_tile_boundaries(seqlen_q):
    """Windows whose left edge falls on, just before or just after a 64-key tile boundary for some query block: the
    tile-level mask decision must be exact at both ends."""
    for window in (63, 64, 65, 127, 128, 129, 191, 192, 193, 260):
        inputs = make_inputs((1, seqlen_q, 260, 1, 1, 64, window), torch.bfloat16, seed=window)
        assert_matches_reference(inputs, simulate(inputs, 0.125, schedules=("in_order", "reverse")), 0.125)


@pytest.mark.parametrize(
    "heads_q, heads_kv, window, dtype",
    [
        (4, 1, 63, torch.bfloat16),  # MQA, the window's edge one key before a tile boundary
        (6, 3, 65, torch.float16),  # 2 query heads per kv head, one key after
        (8, 2, 129, torch.bfloat16),  # 4 per kv head, across two tiles
        (6, 2, 64, torch.float16),  # 3 per kv head (a ratio that is not a power of two), on the boundary
    ],
)
def test_simulated_gqa_ratios_at_tile_edges(heads_q, heads_kv, window, dtype):
    """GQA/MQA with several query heads per kv head (dk and dv sum over the group) and windows at tile edges."""
    inputs = make_inputs((2, 140, 140, heads_q, heads_kv, 64, window), dtype, seed=heads_q * 31 + window)
    assert_matches_reference(inputs, simulate(inputs, 0.125, schedules=("in_order", "reverse")), 0.125)


@pytest.mark.parametrize("scale", [-0.37, 0.0, 0.9])
def test_simulated_kernels_any_finite_scale(scale):
    """The softmax max is taken after scaling, so negative and zero scales work too."""
    inputs = make_inputs((1, 70, 90, 2, 1, 64, 40), torch.bfloat16)
    assert_matches_reference(inputs, simulate(inputs, scale), scale)


def test_simulated_results_do_not_depend_on_the_worker_count():
    inputs = make_inputs((2, 97, 130, 2, 1, 64, 60), torch.float16)
    one = simulate(inputs, 0.125, schedules=("in_order",), num_workers=1)
    many = simulate(inputs, 0.125, schedules=("shuffle",), num_workers=3)
    assert_bit_identical(one, many, "1 worker vs 3 workers")


def test_simulated_strided_and_misaligned_inputs_match_contiguous():
    """Packed-qkv views (strided rows and heads) and a broadcast dout (strides 0) run in place; views whose rows are
    not 16-byte aligned are copied by the glue. All give bitwise the contiguous result."""
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 77, 3, 4, 64, generator=g).bfloat16()
    q, k, v = qkv.unbind(2)
    dout = torch.randn(2, 77, 4, 64, generator=g).bfloat16()
    flat = torch.randn(2 * 77 * 4 * 64 + 1, generator=g).bfloat16()
    misaligned = flat[1:].view(2, 77, 4, 64)
    assert misaligned.data_ptr() % 16 != 0
    broadcast = dout[:1, :1, :1].expand_as(dout)
    for args in ((q, k, v, dout), (q, k, v, broadcast), (misaligned, k, v, dout), (q, k, v, misaligned)):
        contiguous = tuple(t.contiguous() for t in args)
        got = simulate((*args, 20), 0.125, schedules=("in_order", "reverse"))
        want = simulate((*contiguous, 20), 0.125, schedules=("in_order",))
        assert_bit_identical(got, want, "strided vs contiguous")


def test_simulated_autograd_matches_the_ops():
    """swa_attention's autograd in the simulator (out.sum(): an expanded gradient) equals calling the ops."""
    q, k, v, _, window = make_inputs((1, 50, 60, 2, 1, 80, 25), torch.float16)
    q, k, v = (t.requires_grad_() for t in (q, k, v))

    def run():
        grads = torch.autograd.grad(swa_attention(q, k, v, window).sum(), (q, k, v))
        return tuple(g.detach() for g in grads)

    got = run_in_simulator(run, schedules=("in_order", "reverse"))
    with ttt_kernels.sim.enabled():
        out, lse = _ops.swa_fwd(q.detach(), k.detach(), v.detach(), window, 80**-0.5)
        want = _ops.swa_bwd(torch.ones_like(out), q.detach(), k.detach(), v.detach(), out, lse, window, 80**-0.5)
    assert_bit_identical(got, want, "autograd vs explicit swa_bwd")


def test_simulated_empty_query_block_writes_zero_dk_dv():
    """seqlen_q = 0: dk and dv are zeros, out and lse empty."""
    q, k, v, dout, _ = make_inputs((1, 0, 9, 2, 1, 64, 4), torch.bfloat16)
    out, lse, dq, dk, dv = simulate((q, k, v, dout, 4), 0.125)
    assert out.shape == (1, 0, 2, 64) and lse.shape == (1, 2, 0) and dq.shape == (1, 0, 2, 64)
    assert torch.equal(dk, torch.zeros_like(k)) and torch.equal(dv, torch.zeros_like(v))


@requires_simulator
def test_simulated_kernels_reject_unsupported_arguments():
    """What the CUDA kernels do not support fails with the op, the argument and what is expected."""
    cases = [
        (make_inputs((1, 8, 8, 1, 1, 64, 3), torch.float32), "the CUDA kernels take bfloat16 or float16"),
        (make_inputs((1, 8, 8, 1, 1, 64, 3), torch.float64), "the CUDA kernels take bfloat16 or float16"),
        (make_inputs((1, 8, 8, 1, 1, 40, 3), torch.bfloat16), "head_dim must be 64, 80, 96 or 128, got 40"),
        (make_inputs((1, 8, 8, 1, 1, 256, 3), torch.float16), "head_dim must be 64, 80, 96 or 128, got 256"),
    ]
    for (q, k, v, dout, window), message in cases:
        with ttt_kernels.sim.enabled():
            with pytest.raises(RuntimeError, match=r"swa_fwd \(CUDA\): .*" + message):
                _ops.swa_fwd(q, k, v, window, 0.1)
        out, lse = _ops.swa_fwd(q, k, v, window, 0.1)  # the CPU kernel
        with ttt_kernels.sim.enabled():
            with pytest.raises(RuntimeError, match=r"swa_bwd \(CUDA\): .*" + message):
                _ops.swa_bwd(dout, q, k, v, out, lse, window, 0.1)


# ---- GPU -------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_kernels_match_reference_and_are_deterministic(dtype):
    for shape in SHAPES + SLOW_SHAPES + [(1, 2049, 2049, 4, 2, 128, 512)]:
        inputs = make_inputs(shape, dtype, device="cuda", seed=sum(shape))
        scale = shape[5] ** -0.5
        with nan_filled_allocations():
            first = ops_forward_backward(*inputs, scale)
            second = ops_forward_backward(*inputs, scale)
        assert_matches_reference(inputs, first, scale)
        assert_bit_identical(first, second, f"two runs of {shape}")


@pytest.mark.gpu
def test_gpu_kernels_match_the_simulator():
    """Hardware and simulator differ only in the tensor cores' fp32 summation order."""
    inputs = make_inputs((1, 130, 197, 4, 2, 128, 70), torch.bfloat16)
    simulated = simulate(inputs, 0.1, schedules=("in_order",))
    on_gpu = ops_forward_backward(*(t.cuda() if isinstance(t, torch.Tensor) else t for t in inputs), 0.1)
    for a, b in zip(simulated, on_gpu, strict=True):
        torch.testing.assert_close(b.cpu().float(), a.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
def test_gpu_rejects_float32():
    q, k, v, _, window = make_inputs((1, 8, 8, 1, 1, 64, 3), torch.float32, device="cuda")
    with pytest.raises(RuntimeError, match=r"swa_fwd \(CUDA\): the CUDA kernels take bfloat16 or float16"):
        _ops.swa_fwd(q, k, v, window, 0.1)


# ---- SASS ------------------------------------------------------------------------------------------------------------

# The tensor-core kernels; swa_bwd_dot_do_o_kernel is checked for local memory only.
MMA_KERNELS = ("swa_fwd_kernel", "swa_bwd_dkdv_kernel", "swa_bwd_dq_kernel")


def swa_sass_or_skip():
    """{(arch, kernel): opcodes without modifiers} of the swa kernels in libttt_kernels_cuda.so."""
    listing = sass_or_skip(os.path.join(ttt_kernels.lib_dir(), "libttt_kernels_cuda.so"), "swa_")
    return {key: {opcode.split(".")[0] for opcode, _ in instructions} for key, instructions in listing.items()}


def assert_tensor_core_kernels(kernels, instantiations):
    """For every arch, instantiations[kernel] instantiations of each kernel, every one with mma (HMMA) and ldmatrix
    (LDSM) instructions and no local memory (LDL/STL)."""
    for arch in SASS_ARCHS:
        names = [name for a, name in kernels if a == arch]
        for kernel, count in instantiations.items():
            assert sum(kernel + "<" in name for name in names) == count, f"{arch}: instantiations of {kernel}: {names}"
    for (arch, name), opcodes in kernels.items():
        if any(kernel + "<" in name for kernel in instantiations):
            assert not opcodes & {"LDL", "STL"}, f"{name} [{arch}] uses local memory"
            assert "HMMA" in opcodes, f"{name} [{arch}] has no HMMA instruction"
            assert "LDSM" in opcodes, f"{name} [{arch}] has no ldmatrix (LDSM) instruction"


@pytest.mark.skipif(not ttt_kernels.build_info()["cuda_kernels"], reason="built without CUDA kernels (no nvcc)")
def test_sass_uses_tensor_cores_and_no_local_memory():
    kernels = swa_sass_or_skip()
    assert_tensor_core_kernels(kernels, dict.fromkeys(MMA_KERNELS, 8))  # 2 dtypes x 4 head dims
    for (arch, name), opcodes in kernels.items():
        assert not opcodes & {"LDL", "STL"}, f"{name} [{arch}] uses local memory"
