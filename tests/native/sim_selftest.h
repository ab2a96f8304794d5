// Self-test kernels of the CUDA simulator (csrc/cuda/sim_selftest.cu), run from Python through
// torch.ops.ttt_kernels._sim_selftest(kernel, args, launch_config) (csrc/ops/sim_selftest.cpp, tests/test_sim.py).
// They exercise the runtime's model (barriers, warp collectives, shared memory, atomics, cp.async, 16-bit floats)
// and its checks, and they compile with nvcc as well, so the same launchers exist for a GPU.
//
// launch_config = [grid.x, grid.y, grid.z, block.x, block.y, block.z, dynamic smem bytes, kernel ints...]. Kernels,
// buffers (dtype code: f float32, d float64, i int32, h float16, b bfloat16) and ints:
//   block_reduce          in f[n], out f[grid.x]            out[b] = sum of in[b*bd + i + k*grid*bd] (bd = block.x, a
//                                                          multiple of 32): shuffles + static smem + barriers
//   transpose             in f[rows*cols], out f[cols*rows]; ints rows, cols. block (32, 8), grid (ceil(cols/32),
//                         ceil(rows/32)), smem >= 32*33*4: tiled transpose through dynamic shared memory
//   transpose_no_barrier  the same without the barrier between the smem writes and reads (a race)
//   divergent_barrier     out i[grid*block]; ints block, first. In block `block`, threads >= `first` exit before
//                         the __syncthreads the others wait at
//   smem_oob_write        out f[block.x], smem block.x*4: thread i writes smem[i + 1] (the last one out of bounds)
//   smem_oob_read         out f[block.x], smem block.x*4: out[i] = smem[i + 1] (the last one reads past the end)
//   atomics               counters i[8], fsum f[2], dsum d[1], hist i[16]: every thread of the grid adds to them
//                         with global and shared-memory atomics (see the kernel for the expected totals)
//   warp_ops              out i[kWarpOpsCases * block.x]; one block, block.x a multiple of 32: shuffles (every
//                         mode and several widths), votes, reductions, __activemask, __syncwarp, one result per case
//   warp_partial          out i[4 * block.x]; one block whose last warp is partial: collectives on its lanes
//   collective_error      out i[block.x]; ints mode: a warp collective that cannot complete (0: lane 1 exited,
//                         1: lanes at different collectives, 2: mask names lanes beyond the block, 3: the caller is
//                         not in the mask, 4: half the warp at __syncthreads)
//   cp_async              in f[n], out f[n], n = 4 * threads; smem n*4; ints mode: 16-byte cp.async into shared
//                         memory, each thread reading its neighbour's copy (0: waited for, 1: waited for after
//                         the reads, 2: never waited for)
//   fp16_ops              x f[n], y f[n], bf b[6n], hf h[6n]: 16-bit conversions and arithmetic, see the kernel
//   barrier_loop          out f[grid*block.x]; ints iters: 2 * iters barriers, each thread reading its neighbour
//   row_sums              in f[rows*block.x], out f[rows*block.x]; ints rows, barrier (0: the barrier before the
//                         next row's scratch stores is missing, a race)
//   pipeline              in f[tiles*4*block.x], out f[block.x], smem 32*block.x; ints tiles, barrier (0: the
//                         barrier before the next cp.async prefetch into a stage is missing, a race)
//   warp_handoff          out f[block.x], smem 4*block.x; ints mode (0: ordered by __syncwarp, 1: no __syncwarp,
//                         2: across warps)
//   global_oob            in f[block.x], out f[block.x]; ints mode (0: in bounds, 1: a store one element past the
//                         end of out, 2: a load one element past the end of in)
#pragma once

#include <cstdint>

namespace ttt {

// The warp_ops kernel writes this many results per thread.
inline constexpr int kWarpOpsCases = 28;

struct SimSelftestArgs {
  void* const* buffers = nullptr;   // data pointers of the tensors, contiguous
  const char* dtypes = nullptr;     // one dtype code per buffer (see above; '?' for any other dtype)
  const int64_t* numels = nullptr;  // elements per buffer
  int num_buffers = 0;
  const int64_t* ints = nullptr;  // the kernel's integer arguments
  int num_ints = 0;
  unsigned grid[3] = {1, 1, 1};
  unsigned block[3] = {1, 1, 1};
  int64_t smem_bytes = 0;
};

// Launches the named self-test kernel; throws std::invalid_argument for an unknown name or arguments that do not fit
// it, and std::runtime_error when the launch fails (in the simulator: when the kernel fails a check).
namespace cuda {
void sim_selftest(const char* kernel, const SimSelftestArgs& args, void* stream);
}
namespace cuda_sim {
void sim_selftest(const char* kernel, const SimSelftestArgs& args, void* stream);
}

}  // namespace ttt
