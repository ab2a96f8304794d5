"""The GEMMs of the dynamic MLP's step (ttt_kernels.ops.sgd_gemm_update_ and the GEMM wrapper of the CUDA kernels).

The fused update against the pure PyTorch reference on the CPU (the AVX-512 sgemm's blocking edges, bitwise equal
for any thread count) and in the simulator; the GEMM wrapper's operand mapping, epilogues and argument checks with
its CUTLASS kernels in the simulator; opcheck; on a GPU, the same.
"""

import pytest
import torch
from helpers import requires_simulator, run_in_simulator

import ttt_kernels
from ttt_kernels import ops, reference

gemm_update_op = torch.ops.ttt_kernels.sgd_gemm_update_
gemm_op = torch.ops.ttt_kernels._mlp_gemm


# ---- sgd_gemm_update_ ----------------------------------------------------------------------------------------------


def test_cpu_sgemm_blocking_edges_and_threads(monkeypatch):
    """The sgemm's k blocks (> 256), partial 6 x 64 tiles, many panels; bitwise equal for any thread count."""
    monkeypatch.setenv("TTT_KERNELS_CPU_GEMM", "native")
    gen = torch.Generator().manual_seed(11)
    for k, m, n in [(300, 13, 4100), (1, 6, 64), (257, 97, 130), (0, 5, 7), (600, 200, 70)]:
        w = torch.randn(m, n, generator=gen)
        a, b = torch.randn(k, m, generator=gen), torch.randn(k, n, generator=gen)
        want = w.double() - 0.3 * (a.double().T @ b.double())
        threads = torch.get_num_threads()
        results = []
        try:
            for t in (1, 2, 3):
                torch.set_num_threads(t)
                got = w.clone()
                ops.sgd_gemm_update_(got, a, b, torch.tensor(0.3))
                results.append(got)
        finally:
            torch.set_num_threads(threads)
        torch.testing.assert_close(results[0].double(), want, rtol=1e-5, atol=1e-5 * (1 + want.abs().max().item()))
        assert all(torch.equal(r, results[0]) for r in results[1:])


def test_sgd_gemm_update_cpu():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(24, 16, generator=gen)
    a, b = torch.randn(7, 24, generator=gen), torch.randn(7, 16, generator=gen)
    want = reference.sgd_gemm_update(w, a, b, 0.25)
    ops.sgd_gemm_update_(w, a, b, torch.tensor(0.25))
    torch.testing.assert_close(w, want, rtol=1e-6, atol=1e-6)


def test_opcheck():
    torch.library.opcheck(
        gemm_update_op, (torch.randn(8, 16), torch.randn(5, 8), torch.randn(5, 16), torch.tensor(0.5))
    )


def test_ops_reject_bad_arguments():
    with pytest.raises(RuntimeError, match=r"need weight \[M, N\], a \[K, M\], b \[K, N\]"):
        gemm_update_op(torch.ones(3, 4), torch.ones(2, 4), torch.ones(2, 4), torch.tensor(1.0))


# ---- the GEMM wrapper (host side: operand mapping, epilogues, argument checks) -------------------------------------


def _gemm_operands(layout_a, layout_b, m, n, k, dtype, gen, batch=()):
    """A [*batch, m, k] and B [*batch, k, n] as views with the requested layouts and leading dimensions above their
    extents."""

    def view(rows, cols, layout):
        if layout == "row":
            return torch.randn(*batch, rows, cols + 8, generator=gen).to(dtype)[..., :cols]
        return torch.randn(*batch, cols, rows + 8, generator=gen).to(dtype)[..., :rows].mT

    return view(m, k, layout_a), view(k, n, layout_b)


@requires_simulator
@pytest.mark.parametrize(
    "epilogue, layout_a, layout_b",
    [("store", "row", "col"), ("store", "row", "row"), ("swiglu", "row", "col"), ("accumulate", "col", "row")],
)
@pytest.mark.parametrize("batch", [(), (3,)])
def test_gemm_wrapper_in_simulator(epilogue, layout_a, layout_b, batch):
    """One GEMM of 2-D views, or a batch of 3 problems (3-D views: a batch stride per operand) in one call."""
    gen = torch.Generator().manual_seed(7)
    m, n, k = 24, 16, 40
    a, b = _gemm_operands(layout_a, layout_b, m, n, k, torch.bfloat16, gen, batch)
    exact = a.double() @ b.double()
    if epilogue == "accumulate":
        c = torch.randn(*batch, m, n + 4, generator=gen)[..., :n]
        d, scale = c.clone(), torch.tensor([0.5])
        run_in_simulator(lambda: gemm_op(a, b, d, c, None, epilogue, -2.0, 1.0, scale), schedules=("in_order",))
        torch.testing.assert_close(d.double(), c.double() - exact, rtol=1e-5, atol=1e-4)
        return
    d = torch.empty(*batch, m, n + 8, dtype=torch.bfloat16)[..., :n]
    t = torch.empty(*batch, m, n // 2 + 4, dtype=torch.bfloat16)[..., : n // 2] if epilogue == "swiglu" else None
    with ttt_kernels.sim.enabled():
        gemm_op(a, b, d, None, t, epilogue, 1.0, 0.0, None)
    torch.testing.assert_close(d.double(), exact.bfloat16().double(), rtol=0.01, atol=0.01)
    if t is not None:
        h1, h3 = exact[..., 0::2], exact[..., 1::2]
        torch.testing.assert_close(t.double(), torch.nn.functional.silu(h1) * h3, rtol=0.02, atol=0.02)


@requires_simulator
def test_gemm_wrapper_rejects_bad_operands():
    gen = torch.Generator().manual_seed(8)
    a, b = _gemm_operands("row", "col", 8, 16, 16, torch.bfloat16, gen)
    d = torch.empty(8, 16, dtype=torch.bfloat16)
    misaligned = torch.zeros(129, dtype=torch.bfloat16)[1:].view(8, 16)
    # check_mlp_gemm's std::invalid_argument arrives as ValueError; the glue's TORCH_CHECKs as RuntimeError.
    cases = [
        ((a, b, d, None, None, "accumulate"), ValueError, "unsupported operand layouts: A row-major, B column-major"),
        ((a[:, :12], b[:12], d, None, None, "store"), ValueError, "contiguous extent 12 must be a multiple of 8"),
        ((misaligned, b, d, None, None, "store"), ValueError, "base address must be 16-byte aligned"),
        ((a, b, d, None, None, "swiglu"), ValueError, "T .* null pointer"),
        ((a, b, d, None, None, "fused"), RuntimeError, "epilogue must be 'store'"),
        ((a.float(), b.float(), d, None, None, "store"), RuntimeError, "bfloat16 or float16"),
    ]
    with ttt_kernels.sim.enabled():
        for args, error, message in cases:
            with pytest.raises(error, match=message):
                gemm_op(*args, 1.0, 0.0, None)
    with pytest.raises(RuntimeError, match="inside ttt_kernels.sim.enabled"):
        gemm_op(a, b, d, None, None, "store", 1.0, 0.0, None)


@requires_simulator
def test_simulated_sgd_gemm_update():
    gen = torch.Generator().manual_seed(9)
    w = torch.randn(24, 16, generator=gen)
    a, b = (torch.randn(7, n, generator=gen).bfloat16() for n in (24, 16))
    want = reference.sgd_gemm_update(w, a, b, 0.25)
    with ttt_kernels.sim.enabled():
        ops.sgd_gemm_update_(w, a, b, torch.tensor(0.25))
    torch.testing.assert_close(w, want, rtol=1e-5, atol=1e-5)


# ---- CUDA -----------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not ttt_kernels.build_info()["cuda_dispatch"], reason="built without CUDA dispatch")
def test_cuda_dispatch_is_registered():
    for op in ("sgd_gemm_update_", "_mlp_gemm"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ttt_kernels::{op}", "CUDA"), op


@pytest.mark.gpu
def test_gpu_wrapper_and_sgd_gemm_update():
    gen = torch.Generator().manual_seed(7)
    for epilogue, la, lb in [("store", "row", "col"), ("store", "row", "row"), ("swiglu", "row", "col")]:
        a, b = (t.cuda() for t in _gemm_operands(la, lb, 130, 264, 72, torch.bfloat16, gen))
        d = torch.empty(130, 264, dtype=torch.bfloat16, device="cuda")
        t = torch.empty(130, 132, dtype=torch.bfloat16, device="cuda") if epilogue == "swiglu" else None
        gemm_op(a, b, d, None, t, epilogue, 1.0, 0.0, None)
        exact = a.double() @ b.double()
        torch.testing.assert_close(d.double(), exact, rtol=0.01, atol=0.05)
        if t is not None:
            torch.testing.assert_close(
                t.double(), torch.nn.functional.silu(exact[:, 0::2]) * exact[:, 1::2], rtol=0.02, atol=0.05
            )
    w = torch.randn(64, 48, device="cuda")
    a, b = torch.randn(33, 64, device="cuda").bfloat16(), torch.randn(33, 48, device="cuda").bfloat16()
    want = reference.sgd_gemm_update(w, a, b, 0.25)
    ops.sgd_gemm_update_(w, a, b, torch.tensor(0.25, device="cuda"))
    torch.testing.assert_close(w, want, rtol=1e-4, atol=1e-4)
