"""The mutants of the CUDA kernels: single-line source changes, each modelling a bug a kernel author makes.

tests/mutation/run.py applies them one at a time to a copy of the repository, rebuilds the package with the
simulator and runs the mutant's test selection: a failing, crashing or hanging test catches it. A mutant replaces
`original`, which must occur exactly once in `file` and lie within one line, by `replacement`; it must still compile
(under nvcc too), or its result is a build error rather than a catch.

`expected` explains, as "missed: <why>", the mutants today's simulator cannot catch (code only nvcc compiles).
`needs` names the simulator's memory check a mutant's catch depends on: "racecheck" (the shared-memory race
detector) or "boundscheck" (the bounds of the op's tensors); docs/simulator.md, "Memory checks".
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Selection:
    """The tests that should catch a mutant: pytest paths (relative to the repository) and a -k expression ("" for
    every test of the paths). The runner always deselects the tests marked slow."""

    paths: tuple[str, ...]
    keyword: str = ""
    # The tests read the SASS of tests/native/arch_selftest.cu, compiled by nvcc from the mutated sources (the runner
    # does, when nvcc, cuobjdump and nvdisasm are found): for code only nvcc compiles, the PTX strings of arch.h.
    nvcc_sass: bool = False

    def pytest_args(self) -> list[str]:
        return [*self.paths, "-m", "not slow"] + (["-k", self.keyword] if self.keyword else [])

    def __str__(self) -> str:
        return " ".join(self.paths) + (f" -k '{self.keyword}'" if self.keyword else "")


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    original: str
    replacement: str
    description: str
    tests: Selection
    expected: str = ""
    needs: str = ""


# The simulator tests of each kernel family (each file's tests that run the CUDA kernels on CPU tensors).
SWA = Selection(("tests/test_swa_cuda.py",), "simulated")
SWA_BWD_BWD = Selection(("tests/test_swa_bwd_bwd_cuda.py",), "simulated")
RMS_NORM = Selection(("tests/test_rms_norm.py",), "simulated or simulator")
SWIGLU = Selection(("tests/test_swiglu.py",), "simulated")
GEMM = Selection(("tests/test_gemm.py", "tests/test_swiglu.py"), "simulator or simulated")
CLIP_SGD = Selection(("tests/test_clip_sgd.py",), "simulated")
ARCH = Selection(("tests/test_arch.py",))
ARCH_SASS = Selection(("tests/test_arch.py",), "sass", nvcc_sass=True)

TILES = "csrc/cuda/swa_tiles.cuh"
SWA_CU = "csrc/cuda/swa.cu"
SWA_BWD_BWD_CU = "csrc/cuda/swa_bwd_bwd.cu"
RMS_NORM_CU = "csrc/cuda/rms_norm.cu"
SWIGLU_CU = "csrc/cuda/swiglu.cu"
ELEMENTWISE = "csrc/cuda/elementwise.cuh"
GEMM_CU = "csrc/cuda/gemm.cu"
CUTLASS = "csrc/cuda/gemm_cutlass.cuh"
CUTLASS_SIM = "csrc/cuda/cutlass_sim.h"
CLIP_SGD_CU = "csrc/cuda/clip_sgd.cu"
ARCH_H = "include/ttt_kernels/device/arch.h"
FRAGMENTS = "include/ttt_kernels/device/fragment_layout.h"


MUTANTS = [
    # ---- swa_tiles.cuh: window geometry, walks, pipeline, tile loads, mma products, epilogue --------------------
    Mutant(
        "tiles-window-edge",
        TILES,
        "return key <= t && key > t - window;",
        "return key <= t && key >= t - window;",
        "Window mask off by one: every query also sees the key just left of its window.",
        SWA,
    ),
    Mutant(
        "tiles-diagonal-first-key",
        TILES,
        "n0 + kKeys - 1 > m0 + offset",
        "n0 > m0 + offset",
        "Tile-level causal test checks the tile's first key instead of its last: diagonal tiles skip the mask.",
        SWA,
    ),
    Mutant(
        "tiles-window-tile-test",
        TILES,
        "n0 <= m0 + rows - 1 + offset - window",
        "n0 < m0 + rows - 1 + offset - window",
        "Tile-level window test off by one: a tile starting on the last query's window edge skips the mask.",
        SWA,
    ),
    Mutant(
        "tiles-query-walk-leftmost-block",
        TILES,
        "geo.window + 1) / kN + 1)",
        "geo.window + 1) / kN)",
        "Query-block walk off by one: the leftmost key block of the windows is never visited.",
        SWA,
    ),
    Mutant(
        "tiles-key-walk-gqa-head",
        TILES,
        "first_head(hk * group)",
        "first_head(hk)",
        "Wrong GQA head mapping: the key-block walk starts at query head hk instead of hk * group.",
        SWA,
    ),
    Mutant(
        "tiles-key-walk-last-query-block",
        TILES,
        "i_last / kM - m_first + 1",
        "i_last / kM - m_first",
        "Key-block walk off by one: the last query block whose windows reach the key block is skipped.",
        SWA,
    ),
    Mutant(
        "tiles-pipeline-wait-group",
        TILES,
        "arch::cp_async_wait<1>();",
        "arch::cp_async_wait<2>();",
        "Wrong cp.async wait_group count: the current step's tiles have not landed when the body reads them.",
        SWA,
    ),
    Mutant(
        "tiles-pipeline-barrier-after-body",
        TILES,
        "body(step, stage);",
        "body(step, stage); if (step + 1 < steps) continue;",
        "Deleted __syncthreads after the pipeline body: the next prefetch can overwrite a stage other warps read.",
        SWA,
        needs="racecheck",  # the copy lands at its wait, after the next barrier: no read sees it early
    ),
    Mutant(
        "tiles-load-bound",
        TILES,
        "const bool in = r < rows;",
        "const bool in = r <= rows;",
        "Partial-tile bounds check off by one: the row after a partial tile is read instead of zero-filled.",
        SWA,
    ),
    Mutant(
        "tiles-ldmatrix-b-address",
        TILES,
        "k + lane / 8 % 2 * 8);",
        "k + lane / 16 * 8);",
        "Wrong column offset in the x4 ldmatrix of B = K: matrices 1 and 2 load the wrong 8 columns.",
        SWA,
    ),
    Mutant(
        "tiles-to-a-operand-halves",
        TILES,
        "a[k][1] = arch::pack2<Elem>(c[2 * k][2], c[2 * k][3]);",
        "a[k][1] = arch::pack2<Elem>(c[2 * k][3], c[2 * k][2]);",
        "Swapped fragment index: the two columns of a P (or dS) register exchanged when reused as an A operand.",
        SWA,
    ),
    Mutant(
        "tiles-missing-trans",
        TILES,
        "arch::ldmatrix_trans(fb, b + (16 * k + lane % 16)",
        "arch::ldmatrix(fb, b + (16 * k + lane % 16)",
        "Missing .trans: the row-major B tile of O += P V (and every register-A product) is loaded untransposed.",
        SWA,
    ),
    Mutant(
        "tiles-quad-max-width",
        TILES,
        "return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));",
        "return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));",
        "Wrong reduction width in the row-max shuffle: the max covers 2 of the 4 lanes that hold a row.",
        SWA,
    ),
    Mutant(
        "tiles-epilogue-syncwarp",
        TILES,
        "__syncwarp();",
        "",
        "Deleted __syncwarp in the epilogue: lanes store staged rows other lanes have not written yet.",
        SWA,
    ),
    Mutant(
        "tiles-epilogue-row-past-end",
        TILES,
        "if (r < rows) {",
        "if (r <= rows) {",
        "Epilogue bounds check off by one: a partial tile writes one row past its end (past the output tensor).",
        SWA,
        needs="boundscheck",
    ),
    Mutant(
        "tiles-dot-do-o-width",
        TILES,
        "for (int offset = 8; offset > 0; offset /= 2)",
        "for (int offset = 4; offset > 0; offset /= 2)",
        "Wrong shuffle reduction width in D = rowsum(dout * out): 8 of the 16 lanes that share a row are summed.",
        SWA,
    ),
    Mutant(
        "tiles-dot-do-o-stride",
        TILES,
        "i * p.do_row_stride + h * p.do_head_stride",
        "i * p.do_row_stride + h * p.o_head_stride",
        "Wrong stride: dout's head offset uses out's head stride (the same for contiguous tensors).",
        SWA,
    ),
    # ---- swa.cu: forward, dk/dv and dq kernels -------------------------------------------------------------------
    Mutant(
        "swa-fwd-sum-rescale",
        SWA_CU,
        "row_sum[r] *= rescale;",
        "",
        "Dropped rescale in the online softmax: the running row sum keeps its old max's scale.",
        SWA,
    ),
    Mutant(
        "swa-fwd-masked-row-guard",
        SWA_CU,
        "const float base = tile_max == -INFINITY ? 0.0f : tile_max;",
        "const float base = tile_max;",
        "Dropped the guard for rows without a visible key yet: exp2(-inf - -inf) makes them NaN.",
        SWA,
    ),
    Mutant(
        "swa-fwd-mask-fragment-index",
        SWA_CU,
        "g + e / 2 * 8, n0 + 8 * j + 2 * t + e % 2)) s[j][e] = -INFINITY;",
        "g + e % 2 * 8, n0 + 8 * j + 2 * t + e / 2)) s[j][e] = -INFINITY;",
        "Swapped fragment index in the mask: the row and column parts of the C element index exchanged.",
        SWA,
    ),
    Mutant(
        "swa-fwd-lse-log-base",
        SWA_CU,
        "lse[row] = (row_max[r] + log2f(row_sum[r])) * kLn2;",
        "lse[row] = (row_max[r] + logf(row_sum[r])) * kLn2;",
        "lse mixes bases: the row sum's natural log is added to the log2-scaled max.",
        SWA,
    ),
    Mutant(
        "swa-fwd-row-sum-16bit",
        SWA_CU,
        "row_sum[r] += s[j][2 * r] + s[j][2 * r + 1];",
        "row_sum[r] = __bfloat162float(__float2bfloat16_rn(row_sum[r] + s[j][2 * r] + s[j][2 * r + 1]));",
        "16-bit accumulator: the online softmax's row sum is rounded to bfloat16 at every step.",
        SWA,
    ),
    Mutant(
        "swa-fwd-epilogue-stage",
        SWA_CU,
        "store_rows<Elem, kD>(o, inv_sum, s_q + warp * 16 * kP,",
        "store_rows<Elem, kD>(o, inv_sum, s_q,",
        "Every warp stages its output rows in warp 0's shared-memory rows: warps overwrite each other's rows.",
        SWA,
    ),
    Mutant(
        "swa-fwd-smem-size",
        SWA_CU,
        "return size_t{kBlockM + 4 * kBlockN} * kPitch<kD> * 2;",
        "return size_t{kBlockM + 3 * kBlockN} * kPitch<kD> * 2;",
        "Dynamic shared memory one tile short: the second V stage lies past the allocation.",
        SWA,
    ),
    Mutant(
        "swa-dkdv-lse-units",
        SWA_CU,
        "exp2f(s[j][e] * scale_log2 - lse_tile[col] * kLog2e)",
        "exp2f(s[j][e] * scale_log2 - lse_tile[col])",
        "Wrong units: the natural-log lse is subtracted from log2-scaled scores without the log2(e) factor.",
        SWA,
    ),
    Mutant(
        "swa-dkdv-gqa-group",
        SWA_CU,
        "static_cast<int>(p.heads_q / p.heads_kv), hk, n0, keys)",
        "1, hk, n0, keys)",
        "Wrong GQA head mapping: dk and dv sum one query head of the kv head's group instead of all of them.",
        SWA,
    ),
    Mutant(
        "swa-dkdv-d-column",
        SWA_CU,
        "d_tile[8 * j + 2 * t + e % 2]",
        "d_tile[8 * j + t + e % 2]",
        "Swapped fragment index: D is read at column 8j + t instead of 8j + 2t of the lane's element.",
        SWA,
    ),
    Mutant(
        "swa-dkdv-dk-scale",
        SWA_CU,
        "dk_scale[2] = {static_cast<float>(p.scale), static_cast<float>(p.scale)};",
        "dk_scale[2] = {static_cast<float>(p.scale), 1.0f};",
        "Epilogue scales rows g of dK by the softmax scale but not rows g + 8.",
        SWA,
    ),
    Mutant(
        "swa-dkdv-partial-query-tile",
        SWA_CU,
        "const int rows = min(kBM, geo.seqlen_q - m0);",
        "const int rows = kBM;",
        "Partial query tile read without its bounds check: rows past seqlen_q are loaded, not zero-filled.",
        SWA,
    ),
    Mutant(
        "swa-dq-d-operand",
        SWA_CU,
        "d_row[r] = in ? static_cast<const float*>(p.softmax_d)[stats + row] : 0.0f;",
        "d_row[r] = in ? static_cast<const float*>(p.softmax_lse)[stats + row] : 0.0f;",
        "Wrong operand: dQ's row statistic D is read from the lse buffer.",
        SWA,
    ),
    Mutant(
        "swa-dq-wrong-operand",
        SWA_CU,
        "gemm_rb<Elem, kD, kBlockN>(dq, ds, k_tile, lane);",
        "gemm_rb<Elem, kD, kBlockN>(dq, ds, s_v + stage * kBlockN * kP, lane);",
        "Wrong operand: dQ += dS V instead of dS K.",
        SWA,
    ),
    # ---- swa_bwd_bwd.cu: double backward ---------------------------------------------------------------------------
    Mutant(
        "bwdbwd-gs-operand",
        SWA_BWD_BWD_CU,
        "b = a * ds + p * (b - f - e * dp);",
        "b = a * ds + p * (b - f - e * ds);",
        "Wrong operand in GS = A dS + P (B - F - E dP): E multiplies dS instead of dP.",
        SWA_BWD_BWD,
    ),
    Mutant(
        "bwdbwd-f-without-d",
        SWA_BWD_BWD_CU,
        "f_sum[r] += pv * ((dp[j][e] - d_row[r]) * av + bt[j][e]);",
        "f_sum[r] += pv * (dp[j][e] * av + bt[j][e]);",
        "Row statistic F accumulates dP A instead of (dP - D) A.",
        SWA_BWD_BWD,
    ),
    Mutant(
        "bwdbwd-stats-e-f-swapped",
        SWA_BWD_BWD_CU,
        "which == 2 ? p.row_e : p.row_f",
        "which == 2 ? p.row_f : p.row_e",
        "Row statistics E and F swapped when the key kernel copies them into shared memory.",
        SWA_BWD_BWD,
    ),
    Mutant(
        "bwdbwd-key-gqa-head",
        SWA_BWD_BWD_CU,
        "const int h = walk.head(step);",
        "const int h = hk;",
        "Wrong GQA head mapping: every step of the key kernel reads query head hk instead of the group's heads.",
        SWA_BWD_BWD,
    ),
    Mutant(
        "bwdbwd-absent-gdq-branch",
        SWA_BWD_BWD_CU,
        "      if (tiles.uq || tiles.uk) {",
        "      if (tiles.uq) {",
        "GdP V skipped when only gdk is given: the branch tests the query cotangent alone.",
        SWA_BWD_BWD,
    ),
    Mutant(
        "bwdbwd-p-uv-operand",
        SWA_BWD_BWD_CU,
        "to_a_operand<Elem, kN>(op, s);",
        "to_a_operand<Elem, kN>(op, bt);",
        "Wrong operand: grad_dout accumulates GS Uv instead of P Uv.",
        SWA_BWD_BWD,
    ),
    Mutant(
        "bwdbwd-key-mask-width",
        SWA_BWD_BWD_CU,
        "geo.tile_needs_mask<kRows>(m0, min(kM, geo.seqlen_q - m0), n0)",
        "geo.tile_needs_mask<kM>(m0, min(kM, geo.seqlen_q - m0), n0)",
        "Tile-level mask test with the query tile's width as the key count: key blocks on the diagonal go unmasked.",
        SWA_BWD_BWD,
    ),
    Mutant(
        "bwdbwd-key-epilogue-stage",
        SWA_BWD_BWD_CU,
        "store_rows<Elem, kD>(gv, gv_scale, s_v + own,",
        "store_rows<Elem, kD>(gv, gv_scale, s_k + own,",
        "grad_v staged in grad_k's rows: lanes overwrite staged rows other lanes are still storing.",
        SWA_BWD_BWD,
    ),
    Mutant(
        "bwdbwd-key-smem-stats",
        SWA_BWD_BWD_CU,
        "+ 8 * kTile<kD> * sizeof(float);",
        "+ 4 * kTile<kD> * sizeof(float);",
        "Dynamic shared memory sized for one stage of row statistics: the second stage lies past the allocation.",
        SWA_BWD_BWD,
    ),
    # ---- rms_norm.cu ---------------------------------------------------------------------------------------------
    Mutant(
        "rms-row-sum-trailing-barrier",
        RMS_NORM_CU,
        "__syncthreads();  // the next call overwrites scratch",
        "",
        "Deleted __syncthreads after the cross-warp sum: the next row_sum can overwrite scratch being read.",
        RMS_NORM,
        needs="racecheck",
    ),
    Mutant(
        "rms-row-sum-last-warp",
        RMS_NORM_CU,
        "for (int w = 0; w < warps; ++w) total += slot[w];",
        "for (int w = 0; w < warps - 1; ++w) total += slot[w];",
        "Reduction loop off by one: the last warp's partial sum is dropped when a row spans several warps.",
        RMS_NORM,
    ),
    Mutant(
        "rms-fwd-mean-over-vectors",
        RMS_NORM_CU,
        "row_sum(sumsq, scratch) / static_cast<A>(p.dim)",
        "row_sum(sumsq, scratch) / static_cast<A>(nvec)",
        "mean(x^2) divides by the row's vector count instead of its element count (right for scalar accesses).",
        RMS_NORM,
    ),
    Mutant(
        "rms-fwd-chunk-reload",
        RMS_NORM_CU,
        "if (nvec > chunk) load_chunk(xv, x, base, nvec);",
        "if (nvec > 2 * chunk) load_chunk(xv, x, base, nvec);",
        "The forward's second pass reuses the last chunk's registers for rows of two chunks instead of reloading.",
        RMS_NORM,
    ),
    Mutant(
        "rms-rope-inverse-rotation",
        RMS_NORM_CU,
        "const A sign = kInverse ? A(-1) : A(1);",
        "const A sign = A(1);",
        "The backward turns grad_out by R instead of R^T before the norm's backward.",
        RMS_NORM,
    ),
    Mutant(
        "rms-rope-fwd-pair",
        RMS_NORM_CU,
        "o.v[k + 1] = from_accum<T>(a * sn + b * c);",
        "o.v[k + 1] = from_accum<T>(a * sn - b * c);",
        "The forward's RoPE writes the second element of each pair with the wrong sign of its cosine term.",
        RMS_NORM,
    ),
    Mutant(
        "rms-bwd-rstd-cubed",
        RMS_NORM_CU,
        "const A coef = rstd * rstd * rstd * dot / static_cast<A>(p.dim);",
        "const A coef = rstd * rstd * dot / static_cast<A>(p.dim);",
        "grad_x's projection term uses rstd^2 instead of rstd^3.",
        RMS_NORM,
    ),
    Mutant(
        "rms-bwd-row-stride",
        RMS_NORM_CU,
        "const int64_t row_stride = static_cast<int64_t>(gridDim.x) * blockDim.y;",
        "const int64_t row_stride = blockDim.y;",
        "Grid-stride row loop steps by one block's rows: blocks repeat each other's rows in grad_weight.",
        RMS_NORM,
    ),
    Mutant(
        "rms-bwd-workspace-row",
        RMS_NORM_CU,
        "static_cast<A*>(p.workspace) + static_cast<int64_t>(blockIdx.x) * p.dim;",
        "static_cast<A*>(p.workspace);",
        "Every block writes its grad_weight partial to workspace row 0: the other rows are never written.",
        RMS_NORM,
    ),
    Mutant(
        "rms-dw-reduce-column-bound",
        RMS_NORM_CU,
        "if (threadIdx.y == 0 && c < p.dim) {",
        "if (threadIdx.y == 0) {",
        "Dropped column bounds check: the reduction writes grad_weight past its end in the last column block.",
        RMS_NORM,
        needs="boundscheck",
    ),
    Mutant(
        "rms-bwd-bwd-v-operand",
        RMS_NORM_CU,
        "dga.v[k] = wk * h + r * vk * xk;",
        "dga.v[k] = wk * h + r * vk * gk;",
        "Wrong operand in the epilogue: grad_grad_out's v term multiplies grad_out instead of x.",
        RMS_NORM,
    ),
    # ---- swiglu.cu and elementwise.cuh --------------------------------------------------------------------------
    Mutant(
        "swiglu-bwd-pair-component",
        SWIGLU_CU,
        "Num<T>::load(hv.v[2 * k])",
        "Num<T>::load(hv.v[2 * k + 1])",
        "Wrong component of the interleaved (h1, h3) pair: the gate's pre-activation is read from h3's slot.",
        SWIGLU,
    ),
    Mutant(
        "swiglu-bwd-loop-bound",
        SWIGLU_CU,
        "threadIdx.x; v < total;",
        "threadIdx.x; v <= total;",
        "Loop bound off by one: one thread reads and writes a vector past the end of h, da, dh and a.",
        SWIGLU,
        needs="boundscheck",
    ),
    Mutant(
        "swiglu-bwd-bwd-dh3-offset",
        SWIGLU_CU,
        "dh[split + p.width] = Num<T>::store(g.dh3);",
        "dh[split + 1] = Num<T>::store(g.dh3);",
        "Wrong stride: dh3 is written next to dh1 instead of width elements after it, over a neighbour's dh1.",
        SWIGLU,
    ),
    Mutant(
        "swiglu-bwd-bwd-grad-h-component",
        SWIGLU_CU,
        "Num<T>::load(e[2 * i + 1])",
        "Num<T>::load(e[2 * i])",
        "Wrong component: grad_h's h3 cotangent is read from h1's slot.",
        SWIGLU,
    ),
    Mutant(
        "swiglu-sigmoid-sign",
        SWIGLU_CU,
        "return 1.0f / (1.0f + __expf(-z));",
        "return 1.0f / (1.0f + __expf(z));",
        "Sign error in the float sigmoid: it computes sigmoid(-z).",
        SWIGLU,
    ),
    Mutant(
        "elementwise-bf16-truncates",
        ELEMENTWISE,
        "store(float v) { return __float2bfloat16_rn(v); }",
        "store(float v) { return __ushort_as_bfloat16(static_cast<unsigned short>(__float_as_uint(v) >> 16)); }",
        "bfloat16 stores truncate the float instead of rounding to nearest even.",
        SWIGLU,
    ),
    Mutant(
        "elementwise-double-narrowed",
        ELEMENTWISE,
        "static double store(double v) { return v; }",
        "static double store(double v) { return static_cast<float>(v); }",
        "float64 results pass through a float32 register on their way to memory.",
        SWIGLU,
    ),
    # ---- gemm.cu: pack_rows and the dispatch of the CUTLASS GEMMs ----------------------------------------------
    Mutant(
        "gemm-pack-rows-batch-offset",
        GEMM_CU,
        "z * p.src_rows +",
        "z * p.groups +",
        "Wrong stride: the source rows of batch entry z are offset by z * groups instead of z * src_rows.",
        SWIGLU,
    ),
    Mutant(
        "gemm-pack-rows-last-column",
        GEMM_CU,
        "c < p.cols; c += blockDim.x)",
        "c < p.cols - 1; c += blockDim.x)",
        "Column loop bound off by one: the last column of every packed row is never written.",
        SWIGLU,
    ),
    Mutant(
        "gemm-dispatch-dtype",
        GEMM_CU,
        "const bool bf16 = p.dtype == DType::kBFloat16;",
        "const bool bf16 = p.dtype != DType::kBFloat16;",
        "Wrong dispatch: bfloat16 operands run the float16 GEMMs and the other way round.",
        GEMM,
    ),
    Mutant(
        "gemm-dispatch-b-layout",
        GEMM_CU,
        "if (p.b.layout == GemmLayout::kRowMajor) {",
        "if (p.b.layout == GemmLayout::kColumnMajor) {",
        "Wrong dispatch: a row-major B runs the column-major store GEMM and the other way round.",
        GEMM,
    ),
    # ---- gemm_cutlass.cuh: the CUTLASS GEMMs (epilogues, arguments, the mma operator) -------------------------
    Mutant(
        "cutlass-swiglu-epilogue-operand",
        CUTLASS,
        "a[i] = Element(swiglu_math::silu(h1, s) * ab[2 * i + 1]);",
        "a[i] = Element(swiglu_math::silu(h1, s) * ab[2 * i]);",
        "Wrong operand in the CUTLASS swiglu epilogue: silu(h1) multiplies h1 instead of h3.",
        GEMM,
    ),
    Mutant(
        "cutlass-accumulate-scale",
        CUTLASS,
        ": alpha_(p.scale != nullptr ? p.alpha * *p.scale : p.alpha), beta_(p.beta) {}",
        ": alpha_(p.alpha), beta_(p.beta) {}",
        "The CUTLASS accumulate epilogue ignores the device-side step *scale.",
        GEMM,
    ),
    Mutant(
        "cutlass-accumulate-source",
        CUTLASS,
        "CUTLASS_HOST_DEVICE bool is_source_needed() const { return beta_ != 0.0f; }",
        "CUTLASS_HOST_DEVICE bool is_source_needed() const { return false; }",
        "The accumulate epilogue never reads C: the weight update W <- W - s A B overwrites W with -s A B.",
        GEMM,
    ),
    Mutant(
        "cutlass-swiglu-t-batch-stride",
        CUTLASS,
        "/*batch_stride_Vector=*/0, 2 * p.batch_stride_t,",
        "/*batch_stride_Vector=*/0, p.batch_stride_t,",
        "T's batch stride is passed in elements where CUTLASS counts bytes: batch entries overwrite their gates.",
        GEMM,
    ),
    Mutant(
        "cutlass-swiglu-t-leading-dimension",
        CUTLASS,
        "/*ldc=*/0, p.ldd, /*ldr=*/0, 2 * p.ldt);",
        "/*ldc=*/0, p.ldd, /*ldr=*/0, p.ldt);",
        "T's leading dimension is passed in elements where CUTLASS counts bytes: gate rows overlap.",
        GEMM,
    ),
    Mutant(
        "cutlass-mma-element-type",
        CUTLASS,
        "std::conditional_t<std::is_same_v<Element, bfloat16_t>, __nv_bfloat16, __half>;",
        "std::conditional_t<std::is_same_v<Element, bfloat16_t>, __half, __nv_bfloat16>;",
        "The tensor-core instruction reads bfloat16 operands as float16 and the other way round.",
        GEMM,
    ),
    Mutant(
        "cutlass-store-b-layout",
        CUTLASS,
        "using Kernel = UniversalKernel<E, cutlass::layout::RowMajor, Layout<kBRowMajor>, E, Epilogue>;",
        "using Kernel = UniversalKernel<E, cutlass::layout::RowMajor, Layout<!kBRowMajor>, E, Epilogue>;",
        "The store GEMM reads B in the other layout than the one it is given.",
        GEMM,
    ),
    # ---- cutlass_sim.h: CUTLASS's PTX wrappers in the simulator build --------------------------------------------
    Mutant(
        "cutlass-sim-ldsm-trans",
        CUTLASS_SIM,
        "ttt::arch::ldmatrix_trans<MatrixCount>(r, ptr);",
        "ttt::arch::ldmatrix<MatrixCount>(r, ptr);",
        "The simulator's ldsm loads column-major operand tiles untransposed.",
        GEMM,
    ),
    Mutant(
        "cutlass-sim-warp-index",
        CUTLASS_SIM,
        "return __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) / NumThreadsPerWarp, 0);",
        "return 0;",
        "The simulator's warp index is CUTLASS's host value, 0: every warp computes and stores warp 0's tile.",
        GEMM,
    ),
    # ---- clip_sgd.cu ---------------------------------------------------------------------------------------------
    Mutant(
        "clip-block-sum-barrier",
        CLIP_SGD_CU,
        "__syncthreads();",
        "",
        "Deleted __syncthreads in the block reduction: thread 0 sums the warp totals before all are written.",
        CLIP_SGD,
    ),
    Mutant(
        "clip-partials-launch-offset",
        CLIP_SGD_CU,
        "(blockIdx.z * batch.count + batch.first + blockIdx.y)",
        "(blockIdx.z * batch.count + blockIdx.y)",
        "The second launch's tensors (16 per launch) write their partial sums over the first launch's.",
        CLIP_SGD,
    ),
    Mutant(
        "clip-scale-sequence-offset",
        CLIP_SGD_CU,
        "const double* seq_partials = partials + blockIdx.x * per_seq;",
        "const double* seq_partials = partials;",
        "Every sequence's norm is summed from sequence 0's partial sums.",
        CLIP_SGD,
    ),
    Mutant(
        "clip-block-sum-float",
        CLIP_SGD_CU,
        "double block_sum(double v, double* scratch)",
        "double block_sum(float v, double* scratch)",
        "The squared-gradient reduction passes through a float32 register: float64 norms lose precision.",
        CLIP_SGD,
    ),
    # ---- arch.h: the primitives (PTX for nvcc, their models in the simulator) ------------------------------------
    Mutant(
        "arch-ptx-ldmatrix-trans",
        ARCH_H,
        '"ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0',
        '"ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0',
        "Missing .trans in the PTX of the x4 ldmatrix_trans.",
        ARCH_SASS,
    ),
    Mutant(
        "arch-ptx-cvt-operands",
        ARCH_H,
        'asm("cvt.rn.bf16x2.f32 %0, %1, %2;\\n" : "=r"(r) : "f"(hi), "f"(lo));',
        'asm("cvt.rn.bf16x2.f32 %0, %1, %2;\\n" : "=r"(r) : "f"(lo), "f"(hi));',
        "pack2<bf16> passes lo as cvt's first source, which lands in the upper half: the halves are swapped.",
        ARCH_SASS,
    ),
    Mutant(
        "arch-sim-pack2-halves",
        ARCH_H,
        "return __half_as_ushort(__float2half_rn(lo)) | uint32_t{__half_as_ushort(__float2half_rn(hi))} << 16;",
        "return __half_as_ushort(__float2half_rn(hi)) | uint32_t{__half_as_ushort(__float2half_rn(lo))} << 16;",
        "pack2<half> puts lo in the upper half of the register.",
        ARCH,
    ),
    Mutant(
        "arch-sim-zero-fill",
        ARCH_H,
        "if (src_bytes < bytes) {",
        "if (src_bytes < bytes && src_bytes > 0) {",
        "cp.async with src-size 0 skips the zero-fill: out-of-bounds rows keep stale shared memory.",
        ARCH,
    ),
    Mutant(
        "arch-sim-ldmatrix-trans",
        ARCH_H,
        "ldmatrix_coord(lane, reg, half, Trans)",
        "ldmatrix_coord(lane, reg, half, false)",
        "The simulated ldmatrix ignores .trans.",
        ARCH,
    ),
    # ---- fragment_layout.h: the fragment layouts the simulator's mma and ldmatrix follow ------------------------
    Mutant(
        "fragment-a-registers",
        FRAGMENTS,
        "return {lane / 4 + 8 * (reg % 2), 8 * (reg / 2) + 2 * (lane % 4) + half};",
        "return {lane / 4 + 8 * (reg / 2), 8 * (reg % 2) + 2 * (lane % 4) + half};",
        "A fragment layout with registers 1 and 2 swapped (rows g + 8 and columns 8..15 exchanged).",
        ARCH,
    ),
    Mutant(
        "fragment-b-halves",
        FRAGMENTS,
        "return {8 * reg + 2 * (lane % 4) + half, lane / 4};",
        "return {8 * reg + 2 * (lane % 4) + 1 - half, lane / 4};",
        "B fragment layout with the two k rows of a register swapped between its halves.",
        ARCH,
    ),
    Mutant(
        "fragment-ldmatrix-trans",
        FRAGMENTS,
        "LdmatrixCoord{reg, 2 * (lane % 4) + half, lane / 4}",
        "LdmatrixCoord{reg, lane / 4, 2 * (lane % 4) + half}",
        "The .trans ldmatrix layout written as the plain one.",
        ARCH,
    ),
]
