// Fused sliding-window attention CPU kernels (math and params: include/ttt_kernels/swa.h).
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
// Forward: tasks (batch, head, query tile), online softmax over the key tiles (FlashAttention-2).
// Backward: D = rowsum(dout * out); then tasks (batch, kv head, chunk of key tiles) recompute P = exp(S - lse) for
// every query tile that sees the chunk (for all query heads of the kv head) and accumulate dk and dv of the chunk
// in scratch. dq of a query tile is written by the chunk holding the tile's own keys; the earlier chunks whose keys
// it also sees write their contributions to dq_accum, and a last pass adds those to dq in chunk order. No atomics,
// and the chunking depends only on the sizes: results are bitwise reproducible for any number of threads.
#include "ttt_kernels/swa.h"

#include "swa_tiles.h"

namespace ttt::cpu {
namespace {

using namespace swa_tiles;

// Online softmax step over key rows [row_lo, kTile) of a score tile, in place: s <- exp(s - m_new), with the
// running max m, sum l and rescale factor alpha = exp(m_old - m_new) of each query.
template <typename T>
void online_softmax(T* s, int64_t row_lo, T* m, T* l, T* alpha) {
  constexpr int L = kLanes<T>;
  for (int v = 0; v < kTileVecs<T>; ++v) {
    Vec<T> tile_max = splat(kNegInf<T>);
    for (int64_t jj = row_lo; jj < kTile; ++jj) tile_max = vmax(tile_max, load(s + jj * kTile + v * L));
    const Vec<T> m_old = load(m + v * L);
    const Vec<T> m_new = vmax(m_old, tile_max);
    // A query that has seen only masked keys keeps m = -inf; subtracting 0 instead gives exp(-inf) = 0, not NaN.
    const Vec<T> m_sub = m_new == splat(kNegInf<T>) ? Vec<T>{} : m_new;
    Vec<T> sum{};
    for (int64_t jj = row_lo; jj < kTile; ++jj) {
      const Vec<T> pv = vexp(load(s + jj * kTile + v * L) - m_sub);
      store(s + jj * kTile + v * L, pv);
      sum += pv;
    }
    const Vec<T> a = vexp(m_old - m_sub);
    store(alpha + v * L, a);
    store(l + v * L, load(l + v * L) * a + sum);
    store(m + v * L, m_new);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------------------------
template <typename T>
void fwd(const SwaParams& p) {
  const Geometry g(p);
  const int64_t dim = p.head_dim;
  const int64_t group = p.heads_q / p.heads_kv;
  const int64_t qtiles = g.ntiles - g.first_query_tile;
  const T scale = static_cast<T>(p.scale);
  const Rows<const T> q = rows_of<const T>(p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride);
  const Rows<const T> k = rows_of<const T>(p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride);
  const Rows<const T> v = rows_of<const T>(p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
  const Rows<T> out = rows_of<T>(p.out, p.o_batch_stride, p.o_row_stride, p.o_head_stride);
  T* lse = static_cast<T*>(p.softmax_lse);

  struct Scratch {
    Buffer<T> q_t, s, o, m, l, alpha;  // [dim, kTile], [kTile, kTile], [kTile, dim], 3 x [kTile]
  };
  const auto make = [&] {
    return Scratch{alloc<T>(dim * kTile), alloc<T>(kTile * kTile), alloc<T>(kTile * dim),
                   alloc<T>(kTile),       alloc<T>(kTile),         alloc<T>(kTile)};
  };
  for_each_task(p, p.batch * p.heads_q * qtiles, make, [&](int64_t task, Scratch& sc) {
    const int64_t n = g.first_query_tile + task % qtiles;
    const int64_t b = task / qtiles / p.heads_q, h = task / qtiles % p.heads_q, kvh = h / group;
    const int64_t t0 = g.start(n), col_lo = g.query_lo(n), i0 = t0 - g.off;  // query index of column 0
    T* s = sc.s.get();
    T* o = sc.o.get();
    pack_transposed(q.at(b, h, i0 + col_lo), q.row, col_lo, dim, scale, sc.q_t.get());
    std::fill_n(sc.m.get(), kTile, kNegInf<T>);
    std::fill_n(sc.l.get(), kTile, T(0));
    std::fill_n(o, kTile * dim, T(0));

    for (int64_t kt = g.first_key_tile(n); kt <= n; ++kt) {
      const int64_t j0 = g.start(kt), row_lo = g.key_row_lo(kt, n), rows = kTile - row_lo;
      dot_rows(k.at(b, kvh, j0 + row_lo), k.row, rows, sc.q_t.get(), dim, s + row_lo * kTile);
      if (g.needs_mask(kt, n)) mask_tile(s, row_lo, j0, t0, g.window);
      online_softmax(s, row_lo, sc.m.get(), sc.l.get(), sc.alpha.get());
      for (int64_t ii = col_lo; ii < kTile; ++ii) {
        const T a = sc.alpha[ii];
        if (a == T(1)) continue;
        for (int64_t d = 0; d < dim; ++d) o[ii * dim + d] *= a;
      }
      // o[ii] += sum_jj s[jj][ii] * v[jj]
      acc_rows<T, 1, kTile>(s + row_lo * kTile + col_lo, kTile - col_lo, rows, v.at(b, kvh, j0 + row_lo), v.row, dim,
                            o + col_lo * dim, dim);
    }

    T* lse_row = lse + (b * p.heads_q + h) * p.seqlen_q + i0;
    for (int64_t ii = col_lo; ii < kTile; ++ii) {
      const T inv = T(1) / sc.l[ii];
      T* dst = out.at(b, h, i0 + ii);
      for (int64_t d = 0; d < dim; ++d) dst[d] = o[ii * dim + d] * inv;
      lse_row[ii] = sc.m[ii] + std::log(sc.l[ii]);
    }
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------------------------

template <typename T>
void bwd(const SwaParams& p) {
  const Geometry g(p);
  const int64_t dim = p.head_dim;
  const T scale = static_cast<T>(p.scale);
  const Rows<const T> q = rows_of<const T>(p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride);
  const Rows<const T> k = rows_of<const T>(p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride);
  const Rows<const T> v = rows_of<const T>(p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
  const Rows<const T> dout = rows_of<const T>(p.dout, p.do_batch_stride, p.do_row_stride, p.do_head_stride);
  const Rows<T> dq = rows_of<T>(p.dq, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride);
  const Rows<T> dk = rows_of<T>(p.dk, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride);
  const Rows<T> dv = rows_of<T>(p.dv, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride);
  const T* lse = static_cast<const T*>(p.softmax_lse);
  T* dsum = static_cast<T*>(p.softmax_d);
  dout_dot_out(p, dsum);

  struct Scratch {
    Buffer<T> q_t, do_t, s, dp, lse, dsum;  // 2 x [dim, kTile], 2 x [kTile, kTile], 2 x [kTile]
  };
  const auto make = [&] {
    return Scratch{alloc<T>(dim * kTile),   alloc<T>(dim * kTile), alloc<T>(kTile * kTile),
                   alloc<T>(kTile * kTile), alloc<T>(kTile),       alloc<T>(kTile)};
  };
  // Per query tile: scale * q and dout transposed, lse and D of its queries.
  const auto begin = [&](Scratch& sc, int64_t b, int64_t h, int64_t n) {
    const int64_t col_lo = g.query_lo(n), i0 = g.start(n) - g.off;
    pack_transposed(q.at(b, h, i0 + col_lo), q.row, col_lo, dim, scale, sc.q_t.get());
    pack_transposed(dout.at(b, h, i0 + col_lo), dout.row, col_lo, dim, T(1), sc.do_t.get());
    const int64_t row0 = (b * p.heads_q + h) * p.seqlen_q + i0;
    for (int64_t ii = 0; ii < kTile; ++ii) {
      sc.lse[ii] = ii < col_lo ? T(0) : lse[row0 + ii];
      sc.dsum[ii] = ii < col_lo ? T(0) : dsum[row0 + ii];
    }
  };
  const auto pair = [&](Scratch& sc, int64_t b, int64_t kvh, int64_t h, int64_t n, int64_t kt,
                        const ChunkOutputs<T, 1, 2>& outs) {
    const int64_t t0 = g.start(n), col_lo = g.query_lo(n), i0 = t0 - g.off;
    const int64_t j0 = g.start(kt), row_lo = g.key_row_lo(kt, n), rows = kTile - row_lo;
    T* s = sc.s.get();
    T* dp = sc.dp.get();
    const T* k_rows = k.at(b, kvh, j0 + row_lo);
    dot_rows(k_rows, k.row, rows, sc.q_t.get(), dim, s + row_lo * kTile);
    if (g.needs_mask(kt, n)) mask_tile(s, row_lo, j0, t0, g.window);
    dot_rows(v.at(b, kvh, j0 + row_lo), v.row, rows, sc.do_t.get(), dim, dp + row_lo * kTile);
    // s <- P = exp(s - lse), dp <- scale * dS = scale * P * (dP - D) (the scale of dk and dq)
    constexpr int L = kLanes<T>;
    for (int64_t jj = row_lo; jj < kTile; ++jj) {
      for (int w = 0; w < kTileVecs<T>; ++w) {
        const int64_t at = jj * kTile + w * L;
        const Vec<T> pv = vexp(load(s + at) - load(sc.lse.get() + w * L));
        store(s + at, pv);
        store(dp + at, pv * (load(dp + at) - load(sc.dsum.get() + w * L)) * scale);
      }
    }
    const int64_t off_rows = row_lo * kTile + col_lo, depth = kTile - col_lo;
    // dv[jj] += sum_ii P[jj][ii] dout[ii], dk[jj] += sum_ii scale dS[jj][ii] q[ii],
    // dq[ii] += sum_jj scale dS[jj][ii] k[jj]
    acc_rows<T, kTile, 1>(s + off_rows, rows, depth, dout.at(b, h, i0 + col_lo), dout.row, dim,
                          outs.key[1] + row_lo * dim, dim);
    acc_rows<T, kTile, 1>(dp + off_rows, rows, depth, q.at(b, h, i0 + col_lo), q.row, dim,
                          outs.key[0] + row_lo * dim, dim);
    acc_rows<T, 1, kTile>(dp + off_rows, depth, rows, k_rows, k.row, dim, outs.query[0], outs.query_ld[0]);
  };
  key_chunk_pass<T, 1, 2>(p, {dq}, {dk, dv}, static_cast<T*>(p.dq_accum), make, begin, pair);
}

}  // namespace

void swa_fwd(const SwaParams& params) {
  if (is_empty(params) || params.seqlen_q == 0) return;
  dispatch_float(params.dtype, "swa_fwd", [&](auto tag) { fwd<decltype(tag)>(params); });
}

int64_t swa_bwd_workspace_bytes(const SwaParams& params) { return key_chunk_accum_bytes(params, 1); }

void swa_bwd(const SwaParams& params) {
  if (is_empty(params)) return;
  dispatch_float(params.dtype, "swa_bwd", [&](auto tag) { bwd<decltype(tag)>(params); });
}

}  // namespace ttt::cpu
