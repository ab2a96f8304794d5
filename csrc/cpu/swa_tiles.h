// Shared pieces of the sliding-window attention CPU kernels (csrc/cpu/swa.cpp, csrc/cpu/swa_bwd_bwd.cpp).
//
// Tiling. Queries and keys share one grid of kTile-position tiles aligned to the end of the key sequence: tile n
// holds the absolute positions [n * kTile - shift, (n + 1) * kTile - shift), shift = ntiles * kTile - seqlen_k, so
// only tile 0 can be partial. Query tile n (the queries whose position t falls in tile n) sees the key tiles
// first_key_tile(n) .. n; only the first (window edge) and the last (causal diagonal) need a mask, tiles outside the
// window are never visited.
//
// Score tiles are stored key-major, s[key jj][query ii] ([kTile, kTile]): q k^T then multiplies rows of k, read in
// place and broadcast one element at a time, with the query tile transposed once into a packed [head_dim, kTile]
// panel; and the softmax statistics of the kTile queries are vector lanes. All inner products are register-blocked
// micro-kernels on 64-byte vectors (GCC vector extensions: one AVX-512 register, two AVX2 registers elsewhere)
// holding kAccRegs accumulators; head_dim needs no particular value (a scalar loop takes its last head_dim % lanes
// columns).
//
// Passes over (batch, kv head, chunk of key tiles) tasks (the backward and the second pass of the double backward)
// run through key_chunk_pass, which owns the scratch of the key-side outputs and the dq-style spill tiles of the
// query-side outputs.
#pragma once


#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"
#include "ttt_kernels/cpu_parallel.h"
#include "ttt_kernels/swa.h"

namespace ttt::cpu::swa_tiles {

// Positions per tile (queries and keys). Divisible by every micro-kernel's row count.
constexpr int64_t kTile = 48;
// Accumulator registers of a micro-kernel (of AVX-512's 32; the others hold operands).
constexpr int kAccRegs = 24;
// The backward chunks the keys so that batch * heads_kv * chunks reaches about this many tasks.
constexpr int64_t kBwdTargetTasks = 32;

// ---------------------------------------------------------------------------------------------------------------
// 64-byte vectors
// ---------------------------------------------------------------------------------------------------------------
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(64)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
typedef int32_t VecI32 __attribute__((vector_size(64)));
// Without AVX-512 GCC notes that 64-byte vector arguments change the calling convention: irrelevant here, the vectors
// pass only between inline functions of the CPU kernels, all built with the same flags.
#pragma GCC diagnostic ignored "-Wpsabi"

template <typename T>
constexpr int kLanes = 64 / sizeof(T);
// Vectors per row of a score tile.
template <typename T>
constexpr int kTileVecs = kTile / kLanes<T>;

template <typename T>
inline Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
inline void store(T* p, const Vec<T>& v) {
  std::memcpy(p, &v, sizeof v);
}
template <typename T>
inline Vec<T> splat(T s) {
  return s - Vec<T>{};
}
// Lane-wise max; NaN in b propagates.
template <typename V>
inline V vmax(const V& a, const V& b) {
  return a > b ? a : b;
}
template <typename T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

// exp lane-wise, 0 below float's smallest normal (masked scores are -inf). 2^n * p(r) with n = round(x / ln 2),
// r = x - n ln 2 in [-ln2 / 2, ln2 / 2] (ln 2 in two parts, Cephes) and p the degree-7 Taylor polynomial (relative
// error < 1e-7, about 1 ulp).
inline Vec<float> vexp(const Vec<float>& x) {
  const Vec<float> lo = splat(-87.33f);
  const Vec<float> hi = splat(88.0f);
  Vec<float> xc = x < lo ? lo : x;  // NaN stays NaN
  xc = xc > hi ? hi : xc;
  const Vec<float> n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // + 1.5 * 2^23: round to nearest
  const Vec<float> r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
  Vec<float> poly = splat(1.0f / 5040.0f);
  for (const float c : {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f}) {
    poly = poly * r + c;
  }
  const VecI32 bits = (__builtin_convertvector(n, VecI32) + 127) << 23;
  Vec<float> pow2n;
  std::memcpy(&pow2n, &bits, sizeof pow2n);
  return x < lo ? Vec<float>{} : poly * pow2n;
}

// float64 runs the tests (gradcheck): exact libm exp, speed secondary.
inline Vec<double> vexp(const Vec<double>& x) {
  Vec<double> y;
  for (int i = 0; i < kLanes<double>; ++i) y[i] = std::exp(x[i]);
  return y;
}

// ---------------------------------------------------------------------------------------------------------------
// Micro-kernels
// ---------------------------------------------------------------------------------------------------------------

// c[r][0:kTile] (+)= sum_d a[r][d] * b[d][0:kTile] for MR rows of a (row stride lda), b a packed [depth, kTile]
// panel, c rows of stride kTile (a score tile); kAccumulate adds to c instead of overwriting it.
template <typename T, int MR, bool kAccumulate>
inline void dot_rows_block(const T* __restrict__ a, int64_t lda, const T* __restrict__ b, int64_t depth,
                           T* __restrict__ c) {
  constexpr int NV = kTileVecs<T>;
  constexpr int L = kLanes<T>;
  Vec<T> acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[r][v] = kAccumulate ? load(c + r * kTile + v * L) : Vec<T>{};
  }
  for (int64_t d = 0; d < depth; ++d) {
    Vec<T> bv[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) bv[v] = load(b + d * kTile + v * L);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const Vec<T> s = splat(a[r * lda + d]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[r][v] += s * bv[v];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) store(c + r * kTile + v * L, acc[r][v]);
  }
}

// Score rows: c[r][:] (+)= a[r][:] . b for r < rows (a: rows of k or v in place; b: a transposed query tile).
template <typename T, bool kAccumulate = false>
void dot_rows(const T* a, int64_t lda, int64_t rows, const T* b, int64_t depth, T* c) {
  constexpr int MR = kAccRegs / kTileVecs<T>;
  int64_t r = 0;
  for (; r + MR <= rows; r += MR) dot_rows_block<T, MR, kAccumulate>(a + r * lda, lda, b, depth, c + r * kTile);
  for (; r < rows; ++r) dot_rows_block<T, 1, kAccumulate>(a + r * lda, lda, b, depth, c + r * kTile);
}

// c[m][0:NV*lanes] += sum_k A(m, k) * b[k][0:NV*lanes] for m < MR, k < depth, with A(m, k) = a[m * SM + k * SK]:
// a score tile read as it is (SM = kTile, SK = 1) or transposed (SM = 1, SK = kTile).
template <typename T, int SM, int SK, int MR, int NV>
inline void acc_block(const T* __restrict__ a, const T* __restrict__ b, int64_t ldb, int64_t depth,
                      T* __restrict__ c, int64_t ldc) {
  constexpr int L = kLanes<T>;
  Vec<T> acc[MR][NV];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[m][v] = load(c + m * ldc + v * L);
  }
  for (int64_t k = 0; k < depth; ++k) {
    Vec<T> bv[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) bv[v] = load(b + k * ldb + v * L);
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      const Vec<T> s = splat(a[m * SM + k * SK]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[m][v] += s * bv[v];
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) store(c + m * ldc + v * L, acc[m][v]);
  }
}

// One column panel of NV vectors, all rows: MR * NV accumulators, NV b vectors and a broadcast stay in registers.
template <typename T, int SM, int SK, int NV>
void acc_panel(const T* a, int64_t rows, int64_t depth, const T* b, int64_t ldb, T* c, int64_t ldc) {
  constexpr int MR = std::min(12, kAccRegs / NV);
  int64_t m = 0;
  for (; m + MR <= rows; m += MR) acc_block<T, SM, SK, MR, NV>(a + m * SM, b, ldb, depth, c + m * ldc, ldc);
  for (; m < rows; ++m) acc_block<T, SM, SK, 1, NV>(a + m * SM, b, ldb, depth, c + m * ldc, ldc);
}

// Widest column panel, in vectors. Wider panels would keep fewer rows per micro-kernel or reload b from memory.
constexpr int kMaxPanelVecs = 5;

// A column panel of nv <= NV vectors.
template <typename T, int SM, int SK, int NV = kMaxPanelVecs>
void acc_panel_of(int nv, const T* a, int64_t rows, int64_t depth, const T* b, int64_t ldb, T* c, int64_t ldc) {
  if constexpr (NV >= 1) {
    if (nv == NV) return acc_panel<T, SM, SK, NV>(a, rows, depth, b, ldb, c, ldc);
    acc_panel_of<T, SM, SK, NV - 1>(nv, a, rows, depth, b, ldb, c, ldc);
  }
}

// c[rows, cols] += A[rows, depth] * b[depth, cols] (A as in acc_block; b rows of stride ldb, c rows of stride ldc):
// panels of 4 vectors while more than kMaxPanelVecs remain, one panel of the rest, then the last cols % lanes
// columns in scalar code.
template <typename T, int SM, int SK>
void acc_rows(const T* a, int64_t rows, int64_t depth, const T* b, int64_t ldb, int64_t cols, T* c, int64_t ldc) {
  constexpr int L = kLanes<T>;
  int64_t col = 0;
  for (; cols - col > kMaxPanelVecs * L; col += 4 * L) {
    acc_panel<T, SM, SK, 4>(a, rows, depth, b + col, ldb, c + col, ldc);
  }
  const int nv = static_cast<int>((cols - col) / L);
  acc_panel_of<T, SM, SK>(nv, a, rows, depth, b + col, ldb, c + col, ldc);
  col += nv * L;
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t k = 0; k < depth; ++k) {
      const T s = a[m * SM + k * SK];
      for (int64_t j = col; j < cols; ++j) c[m * ldc + j] += s * b[k * ldb + j];
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Tiles
// ---------------------------------------------------------------------------------------------------------------

// The tile grid (see the top of the file). Positions are absolute key positions; query i is at i + off.
struct Geometry {
  int64_t seqlen_k, off, window, ntiles, shift, first_query_tile;

  explicit Geometry(const SwaParams& p)
      : seqlen_k(p.seqlen_k),
        off(p.seqlen_k - p.seqlen_q),
        window(std::min(p.window, p.seqlen_k)),
        ntiles(ceil_div(p.seqlen_k, kTile)),
        shift(ntiles * kTile - p.seqlen_k),
        first_query_tile(tile_of(off)) {}

  int64_t start(int64_t n) const { return n * kTile - shift; }
  int64_t tile_of(int64_t pos) const { return (pos + shift) / kTile; }
  // First valid row of tile n: positions below 0 (keys) or below off (queries) do not exist.
  int64_t key_lo(int64_t n) const { return std::max<int64_t>(0, -start(n)); }
  int64_t query_lo(int64_t n) const { return std::max<int64_t>(0, off - start(n)); }
  // Key tiles seen by query tile n: first_key_tile(n) .. n.
  int64_t first_key_tile(int64_t n) const { return tile_of(std::max<int64_t>(0, start(n) + query_lo(n) - window + 1)); }
  // Query tiles that see key tile kt: max(kt, first_query_tile) .. last_query_tile(kt).
  int64_t last_query_tile(int64_t kt) const {
    return tile_of(std::min(seqlen_k - 1, start(kt) + kTile - 1 + window - 1));
  }
  // First row of key tile kt that some query of tile n sees: the rows below do not exist or lie before every
  // query's window (in the window-edge tile).
  int64_t key_row_lo(int64_t kt, int64_t n) const {
    return std::max(key_lo(kt), start(n) + query_lo(n) - window + 1 - start(kt));
  }
  // Whether some (key row >= key_row_lo, valid query) pair of key tile kt x query tile n lies outside the window.
  bool needs_mask(int64_t kt, int64_t n) const {
    const int64_t j0 = start(kt), t0 = start(n);
    return j0 + kTile - 1 > t0 + query_lo(n) || j0 + key_row_lo(kt, n) <= t0 + kTile - 1 - window;
  }
};

// Sets the scores of key rows [row_lo, kTile) of a tile that lie outside their query's window to -inf: key
// j = j0 + jj is visible from the query at t = t0 + ii iff t - window < j <= t, i.e. j - t0 <= ii < j - t0 + window.
template <typename T>
void mask_tile(T* s, int64_t row_lo, int64_t j0, int64_t t0, int64_t window) {
  for (int64_t jj = row_lo; jj < kTile; ++jj) {
    T* row = s + jj * kTile;
    const int64_t first = std::clamp<int64_t>(j0 + jj - t0, 0, kTile);
    const int64_t end = std::clamp<int64_t>(j0 + jj - t0 + window, 0, kTile);
    std::fill(row, row + first, kNegInf<T>);
    std::fill(row + end, row + kTile, kNegInf<T>);
  }
}

// dst[d][ii] = mul * src[ii - col_lo][d] for col_lo <= ii < kTile and 0 for ii < col_lo: a query-tile slice of
// q or dout (rows of stride ld from the tile's first valid row) packed into a transposed [depth, kTile] panel.
template <typename T>
void pack_transposed(const T* src, int64_t ld, int64_t col_lo, int64_t depth, T mul, T* dst) {
  for (int64_t d = 0; d < depth; ++d) std::fill_n(dst + d * kTile, col_lo, T(0));
  for (int64_t ii = col_lo; ii < kTile; ++ii) {
    const T* row = src + (ii - col_lo) * ld;
    for (int64_t d = 0; d < depth; ++d) dst[d * kTile + ii] = mul * row[d];
  }
}

template <typename T>
struct AlignedDelete {
  void operator()(T* p) const { ::operator delete[](p, std::align_val_t{64}); }
};
template <typename T>
using Buffer = std::unique_ptr<T[], AlignedDelete<T>>;
template <typename T>
Buffer<T> alloc(int64_t n) {
  return Buffer<T>(static_cast<T*>(::operator new[](std::max<int64_t>(n, 1) * sizeof(T), std::align_val_t{64})));
}

// Attention passes of fewer flops run on the calling thread (tens of microseconds, e.g. a decode step): forking a
// thread team costs more, and on a machine shared with another busy process a preempted worker stalls the team.
constexpr double kParallelFlops = 1 << 22;

// The flops of S = Q K^T and O = P V over every query's window: the scale of each attention pass.
inline double window_flops(const SwaParams& p) {
  return 4.0 * static_cast<double>(p.batch * p.heads_q * p.seqlen_q) *
         static_cast<double>(std::min(p.window, p.seqlen_k) * p.head_dim);
}

// Runs body(task, scratch) for every task in [0, tasks) on all threads (on the calling thread alone for a pass below
// kParallelFlops, see window_flops), each with its own scratch = make(). Tasks are handed out one at a time (their
// costs differ: tiles near the sequence start see fewer keys); each writes disjoint outputs, so results do not
// depend on which thread runs which task.
template <typename Make, typename Body>
void for_each_task(const SwaParams& p, int64_t tasks, const Make& make, const Body& body) {
  std::atomic<int64_t> next{0};
  const int64_t workers = window_flops(p) < kParallelFlops ? 1 : std::min<int64_t>(tasks, num_threads());
  parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    auto scratch = make();
    for (int64_t task = next++; task < tasks; task = next++) body(task, scratch);
  });
}

// Typed views of a head's rows: element (row, d) of head h in batch b at base + b * batch + h * head + row * row_s.
template <typename T>
struct Rows {
  T* base;
  int64_t batch, row, head;
  T* at(int64_t b, int64_t h, int64_t r) const { return base + b * batch + h * head + r * row; }
};
template <typename T>
Rows<T> rows_of(const void* ptr, int64_t batch, int64_t row, int64_t head) {
  return Rows<T>{static_cast<T*>(const_cast<void*>(ptr)), batch, row, head};
}

// Key chunks of the backward: each (batch, kv head) splits its key tiles into `count` chunks of `tiles` tiles.
// Chunk c contributes to the dq of query tiles query_begin(c) .. query_end(c) - 1: it writes its own tiles (those
// below end_tile(c)) straight into dq, and a [kTile, head_dim] partial per later ("spill") tile and query head into
// dq_accum, which the last pass adds to dq in chunk order. Between window / 4 and window keys per chunk bounds
// dq_accum by 4x the size of dq (1x to 1.5x for the usual sizes); fewer than window keys only when batch * heads_kv
// alone gives too few tasks.
struct BwdChunks {
  const Geometry& g;
  int64_t tiles, count;
  std::vector<int64_t> spill_begin;  // [count + 1]: chunk c's spill tiles are spill_begin[c] .. spill_begin[c + 1] - 1

  BwdChunks(const SwaParams& p, const Geometry& geometry) : g(geometry) {
    const int64_t window_tiles = ceil_div(g.window, kTile);
    const int64_t target = ceil_div(kBwdTargetTasks, p.batch * p.heads_kv);
    tiles = std::clamp(ceil_div(g.ntiles, target), ceil_div(window_tiles, 4), window_tiles);
    count = ceil_div(g.ntiles, tiles);
    spill_begin.assign(count + 1, 0);
    for (int64_t c = 0; c < count; ++c) {
      spill_begin[c + 1] = spill_begin[c] + std::max<int64_t>(0, query_end(c) - std::max(end_tile(c), query_begin(c)));
    }
  }

  int64_t first_tile(int64_t c) const { return c * tiles; }
  int64_t end_tile(int64_t c) const { return std::min(g.ntiles, (c + 1) * tiles); }
  int64_t query_begin(int64_t c) const { return std::max(first_tile(c), g.first_query_tile); }
  int64_t query_end(int64_t c) const { return g.last_query_tile(end_tile(c) - 1) + 1; }
  // Spill tiles per (batch, query head).
  int64_t spills() const { return spill_begin[count]; }
  // Index of spill tile n >= end_tile(c) of chunk c among spills().
  int64_t spill_index(int64_t c, int64_t n) const { return spill_begin[c] + n - std::max(end_tile(c), query_begin(c)); }
};

inline bool is_empty(const SwaParams& p) {
  return p.batch == 0 || p.heads_kv == 0 || p.seqlen_k == 0 || p.head_dim == 0;
}

// D = rowsum(dout * out) -> d [batch, heads_q, seqlen_q] (contiguous).
template <typename T>
void dout_dot_out(const SwaParams& p, T* d) {
  const Rows<const T> out = rows_of<const T>(p.out, p.o_batch_stride, p.o_row_stride, p.o_head_stride);
  const Rows<const T> dout = rows_of<const T>(p.dout, p.do_batch_stride, p.do_row_stride, p.do_head_stride);
  const int64_t dim = p.head_dim;
  const int64_t grain = std::max<int64_t>(1, (1 << 15) / dim);  // rows of 32K elements per thread at least
  parallel_for(0, p.batch * p.heads_q * p.seqlen_q, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t i = r % p.seqlen_q, h = r / p.seqlen_q % p.heads_q, b = r / p.seqlen_q / p.heads_q;
      const T* o_row = out.at(b, h, i);
      const T* do_row = dout.at(b, h, i);
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t e = 0; e < dim; ++e) acc += o_row[e] * do_row[e];
      d[r] = acc;
    }
  });
}

// Where a (key tile, query tile) pair of a key_chunk_pass accumulates: query output o's rows query_lo(n) .. kTile - 1
// of query tile n at query[o] (row stride query_ld[o]: the output itself or a spill tile), key output o's tile kt at
// key[o] ([kTile, head_dim], chunk scratch).
template <typename T, int kQueryOuts, int kKeyOuts>
struct ChunkOutputs {
  std::array<T*, kQueryOuts> query;
  std::array<int64_t, kQueryOuts> query_ld;
  std::array<T*, kKeyOuts> key;
};

// Elements of the spill workspace `accum` of a key_chunk_pass with query_outs query-side outputs.
inline int64_t key_chunk_accum_bytes(const SwaParams& p, int query_outs) {
  if (is_empty(p)) return 0;
  const Geometry g(p);
  return query_outs * p.batch * p.heads_q * BwdChunks(p, g).spills() * kTile * p.head_dim * accum_bytes(p.dtype);
}

// A pass over (batch, kv head, chunk of key tiles) tasks producing kQueryOuts outputs like q (summed over key tiles)
// and kKeyOuts outputs like k (summed over the query tiles of every query head of the kv head). Per task, for each
// query head h of the kv head and each query tile n that sees the chunk, it calls begin(scratch, b, h, n), then
// pair(scratch, b, kvh, h, n, kt, outputs) for each key tile kt of the chunk in n's windows. The key outputs
// accumulate in zeroed chunk scratch, copied out at the end of the task; the query outputs of the chunk's own tiles
// accumulate in place (zeroed first), those of later tiles in spill tiles of accum (key_chunk_accum_bytes), added in
// chunk order by a last pass. scratch = make() per thread.
template <typename T, int kQueryOuts, int kKeyOuts, typename Make, typename Begin, typename Pair>
void key_chunk_pass(const SwaParams& p, const std::array<Rows<T>, kQueryOuts>& query_out,
                    const std::array<Rows<T>, kKeyOuts>& key_out, T* accum, const Make& make, const Begin& begin,
                    const Pair& pair) {
  const Geometry g(p);
  const BwdChunks chunks(p, g);
  const int64_t dim = p.head_dim, group = p.heads_q / p.heads_kv;
  const int64_t tile_elems = kTile * dim, chunk_elems = chunks.tiles * tile_elems;
  // accum[output, batch, heads_q, spill] is one [kTile, dim] tile (rows below the tile's query_lo unused).
  const auto spill = [&](int o, int64_t b, int64_t h, int64_t c, int64_t n) {
    return accum + (((o * p.batch + b) * p.heads_q + h) * chunks.spills() + chunks.spill_index(c, n)) * tile_elems;
  };
  using UserScratch = decltype(make());
  struct Scratch {
    UserScratch user;
    std::array<Buffer<T>, kKeyOuts> key;  // [chunk tiles * kTile, dim] each
  };
  const auto make_scratch = [&] {
    Scratch sc{make(), {}};
    for (auto& buffer : sc.key) buffer = alloc<T>(chunk_elems);
    return sc;
  };
  for_each_task(p, p.batch * p.heads_kv * chunks.count, make_scratch, [&](int64_t task, Scratch& sc) {
    const int64_t c = task % chunks.count, kvh = task / chunks.count % p.heads_kv;
    const int64_t b = task / chunks.count / p.heads_kv;
    const int64_t kt_begin = chunks.first_tile(c), kt_end = chunks.end_tile(c);
    for (auto& buffer : sc.key) std::fill_n(buffer.get(), chunk_elems, T(0));
    ChunkOutputs<T, kQueryOuts, kKeyOuts> outs;
    for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
      for (int64_t n = chunks.query_begin(c); n < chunks.query_end(c); ++n) {
        begin(sc.user, b, h, n);
        const int64_t col_lo = g.query_lo(n), i0 = g.start(n) - g.off;
        const bool own = n < kt_end;
        for (int o = 0; o < kQueryOuts; ++o) {
          outs.query[o] = own ? query_out[o].at(b, h, i0 + col_lo) : spill(o, b, h, c, n) + col_lo * dim;
          outs.query_ld[o] = own ? query_out[o].row : dim;
          for (int64_t ii = col_lo; ii < kTile; ++ii) {
            std::fill_n(outs.query[o] + (ii - col_lo) * outs.query_ld[o], dim, T(0));
          }
        }
        for (int64_t kt = std::max(kt_begin, g.first_key_tile(n)); kt < std::min(kt_end, n + 1); ++kt) {
          for (int o = 0; o < kKeyOuts; ++o) outs.key[o] = sc.key[o].get() + (kt - kt_begin) * tile_elems;
          pair(sc.user, b, kvh, h, n, kt, outs);
        }
      }
    }
    for (int64_t kt = kt_begin; kt < kt_end; ++kt) {
      for (int64_t jj = g.key_lo(kt); jj < kTile; ++jj) {
        const int64_t row = (kt - kt_begin) * kTile + jj, j = g.start(kt) + jj;
        for (int o = 0; o < kKeyOuts; ++o) std::copy_n(sc.key[o].get() + row * dim, dim, key_out[o].at(b, kvh, j));
      }
    }
  });

  // The query outputs += the spill partials of the earlier chunks that see each query tile, in chunk order.
  const int64_t qtiles = g.ntiles - g.first_query_tile;
  const int64_t tasks = p.batch * p.heads_q * qtiles;
  parallel_for(0, tasks, window_flops(p) < kParallelFlops ? tasks : 1, [&](int64_t lo, int64_t hi) {
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t n = g.first_query_tile + task % qtiles;
      const int64_t b = task / qtiles / p.heads_q, h = task / qtiles % p.heads_q;
      const int64_t col_lo = g.query_lo(n), i0 = g.start(n) - g.off;
      // The chunks that see tile n are contiguous and end with its own chunk n / tiles.
      int64_t c_first = n / chunks.tiles;
      while (c_first > 0 && chunks.query_end(c_first - 1) > n) --c_first;
      for (int64_t c = c_first; c < n / chunks.tiles; ++c) {
        for (int o = 0; o < kQueryOuts; ++o) {
          const T* part = spill(o, b, h, c, n);
          for (int64_t ii = col_lo; ii < kTile; ++ii) {
            T* dst = query_out[o].at(b, h, i0 + ii);
#pragma omp simd
            for (int64_t e = 0; e < dim; ++e) dst[e] += part[ii * dim + e];
          }
        }
      }
    }
  });
}

}  // namespace ttt::cpu::swa_tiles
