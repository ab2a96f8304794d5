"""Tests of the CUDA simulator (csrc/sim/, include/ttt_kernels/sim/) through its self-test kernels
(tests/native/sim_selftest.cu, launched by torch.ops.ttt_kernels._sim_selftest of libttt_kernels_testing.so;
tests/native/sim_selftest.h lists them): correct kernels give the right answer under every schedule, and each kind of
kernel bug the simulator is meant to expose (races, divergent barriers, warp collectives with missing lanes, shared
memory out of bounds, cp.async without a wait) is exposed. Expected values come from torch / numpy and, for the warp
shuffles, from a scalar model written from the CUDA Programming Guide's description (the simulator implements the PTX
ISA's formulas).
"""

import math
import statistics
import time

import numpy as np
import pytest
import torch
from helpers import SCHEDULES, assert_bit_identical, fails_in_every_schedule, load_testing_library, run_in_simulator

import ttt_kernels
import ttt_kernels.sim

pytestmark = pytest.mark.skipif(not ttt_kernels.sim.is_built(), reason="built without the CUDA simulator")


@pytest.fixture(scope="module", autouse=True)
def _testing_library():
    load_testing_library()


FULL = 0xFFFFFFFF
WARP_OPS_CASES = 28  # kWarpOpsCases in sim_selftest.h


def launch(kernel, args, grid=(1, 1, 1), block=(1, 1, 1), smem=0, ints=()):
    torch.ops.ttt_kernels._sim_selftest(kernel, list(args), [*grid, *block, smem, *ints])


def signed32(x):
    """An unsigned 32-bit mask as the int32 the kernels store."""
    x &= FULL
    return x - (1 << 32) if x >= 1 << 31 else x


# ---- Configuration --------------------------------------------------------------------------------------------------


def test_enabled_sets_and_restores_the_configuration():
    from ttt_kernels import _C

    before = _C.sim_config()
    with ttt_kernels.sim.enabled(schedule="shuffle", seed=7, num_workers=3):
        expected = {"enabled": True, "schedule": "shuffle", "seed": 7, "num_workers": 3, "memcheck": True}
        assert _C.sim_config() == expected
        with ttt_kernels.sim.enabled(memcheck=False):
            assert _C.sim_config()["memcheck"] is False
        assert _C.sim_config() == expected
    assert _C.sim_config() == before
    with pytest.raises(ValueError, match="schedule must be"):
        _C.sim_set_config(enabled=True, schedule="backwards")
    with pytest.raises(ValueError, match="num_workers must be >= 0"):
        _C.sim_set_config(enabled=True, num_workers=-1)
    assert _C.sim_config() == before
    for kwargs, message in (
        ({"seed": -1}, "seed must be an int"),
        ({"num_workers": -1}, "num_workers must be"),
        ({"memcheck": 1}, "memcheck must be a bool"),
    ):
        with pytest.raises(ValueError, match=message):
            with ttt_kernels.sim.enabled(**kwargs):
                pass
    assert _C.sim_config() == before


def test_enabled_is_per_thread():
    """While one thread is inside sim.enabled(), another thread's ops run their CPU kernels (a float32 attention,
    which the CUDA kernels reject); overlapping contexts in two threads each restore their own thread's setting."""
    import threading

    from ttt_kernels import _C, ops

    q = torch.randn(1, 8, 2, 16)
    inside, done = threading.Event(), threading.Event()
    seen = {}

    def hold():
        with ttt_kernels.sim.enabled():
            seen["worker inside"] = _C.sim_config()["enabled"]
            inside.set()
            done.wait(timeout=60)
        seen["worker after"] = _C.sim_config()["enabled"]

    worker = threading.Thread(target=hold)
    worker.start()
    assert inside.wait(timeout=60)
    with ttt_kernels.sim.enabled(schedule="reverse"):
        assert _C.sim_config()["schedule"] == "reverse"
        done.set()
        worker.join(timeout=60)
        assert _C.sim_config()["enabled"]  # the worker's exit did not switch this thread off
    assert not _C.sim_config()["enabled"]
    assert ops.swa_attention(q, q, q, 4).shape == q.shape  # CPU kernel, float32
    assert seen == {"worker inside": True, "worker after": False}


# ---- Correct kernels ------------------------------------------------------------------------------------------------


def test_block_reduce_with_shuffles_shared_memory_and_barriers():
    x = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    blocks, threads = 12, 256

    def run():
        out = torch.empty(blocks)
        launch("block_reduce", [x, out], grid=(blocks, 1, 1), block=(threads, 1, 1))
        return out

    out = run_in_simulator(run)
    stride = blocks * threads
    expected = [sum(x[i::stride].double().sum() for i in range(b * threads, (b + 1) * threads)) for b in range(blocks)]
    torch.testing.assert_close(out.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-4)
    # Blocks run on any worker; each block's result depends on nothing else.
    assert_bit_identical(out, run_in_simulator(run, schedules=("in_order",), num_workers=1))


@pytest.mark.parametrize("rows, cols", [(64, 96), (70, 45), (1, 33)])
def test_tiled_transpose(rows, cols):
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows * cols))

    def run():
        out = torch.empty(cols, rows)
        grid = (math.ceil(cols / 32), math.ceil(rows / 32), 1)
        launch("transpose", [x, out], grid=grid, block=(32, 8, 1), smem=32 * 33 * 4, ints=(rows, cols))
        return out

    assert torch.equal(run_in_simulator(run, seed=3), x.T)


def test_transpose_without_its_barrier_is_a_race_under_every_schedule():
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
    # Which access comes second depends on the schedule (a read of a tile element before or after its write), the
    # report does not.
    message = (
        r"block \(\d+,\d+,0\), thread \((\d+,\d+),0\): shared-memory race \((read after write|write after read)\): "
        r"thread \(\1,0\) (reads|writes) bytes \[\d+, \d+\) of the dynamic shared memory \(address 0x[0-9a-f]+\) "
        r"that (thread \((?!\1,)\d+,\d+,0\) (wrote|read)|threads of another warp read \(thread \(\d+,\d+,0\) among "
        r"them\)), with no __syncthreads"
    )

    def run():
        out = torch.empty(64, 64)
        launch("transpose_no_barrier", [x, out], grid=(2, 2, 1), block=(32, 8, 1), smem=32 * 33 * 4, ints=(64, 64))

    fails_in_every_schedule(run, r"transpose_kernel<false>.*" + message)


def test_transpose_without_its_barrier_differs_between_schedules_without_memcheck():
    rows, cols = 64, 64
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(1))

    def run(schedule, seed=0):
        out = torch.empty(cols, rows)
        with ttt_kernels.sim.enabled(schedule=schedule, seed=seed, memcheck=False):
            launch("transpose_no_barrier", [x, out], grid=(2, 2, 1), block=(32, 8, 1), smem=32 * 33 * 4, ints=(64, 64))
        return out

    outs = {s: run(s) for s in SCHEDULES}
    assert not torch.equal(outs["in_order"], outs["reverse"])
    for schedule, out in outs.items():
        assert not torch.equal(out, x.T), f"the race went unnoticed under {schedule}"
        assert out.isnan().any(), f"{schedule}: no read of unwritten (poisoned) shared memory"
    assert_bit_identical(outs["shuffle"], run("shuffle"), "same seed")
    assert not torch.equal(outs["shuffle"], run("shuffle", seed=1)), "the shuffle ignores its seed"


def test_atomics_on_global_and_shared_memory_across_blocks():
    blocks, threads = 64, 128
    n = blocks * threads

    def run():
        counters = torch.zeros(8, dtype=torch.int32)
        fsum = torch.zeros(2)
        dsum = torch.zeros(1, dtype=torch.float64)
        hist = torch.zeros(16, dtype=torch.int32)
        launch("atomics", [counters, fsum, dsum, hist], grid=(blocks, 1, 1), block=(threads, 1, 1))
        return counters, fsum, dsum, hist

    counters, fsum, dsum, hist = run_in_simulator(run, num_workers=2)
    gid_sum = n * (n - 1) // 2
    assert counters.tolist() == [n, gid_sum, n - 1, -(n - 1), 2 * n, 1, 1, 3 * n]
    assert fsum.tolist() == [n, n / 2]
    assert dsum.item() == gid_sum
    assert hist.tolist() == [n // 16] * 16


def test_barrier_loop_matches_model_and_is_timed(capsys):
    threads, iters = 128, 50  # 100 barriers

    def run(blocks=1):
        out = torch.empty(blocks * threads)
        launch("barrier_loop", [out], grid=(blocks, 1, 1), block=(threads, 1, 1), smem=threads * 4, ints=(iters,))
        return out

    out = run_in_simulator(run)
    v = np.arange(threads, dtype=np.float32)
    for _ in range(iters):
        v = np.float32(0.5) * (v + np.roll(v, -1))
    assert np.array_equal(out.numpy(), v)

    with ttt_kernels.sim.enabled(num_workers=1):
        run()
        times = []
        for _ in range(20):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    with capsys.disabled():
        print(f"\n[sim] one 128-thread block with 100 barriers: {median * 1e3:.2f} ms (median of 20 launches)")
    assert median < 0.5, f"a 128-thread block with 100 barriers took {median:.3f} s"


# ---- Warp collectives against a scalar model ----------------------------------------------------------------------


def model_shfl(values, lane, src_lane, width):
    """__shfl_sync: the value of lane srcLane % width of the caller's width-lane segment."""
    return values[lane // width * width + src_lane % width]


def model_shfl_up(values, lane, delta, width):
    """__shfl_up_sync: lane - delta, or the caller's own value when that leaves the segment."""
    return values[lane] if lane % width - delta < 0 else values[lane - delta]


def model_shfl_down(values, lane, delta, width):
    """__shfl_down_sync: lane + delta (the offset taken modulo 32, as the instruction reads 5 bits), or the own value
    when that leaves the segment."""
    delta %= 32
    return values[lane] if lane % width + delta >= width else values[lane + delta]


def model_shfl_xor(values, lane, lane_mask, width):
    """__shfl_xor_sync: lane ^ laneMask; earlier segments may be read, a later one gives the own value."""
    src = lane ^ lane_mask
    return values[lane] if src // width > lane // width else values[src]


def warp_ops_model(threads):
    expected = np.zeros((WARP_OPS_CASES, threads), dtype=np.int64)
    for base in range(0, threads, 32):
        v = [7 * (base + lane) + 3 for lane in range(32)]

        def ballot(pred, lanes=range(32), v=v):
            return signed32(sum(1 << lane for lane in lanes if pred(lane, v)))

        for lane in range(32):
            tid = base + lane
            even = range(0, 32, 2)
            odd = range(1, 32, 2)
            col = [
                model_shfl(v, lane, 5 * lane + 3, 32),
                model_shfl(v, lane, 3 * lane + 1, 16),
                model_shfl(v, lane, 2, 8),
                model_shfl(v, lane, -1, 4),
                model_shfl_up(v, lane, 1, 32),
                model_shfl_up(v, lane, 3, 8),
                model_shfl_up(v, lane, 0, 32),
                model_shfl_down(v, lane, 1, 32),
                model_shfl_down(v, lane, 5, 16),
                model_shfl_down(v, lane, 33, 32),
                model_shfl_xor(v, lane, 1, 32),
                model_shfl_xor(v, lane, 16, 32),
                model_shfl_xor(v, lane, 5, 8),
                model_shfl_xor(v, lane, 8, 4),
                ballot(lambda i, v: v[i] % 3 == 0),
                int(all(x > 0 for x in v)),
                0,  # all lanes < 31
                1,  # any lane == 7
                0,  # any v < 0
                signed32(FULL),
                sum(range(32)),
                max(x % 11 - 5 for x in v),
                min(x % 13 for x in v),
                ballot(lambda i, v: i % 4 == 0, even) if lane % 2 == 0 else ballot(lambda i, v: i % 3 == 0, odd),
                int(np.float32(0.5 * model_shfl_xor(v, lane, 3, 32)).view(np.int32)),
                model_shfl_down(v, lane, 2, 32),
                v[lane ^ 1],
                0x3FF if lane < 10 else -2,
            ]
            expected[:, tid] = col
    return expected


@pytest.mark.parametrize("threads", [32, 96])
def test_shuffles_votes_and_reductions_match_the_scalar_model(threads):
    def run():
        out = torch.empty(WARP_OPS_CASES * threads, dtype=torch.int32)
        launch("warp_ops", [out], block=(threads, 1, 1))
        return out.view(WARP_OPS_CASES, threads)

    out = run_in_simulator(run)
    expected = warp_ops_model(threads)
    for case in range(WARP_OPS_CASES):
        assert out[case].tolist() == expected[case].tolist(), f"warp_ops case {case}"


def test_collectives_in_a_partial_warp():
    threads = 48  # warp 1 has lanes 0-15

    def run():
        out = torch.empty(4 * threads, dtype=torch.int32)
        launch("warp_partial", [out], block=(threads, 1, 1))
        return out.view(4, threads)

    out = run_in_simulator(run)
    v = [7 * t + 3 for t in range(threads)]
    for tid in range(threads):
        base, lane = tid - tid % 32, tid % 32
        lanes = min(32, threads - base)
        warp_v = v[base : base + lanes]
        assert out[0, tid] == model_shfl_xor(warp_v, lane, 1, 16)
        assert out[1, tid] == model_shfl(warp_v, lane, 5, 16)
        assert out[2, tid] == signed32(sum(1 << i for i in range(lanes) if warp_v[i] % 2 == 0))
        assert out[3, tid] == signed32((1 << lanes) - 1)


# ---- Kernel bugs the simulator must expose -------------------------------------------------------------------------


def test_divergent_syncthreads_names_block_and_threads():
    out = torch.zeros(4 * 64, dtype=torch.int32)
    expected = (
        r"divergent_barrier_kernel.*block \(2,0,0\): __syncthreads is not reached by every thread of the block.*"
        r"threads 0-39 at __syncthreads; threads 40-63 exited"
    )
    for schedule in SCHEDULES:
        with ttt_kernels.sim.enabled(schedule=schedule, num_workers=2):
            with pytest.raises(RuntimeError, match=expected):
                launch("divergent_barrier", [out], grid=(4, 1, 1), block=(64, 1, 1), ints=(2, 40))
    # The failed launch left nothing behind: the same kernel without divergence completes.
    with ttt_kernels.sim.enabled():
        launch("divergent_barrier", [out], grid=(4, 1, 1), block=(64, 1, 1), ints=(-1, 0))
    assert out.eq(1).all()


@pytest.mark.parametrize(
    "mode, threads, message",
    [
        (
            0,
            64,
            r"block \(0,0,0\): warp 0: __shfl_sync \(mask 0x00000003\) cannot complete: lane 0 reached it, "
            r"lane 1 did not \(thread 1 exited\)",
        ),
        (
            1,
            32,
            r"warp 0: __shfl_sync \(mask 0x00000003\) cannot complete: lane 0 reached it, lane 1 did not "
            r"\(thread 1 at __ballot_sync \(mask 0x00000003\)\)",
        ),
        (
            2,
            40,
            r"block \(0,0,0\), thread \(3\d,0,0\): __shfl_sync: mask 0xffffffff names lanes 8-31, which do not "
            r"exist: warp 1 of this 40-thread block has lanes 0-7",
        ),
        (3, 32, r"thread \(0,0,0\): __shfl_sync: mask 0x00000002 does not include the calling lane 0"),
        (
            4,
            32,
            r"warp 0: __shfl_xor_sync \(mask 0xffffffff\) cannot complete: lanes 0-15 reached it, lanes 16-31 "
            r"did not \(threads 16-31 at __syncthreads\)",
        ),
    ],
)
def test_warp_collective_with_missing_lanes_raises(mode, threads, message):
    out = torch.zeros(threads, dtype=torch.int32)
    fails_in_every_schedule(lambda: launch("collective_error", [out], block=(threads, 1, 1), ints=(mode,)), message)


@pytest.mark.parametrize("access", ["write", "read"])
def test_dynamic_shared_memory_access_out_of_bounds_raises_at_the_access(access):
    done = "written" if access == "write" else "read"
    message = (
        rf"block \(0,0,0\), thread \(63,0,0\): dynamic shared memory {done} out of bounds: 4-byte {access} at byte "
        r"offset 256 of the 256-byte dynamic shared memory"
    )
    fails_in_every_schedule(
        lambda: launch(f"smem_oob_{access}", [torch.zeros(64)], block=(64, 1, 1), smem=64 * 4), message
    )


def test_dynamic_shared_memory_write_out_of_bounds_without_memcheck_hits_the_redzone():
    out = torch.zeros(64)
    message = (
        r"block \(0,0,0\): dynamic shared memory written out of bounds: bytes \[256, 260\) \(offsets from the start of "
        r"the 256-byte dynamic shared memory\) were modified; detected when its threads stopped at barrier #1"
    )
    with ttt_kernels.sim.enabled(memcheck=False):
        with pytest.raises(RuntimeError, match=message):
            launch("smem_oob_write", [out], block=(64, 1, 1), smem=64 * 4)


def test_dynamic_shared_memory_read_out_of_bounds_without_memcheck_is_poisoned():
    def run():
        out = torch.zeros(64)
        with ttt_kernels.sim.enabled(memcheck=False):
            launch("smem_oob_read", [out], block=(64, 1, 1), smem=64 * 4)
        return out

    out = run_in_simulator(run)
    assert torch.equal(out[:-1], torch.arange(1, 64, dtype=torch.float32))
    assert out[-1].isnan(), "the read past the end of dynamic shared memory did not see the poison"


@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("memcheck", [True, False])
def test_cp_async(mode, memcheck):
    blocks, threads = 3, 64
    x = torch.randn(4 * blocks * threads, generator=torch.Generator().manual_seed(mode))

    def launch_copy():
        out = torch.zeros_like(x)
        launch("cp_async", [x, out], grid=(blocks, 1, 1), block=(threads, 1, 1), smem=16 * threads, ints=(mode,))
        return out

    def run(schedule="in_order"):
        with ttt_kernels.sim.enabled(schedule=schedule, memcheck=memcheck):
            return launch_copy()

    if mode == 0:
        assert torch.equal(run_in_simulator(launch_copy), x)  # each thread wrote its neighbour's 16 bytes back in place
    elif memcheck:
        # Each thread reads its neighbour's 16 bytes after the barrier, but the neighbour has not waited for its copy
        # (mode 1: it waits after the reads; mode 2: never): the copy is in flight, whatever the schedule.
        message = (
            r"thread \((\d+),0,0\): shared-memory race \(read during a cp.async\): thread \(\1,0,0\) reads bytes "
            r"\[\d+, \d+\) of the dynamic shared memory \(address 0x[0-9a-f]+\) while the cp.async copy of thread "
            r"\(\d+,0,0\) to them is in flight"
        )
        fails_in_every_schedule(launch_copy, message)
    elif mode == 1:
        # The copies land at each thread's own late wait: reads before it see poison, in a schedule-dependent order.
        for schedule in SCHEDULES:
            assert run(schedule).isnan().any(), f"{schedule}: a read before cp.async.wait_group saw the copied data"
    else:
        with pytest.raises(RuntimeError, match=r"thread \(\d+,0,0\): exited with 1 cp.async copy never waited for"):
            run()


# ---- memory checks: races and bounds, independent of the schedule ------------------------------------------------


@pytest.mark.parametrize("barrier", [True, False])
def test_scratch_reused_without_a_barrier_is_a_race_the_values_hide(barrier):
    rows, threads = 3, 64
    x = torch.randn(rows, threads, generator=torch.Generator().manual_seed(2))

    def run():
        out = torch.empty(rows, threads)
        launch("row_sums", [x, out], block=(threads, 1, 1), ints=(rows, int(barrier)))
        return out

    if barrier:
        out = run_in_simulator(run)
        torch.testing.assert_close(out, x.sum(1, keepdim=True).expand(rows, threads), rtol=1e-5, atol=1e-5)
        return
    # The sums are right under every schedule (no simulated order lets the early store overtake the reads) ...
    with ttt_kernels.sim.enabled(memcheck=False):
        torch.testing.assert_close(run(), x.sum(1, keepdim=True).expand(rows, threads), rtol=1e-5, atol=1e-5)
    # ... but the store of the next row's sum is not ordered after the other warp's reads.
    message = (
        r"thread \((0|32),0,0\): shared-memory race \(write after read\): thread \(\1,0,0\) writes bytes \[\d+, \d+\) "
        r"of the static __shared__ variables .* that threads of another warp read"
    )
    fails_in_every_schedule(run, r"row_sums_kernel<false>.*" + message)


@pytest.mark.parametrize("barrier", [True, False])
def test_pipeline_prefetch_into_a_stage_still_read_is_a_race(barrier):
    tiles, threads = 4, 64
    x = torch.randn(tiles, 4 * threads, generator=torch.Generator().manual_seed(3))

    def run():
        out = torch.empty(threads)
        launch("pipeline", [x, out], block=(threads, 1, 1), smem=2 * 16 * threads, ints=(tiles, int(barrier)))
        return out

    if barrier:
        expected = x[:, (4 * torch.arange(threads) + 5) % (4 * threads)].sum(0)
        torch.testing.assert_close(run_in_simulator(run), expected, rtol=1e-5, atol=1e-5)
        return
    # Depending on the schedule, the prefetch comes after another thread's read (write after read) or before it (a
    # read while the copy is in flight); it is reported either way.
    message = r"shared-memory race \((write after read|read during a cp.async)\): thread \(\d+,0,0\)"
    fails_in_every_schedule(run, r"pipeline_kernel<false>.*" + message)


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_syncwarp_orders_its_own_lanes_only(mode):
    threads = 64

    def run():
        out = torch.empty(threads)
        launch("warp_handoff", [out], block=(threads, 1, 1), smem=4 * threads, ints=(mode,))
        return out

    if mode == 0:
        lane = torch.arange(threads) % 32
        expected = (torch.arange(threads) - lane + (lane + 1) % 32).float() + 0.5
        assert torch.equal(run_in_simulator(run), expected)
        return
    hazard = r"(read after write|write after read)"
    fails_in_every_schedule(run, rf"shared-memory race \({hazard}\)")


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_global_access_past_the_end_of_a_tensor_names_it(mode):
    threads = 64
    x = torch.randn(threads, generator=torch.Generator().manual_seed(4))

    def run():
        out = torch.zeros(threads)
        launch("global_oob", [x, out], block=(threads, 1, 1), ints=(mode,))
        return out

    if mode == 0:
        assert torch.equal(run_in_simulator(run), 2 * x)
        return
    access, tensor = ("write", "args\\[1\\]") if mode == 1 else ("read", "args\\[0\\]")
    message = (
        rf"block \(0,0,0\), thread \(63,0,0\): global memory out of bounds: the 4-byte {access} at 0x[0-9a-f]+ "
        rf"starts 0 bytes past the end of tensor '{tensor}' \(\[0x[0-9a-f]+, 0x[0-9a-f]+\), 256 bytes\)"
    )
    fails_in_every_schedule(run, message)


# ---- 16-bit floating point ------------------------------------------------------------------------------------------


def test_bf16_and_fp16_conversions_and_arithmetic_match_torch():
    special = [
        *(0.0, -0.0, 1.0, -1.5, math.inf, -math.inf, math.nan),  # signed zeros, infinities, NaN
        *(1e-40, 2**-25, 3 * 2**-26, 1.5 * 2**-24, 5.96e-8, 1e-5, -7.0e-6),  # subnormal in bf16 / fp16, fp16 ties
        *(65504.0, 65519.99, 65520.0, 3.0e38, 3.4e38),  # the fp16 and bf16 overflow thresholds
        *(1 + 2**-8, 1 + 3 * 2**-8),  # bf16 ties to even
    ]
    rand = torch.randn(300, generator=torch.Generator().manual_seed(2)) * torch.logspace(-8, 8, 300)
    x = torch.cat([torch.tensor(special * len(special)), rand])
    y = torch.cat([torch.tensor(special).repeat_interleave(len(special)), rand.flip(0) + 0.5])
    n = x.numel()

    def run():
        bf = torch.empty(6 * n, dtype=torch.bfloat16)
        hf = torch.empty(6 * n, dtype=torch.float16)
        launch("fp16_ops", [x, y, bf, hf], grid=(math.ceil(n / 128), 1, 1), block=(128, 1, 1))
        return bf.view(6, n), hf.view(6, n)

    bf, hf = run_in_simulator(run)
    for out, dtype in ((bf, torch.bfloat16), (hf, torch.float16)):
        a, b = x.to(dtype), y.to(dtype)
        expected = torch.stack([a, a + b, a * b, a - b, a / b, b * b])
        nan = expected.isnan()
        assert torch.equal(out.isnan(), nan), f"{dtype}: NaN positions differ"
        assert torch.equal(out[~nan].view(torch.int16), expected[~nan].view(torch.int16)), f"{dtype}: values differ"


# ---- Launch validation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "grid, block, smem, message",
    [
        ((1, 1, 1), (1025, 1, 1), 0, r"blockDim.x = 1025 is outside \[1, 1024\]"),
        ((1, 1, 1), (32, 32, 2), 0, r"a block of 2048 threads exceeds the limit of 1024"),
        ((1, 1, 1), (32, 1, 65), 0, r"blockDim.z = 65 is outside \[1, 64\]"),
        ((0, 1, 1), (32, 1, 1), 0, r"gridDim.x = 0 is outside"),
        ((1, 65536, 1), (32, 1, 1), 0, r"gridDim.y = 65536 is outside \[1, 65535\]"),
        ((1, 1, 1), (32, 1, 1), 300 * 1024, r"307200 bytes of dynamic shared memory exceed the limit of 232448"),
    ],
)
def test_invalid_launches_are_rejected_like_cuda(grid, block, smem, message):
    out = torch.zeros(1 << 21, dtype=torch.int32)  # one int per thread of the largest grid
    with ttt_kernels.sim.enabled():
        with pytest.raises(RuntimeError, match=r"ttt::launch\(.*divergent_barrier_kernel.*invalid launch: " + message):
            launch("divergent_barrier", [out], grid=grid, block=block, smem=smem, ints=(-1, 0))


def test_unknown_kernel_and_wrong_arguments_are_rejected():
    out = torch.zeros(64)
    with pytest.raises(ValueError, match='unknown kernel "nope"; expected one of block_reduce, transpose'):
        launch("nope", [out])
    with pytest.raises(ValueError, match=r"tensor 0 must have dtype code 'i', got 'f'"):
        launch("divergent_barrier", [out], ints=(0, 0))
    with pytest.raises(ValueError, match="buffer 1 needs at least 4 elements, got 1"):
        launch("block_reduce", [out, torch.zeros(1)], grid=(4, 1, 1), block=(32, 1, 1))
