"""The clipped SGD step (ttt_kernels.ops.clip_sgd_update, clip_sgd_update_).

Against hand-computed values and the pure PyTorch reference (optax's formula) in float64 and float32, batched (one
norm per sequence) and not; reproducibility of the norm across thread counts; autograd to second order through the
norm (gradcheck, gradgradcheck, the clipped branch at the threshold, zero gradients); the CUDA kernels in the
simulator under several schedules; opcheck; argument checks.
"""

import math

import pytest
import torch
from helpers import requires_simulator, run_in_simulator

import ttt_kernels
from ttt_kernels import ops, reference

clip_op = torch.ops.ttt_kernels.clip_sgd_update
clip_inplace_op = torch.ops.ttt_kernels.clip_sgd_update_


def _clip_by_hand(weights, grads, lr, max_norm):
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    scale = 1.0 if norm < max_norm else max_norm / norm
    return [w.double() - lr * scale * g.double() for w, g in zip(weights, grads)], norm


def _clip_cases():
    gen = torch.Generator().manual_seed(0)
    shapes = [(16, 24), (24, 16), (7,), (3, 5, 2), (1,), (0, 4)]
    many = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
    single_w, single_g = [torch.randn(40, generator=gen, dtype=torch.float64)], [torch.full((40,), 0.25)]
    exact = [torch.tensor([0.375, 0.5], dtype=torch.float64)]  # norm 0.625, exact in binary
    return {
        "below": (many, grads, 0.5, 2 * norm),
        "above": (many, grads, 0.5, norm / 3),
        "at": ([torch.ones(2, dtype=torch.float64)], exact, 0.5, 0.625),
        "zero_grads": (many, [torch.zeros_like(g) for g in grads], 0.5, 1.0),
        "single": (single_w, [g.double() for g in single_g], 1.0, 1.0),
        "no_clip": (many, grads, 0.3, math.inf),
    }


@pytest.mark.parametrize("case", list(_clip_cases()))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_clip_sgd_update_matches_hand_computed(case, dtype):
    weights, grads, lr, max_norm = _clip_cases()[case]
    weights, grads = [w.to(dtype) for w in weights], [g.to(dtype) for g in grads]
    want, want_norm = _clip_by_hand(weights, grads, lr, max_norm)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-6)
    new, norm = clip_op(weights, grads, lr, max_norm)
    assert norm.dtype == dtype and norm.shape == ()
    torch.testing.assert_close(norm.double(), torch.tensor(want_norm, dtype=torch.float64), **tol)
    for got, w in zip(new, want):
        torch.testing.assert_close(got.double(), w, **tol)
    for got, w in zip(
        ops.clip_sgd_update(weights, grads, lr, max_norm), reference.clip_sgd_update(weights, grads, lr, max_norm)
    ):
        torch.testing.assert_close(got, w, **tol)
    inplace = [w.clone() for w in weights]
    norm2 = ops.clip_sgd_update_(inplace, grads, lr, max_norm)
    assert torch.equal(norm2, norm)
    for got, ref in zip(inplace, new):
        assert torch.equal(got, ref)


def test_clip_norm_is_reproducible_across_thread_counts():
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(300, 700, generator=gen) for _ in range(3)]
    grads = [torch.randn(300, 700, generator=gen) for _ in range(3)]
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(clip_op(weights, grads, 0.1, 10.0))
    finally:
        torch.set_num_threads(threads)
    for new, norm in results[1:]:
        assert torch.equal(norm, results[0][1]) and all(torch.equal(a, b) for a, b in zip(new, results[0][0]))


@pytest.mark.parametrize("case", ["below", "above", "zero_grads", "no_clip"])
def test_clip_gradcheck_and_gradgradcheck(case):
    gen = torch.Generator().manual_seed(10)
    weights = [torch.randn(s, generator=gen, dtype=torch.float64) for s in ((3, 4), (5,), (2, 1, 3))]
    grads = [torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in weights]
    norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
    max_norm = {"below": 2 * norm, "above": norm / 3, "zero_grads": 1.0, "no_clip": math.inf}[case]
    if case == "zero_grads":
        grads = [torch.zeros_like(g) for g in grads]
    n = len(weights)

    def fn(*tensors):
        return ops.clip_sgd_update(list(tensors[:n]), list(tensors[n:]), 0.7, max_norm)

    args = [t.requires_grad_() for t in weights + grads]
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


def test_clip_derivative_at_the_threshold_takes_the_clipped_branch():
    """At norm == max_norm optax selects g / norm * max_norm: the derivative includes the norm's."""
    g = torch.tensor([0.375, 0.5], dtype=torch.float64, requires_grad=True)
    w = torch.ones(2, dtype=torch.float64, requires_grad=True)
    u = torch.tensor([1.0, -2.0], dtype=torch.float64)
    (new,) = ops.clip_sgd_update([w], [g], 0.5, 0.625)
    (grad_g,) = torch.autograd.grad(new, g, u)
    gd = g.detach()
    want = -0.5 * (u - (u @ gd) / (gd @ gd) * gd)  # s = 1 at the threshold
    torch.testing.assert_close(grad_g, want, rtol=1e-12, atol=1e-12)


def test_clip_huge_max_norm_and_empty_lists():
    """max_norm = 1e20 (no clipping in practice) differentiates twice in float32 without overflow; empty lists
    update nothing."""
    w = torch.randn(3, 4, requires_grad=True)
    g = torch.randn(3, 4, requires_grad=True)
    (new,) = ops.clip_sgd_update([w], [g], 0.5, 1e20)
    (dg,) = torch.autograd.grad(new.square().sum(), g, create_graph=True)
    (ddg,) = torch.autograd.grad(dg.sum(), g)
    torch.testing.assert_close(dg, -0.5 * 2 * (w - 0.5 * g))
    torch.testing.assert_close(ddg, torch.full((3, 4), 0.5))
    assert ops.clip_sgd_update([], []) == []
    assert ops.clip_sgd_update_([], []).item() == 0


def test_clip_zero_gradients_have_finite_second_derivatives():
    weights = [torch.randn(4, dtype=torch.float64, requires_grad=True)]
    grads = [torch.zeros(4, dtype=torch.float64, requires_grad=True)]
    (new,) = ops.clip_sgd_update(weights, grads, 0.5, 1.0)
    (dg,) = torch.autograd.grad(new.square().sum(), grads, create_graph=True)
    (ddg,) = torch.autograd.grad(dg.sum(), grads)
    assert torch.isfinite(dg).all() and torch.isfinite(ddg).all()
    torch.testing.assert_close(ddg, torch.full((4,), 0.5, dtype=torch.float64))  # d/dg of -lr * 2 (w - lr g)


def _batched_clip_case(dtype=torch.float64):
    """Fast weights of 4 sequences: sequence 0 has zero gradients, 1 is clipped, 2 and 3 are not (max_norm 1)."""
    gen = torch.Generator().manual_seed(12)
    shapes = [(4, 24, 16), (4, 16, 24), (4, 7)]
    weights = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    grads = [torch.randn(s, generator=gen, dtype=torch.float64) * 0.01 for s in shapes]
    for g in grads:
        g[0] = 0
        g[1] *= 1000
    return weights, [g.to(dtype) for g in grads]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batched_clip_clips_each_sequence_by_its_own_norm(dtype):
    weights, grads = _batched_clip_case(dtype)
    new, norm = clip_op(weights, grads, 0.5, 1.0, True)
    assert norm.shape == (4,) and norm.dtype == dtype
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-6)
    for b in range(4):
        want, want_norm = _clip_by_hand([w[b] for w in weights], [g[b] for g in grads], 0.5, 1.0)
        torch.testing.assert_close(norm[b].double(), torch.tensor(want_norm, dtype=torch.float64), **tol)
        for got, w in zip(new, want):
            torch.testing.assert_close(got[b].double(), w, **tol)
    assert norm[0] == 0 and norm[1] > 1 > norm[2] > 0
    for got, w in zip(new, reference.clip_sgd_update(weights, grads, 0.5, 1.0, batched=True)):
        torch.testing.assert_close(got, w, **tol)
    inplace = [w.clone() for w in weights]
    assert torch.equal(ops.clip_sgd_update_(inplace, grads, 0.5, 1.0, batched=True), norm)
    assert all(torch.equal(a, b) for a, b in zip(inplace, new))


def test_batched_clip_gradcheck_and_gradgradcheck():
    weights, grads = _batched_clip_case()
    weights, grads = [w[:, :3, :2] for w in weights[:2]], [g[:, :3, :2] * 20 for g in grads[:2]]
    n = len(weights)

    def fn(*tensors):
        return ops.clip_sgd_update(list(tensors[:n]), list(tensors[n:]), 0.7, 1.0, batched=True)

    args = [t.contiguous().requires_grad_() for t in weights + grads]
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("batched", [False, True])
def test_clip_backward_without_graph_matches_the_differentiable_form(batched):
    """The backward takes a shorter path when nothing records it (create_graph=False): the same gradients as the
    differentiable form a create_graph backward runs, for clipped, unclipped and zero-gradient sequences."""
    weights, grads = _batched_clip_case(torch.float32)
    if not batched:
        weights, grads = [w[1] for w in weights], [g[1] for g in grads]
    weights = [w.contiguous().requires_grad_() for w in weights]
    grads = [g.contiguous().requires_grad_() for g in grads]
    new = ops.clip_sgd_update(weights, grads, 0.7, 1.0, batched=batched)
    cotangents = [torch.randn_like(t) for t in new]
    fast = torch.autograd.grad(new, weights + grads, cotangents, retain_graph=True)
    differentiable = torch.autograd.grad(new, weights + grads, cotangents, create_graph=True)
    for a, b in zip(fast, differentiable):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)


@requires_simulator
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_simulated_batched_clip(dtype):
    """The CUDA clip kernels with one norm per sequence (grid z), more tensors than one launch takes."""
    gen = torch.Generator().manual_seed(13)
    shapes = [(3, 40000), (3, 0)] + [(3, i + 1, 3) for i in range(17)]
    weights = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    grads = [torch.randn(s, generator=gen, dtype=dtype) * (0.001 if i % 2 else 1) for i, s in enumerate(shapes)]
    grads[0][1] *= 0
    new, norm = run_in_simulator(lambda: clip_op(weights, grads, 0.3, 2.0, True))
    want, want_norm = clip_op([w.double() for w in weights], [g.double() for g in grads], 0.3, 2.0, True)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert norm.dtype == dtype and all(g.dtype == dtype for g in new)
    torch.testing.assert_close(norm.double(), want_norm, rtol=tol, atol=0)
    for g, w in zip(new, want):
        torch.testing.assert_close(g.double(), w, rtol=tol, atol=tol)


def test_batched_clip_arguments_are_checked():
    with pytest.raises(ValueError, match="batched weights must share the leading dimension"):
        ops.clip_sgd_update([torch.ones(2, 3), torch.ones(3, 2)], [torch.ones(2, 3), torch.ones(3, 2)], batched=True)
    with pytest.raises(ValueError, match="leading batch dimension >= 1"):
        ops.clip_sgd_update([torch.ones(())], [torch.ones(())], batched=True)
    with pytest.raises(RuntimeError, match="batched weights must share the leading dimension"):
        clip_op([torch.ones(2, 3), torch.ones(3, 2)], [torch.ones(2, 3), torch.ones(3, 2)], 1.0, 1.0, True)
    with pytest.raises(ValueError, match="batched needs weights"):
        ops.clip_sgd_update([], [], batched=True)


# ---- op checks, argument errors -------------------------------------------------------------------------------------


def test_opcheck():
    weights = [torch.randn(5, 3, requires_grad=True), torch.randn(4, requires_grad=True)]
    grads = [torch.randn(5, 3, requires_grad=True), torch.randn(4, requires_grad=True)]
    torch.library.opcheck(clip_op, (weights, grads, 0.5, 1.0))
    torch.library.opcheck(
        clip_inplace_op, ([w.detach().clone() for w in weights], [g.detach() for g in grads], 0.5, 1.0)
    )
    w1b = torch.randn(3, 8, 16, requires_grad=True)
    w2b = torch.randn(3, 16, 8, requires_grad=True)
    gb = [torch.randn_like(t).requires_grad_() for t in (w1b, w2b)]
    torch.library.opcheck(clip_op, ([w1b, w2b], gb, 0.5, 1.0, True))


def test_python_api_rejects_bad_arguments():
    weights, grads = [torch.ones(3)], [torch.ones(3)]
    clip_bad = [
        ((weights, grads + grads, 1.0, 1.0), "same length"),
        ((weights, [torch.ones(4)], 1.0, 1.0), "must have the shape"),
        (([torch.ones(3).bfloat16()], [torch.ones(3).bfloat16()], 1.0, 1.0), "float32 or all float64"),
        ((weights, [torch.ones(3).double()], 1.0, 1.0), "float32 or all float64"),
        ((weights, grads, float("nan"), 1.0), "lr must be a finite number"),
        ((weights, grads, 1.0, 0.0), "max_norm must be a number > 0"),
        ((weights, grads, 1.0, -1.0), "max_norm must be a number > 0"),
    ]
    for args, message in clip_bad:
        with pytest.raises(ValueError, match=message):
            ops.clip_sgd_update(*args)
    with pytest.raises(ValueError, match="must be contiguous"):
        ops.clip_sgd_update_([torch.ones(3, 2).T], [torch.ones(2, 3)], 1.0, 1.0)


def test_ops_reject_bad_arguments():
    with pytest.raises(RuntimeError, match="max_norm must be > 0"):
        clip_op([torch.ones(2)], [torch.ones(2)], 1.0, 0.0)


# ---- the CUDA kernels in the simulator -------------------------------------------------------------------------------


@requires_simulator
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_simulated_clip_sgd_update(dtype):
    """Two launches' worth of tensors (16 per launch), grid-stride loops (> 64 * 256 elements), empty tensors."""
    gen = torch.Generator().manual_seed(6)
    shapes = [(40000,), (0,)] + [(i + 1, 3) for i in range(17)]
    weights = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    grads = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    norm_all = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    for max_norm in (2 * norm_all, norm_all / 2):
        new, norm = run_in_simulator(lambda max_norm=max_norm: clip_op(weights, grads, 0.3, max_norm))
        want, want_norm = _clip_by_hand(weights, grads, 0.3, max_norm)
        tol = 1e-12 if dtype == torch.float64 else 1e-6
        torch.testing.assert_close(norm.double(), torch.tensor(want_norm, dtype=torch.float64), rtol=tol, atol=0)
        for g, w in zip(new, want):
            assert g.dtype == dtype
            torch.testing.assert_close(g.double(), w, rtol=tol, atol=tol)
        inplace = [w.clone() for w in weights]
        with ttt_kernels.sim.enabled():
            clip_inplace_op(inplace, grads, 0.3, max_norm)
        assert all(torch.equal(a, b) for a, b in zip(inplace, new))


# ---- CUDA -----------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not ttt_kernels.build_info()["cuda_dispatch"], reason="built without CUDA dispatch")
def test_cuda_dispatch_is_registered():
    for op in ("clip_sgd_update", "clip_sgd_update_"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ttt_kernels::{op}", "CUDA"), op


@pytest.mark.gpu
def test_gpu_clip():
    weights, grads, lr, max_norm = _clip_cases()["above"]
    new = ops.clip_sgd_update([w.cuda() for w in weights], [g.cuda() for g in grads], lr, max_norm)
    for g, w in zip(new, reference.clip_sgd_update(weights, grads, lr, max_norm)):
        torch.testing.assert_close(g.cpu(), w)
