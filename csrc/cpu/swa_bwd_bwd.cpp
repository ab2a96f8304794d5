// Double backward of fused sliding-window attention, CPU kernel (math: include/ttt_kernels/swa_bwd_bwd.h;
// derivation and algorithm: docs/swa_bwd_bwd.md; tiles and micro-kernels: swa_tiles.h).
//
// Pass 1, tasks (batch, query head, query tile) over the key tiles of the tile's windows: recompute the key-major
// tiles s, dP, A and B (5 tile products with every cotangent present) and sum E_i and F_i per query.
// Pass 2, a key_chunk_pass (tasks (batch, kv head, chunk of key tiles), like the backward): recompute the same tiles,
// turn them into P, scale * dS, scale * GS and GdP, and accumulate grad_q and grad_dout (query side), grad_k and
// grad_v (key side): 7 tile products more. Absent cotangents skip their products. Nothing is stored between the
// passes but D, E and F ([batch, heads_q, seqlen_q] each).
#include "ttt_kernels/swa_bwd_bwd.h"

#include "swa_tiles.h"

namespace ttt::cpu {
namespace {

using namespace swa_tiles;

template <typename T>
class BwdBwd {
 public:
  explicit BwdBwd(const SwaBwdBwdParams& p)
      : p_(p),
        g_(p),
        dim_(p.head_dim),
        scale_(static_cast<T>(p.scale)),
        q_(rows_of<const T>(p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride)),
        k_(rows_of<const T>(p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride)),
        v_(rows_of<const T>(p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride)),
        dout_(rows_of<const T>(p.dout, p.do_batch_stride, p.do_row_stride, p.do_head_stride)),
        gdq_(rows_of<const T>(p.gdq, p.gdq_batch_stride, p.gdq_row_stride, p.gdq_head_stride)),
        gdk_(rows_of<const T>(p.gdk, p.gdk_batch_stride, p.gdk_row_stride, p.gdk_head_stride)),
        gdv_(rows_of<const T>(p.gdv, p.gdv_batch_stride, p.gdv_row_stride, p.gdv_head_stride)),
        lse_(static_cast<const T*>(p.softmax_lse)),
        d_(static_cast<T*>(p.softmax_d)),
        e_(static_cast<T*>(p.row_e)),
        f_(static_cast<T*>(p.row_f)) {}

  void run() {
    dout_dot_out(p_, d_);
    row_statistics();
    gradients();
  }

 private:
  // One thread's tiles: panels of a query tile and the key-major score tiles of a (key tile, query tile) pair.
  struct Scratch {
    Buffer<T> q_t, do_t, gdq_t;  // [dim, kTile]: scale * q, dout, scale * gdq of the query tile, transposed
    Buffer<T> lse, d, e, f;      // [kTile] per query
    Buffer<T> s, dp, a, b;       // [kTile, kTile], [key][query]
  };
  Scratch make_scratch() const {
    const auto panel = [&] { return alloc<T>(dim_ * kTile); };
    const auto row = [] { return alloc<T>(kTile); };
    const auto tile = [] { return alloc<T>(kTile * kTile); };
    return Scratch{panel(), panel(), panel(), row(), row(), row(), row(), tile(), tile(), tile(), tile()};
  }

  int64_t stats_row0(int64_t b, int64_t h, int64_t n) const {
    return (b * p_.heads_q + h) * p_.seqlen_q + g_.start(n) - g_.off;
  }

  // Packs query tile n of (b, h) and its statistics (E and F only in pass 2, when they exist). Columns below
  // query_lo(n) are positions before the first query: zero panels, neutral statistics, never read back.
  void begin_query_tile(Scratch& sc, int64_t b, int64_t h, int64_t n, bool with_ef) const {
    const int64_t col_lo = g_.query_lo(n), i0 = g_.start(n) - g_.off;
    pack_transposed(q_.at(b, h, i0 + col_lo), q_.row, col_lo, dim_, scale_, sc.q_t.get());
    pack_transposed(dout_.at(b, h, i0 + col_lo), dout_.row, col_lo, dim_, T(1), sc.do_t.get());
    if (gdq_.base) pack_transposed(gdq_.at(b, h, i0 + col_lo), gdq_.row, col_lo, dim_, scale_, sc.gdq_t.get());
    const int64_t row0 = stats_row0(b, h, n);
    for (int64_t ii = 0; ii < kTile; ++ii) {
      const bool valid = ii >= col_lo;
      sc.lse[ii] = valid ? lse_[row0 + ii] : T(0);
      sc.d[ii] = valid ? d_[row0 + ii] : T(0);
      sc.e[ii] = valid && with_ef ? e_[row0 + ii] : T(0);
      sc.f[ii] = valid && with_ef ? f_[row0 + ii] : T(0);
    }
  }

  // Key rows row_lo .. kTile - 1 of the tiles of key tile kt x query tile n (masked entries of s at -inf):
  //   s = scale k q^T, dp = v dout^T, a = scale (k gdq^T + gdk q^T), b = gdv dout^T.
  void score_tiles(Scratch& sc, int64_t b, int64_t kvh, int64_t n, int64_t kt) const {
    const int64_t j0 = g_.start(kt), row_lo = g_.key_row_lo(kt, n), rows = kTile - row_lo;
    const int64_t at = row_lo * kTile;
    const T* k_rows = k_.at(b, kvh, j0 + row_lo);
    dot_rows(k_rows, k_.row, rows, sc.q_t.get(), dim_, sc.s.get() + at);
    if (g_.needs_mask(kt, n)) mask_tile(sc.s.get(), row_lo, j0, g_.start(n), g_.window);
    dot_rows(v_.at(b, kvh, j0 + row_lo), v_.row, rows, sc.do_t.get(), dim_, sc.dp.get() + at);
    if (gdq_.base) dot_rows(k_rows, k_.row, rows, sc.gdq_t.get(), dim_, sc.a.get() + at);
    if (gdk_.base) {
      const T* gdk_rows = gdk_.at(b, kvh, j0 + row_lo);
      if (gdq_.base) {
        dot_rows<T, true>(gdk_rows, gdk_.row, rows, sc.q_t.get(), dim_, sc.a.get() + at);
      } else {
        dot_rows(gdk_rows, gdk_.row, rows, sc.q_t.get(), dim_, sc.a.get() + at);
      }
    }
    if (!gdq_.base && !gdk_.base) std::fill_n(sc.a.get() + at, rows * kTile, T(0));
    if (gdv_.base) {
      dot_rows(gdv_.at(b, kvh, j0 + row_lo), gdv_.row, rows, sc.do_t.get(), dim_, sc.b.get() + at);
    } else {
      std::fill_n(sc.b.get() + at, rows * kTile, T(0));
    }
  }

  // Pass 1: E_i = sum_j P A, F_i = sum_j (dS A + P B) - E_i D_i, the sums over the key tiles of query tile n's
  // windows in vector lanes.
  void row_statistics() {
    constexpr int L = kLanes<T>, NV = kTileVecs<T>;
    const int64_t qtiles = g_.ntiles - g_.first_query_tile;
    for_each_task(p_, p_.batch * p_.heads_q * qtiles, [&] { return make_scratch(); }, [&](int64_t task, Scratch& sc) {
      const int64_t n = g_.first_query_tile + task % qtiles;
      const int64_t b = task / qtiles / p_.heads_q, h = task / qtiles % p_.heads_q;
      const int64_t kvh = h / (p_.heads_q / p_.heads_kv);
      begin_query_tile(sc, b, h, n, /*with_ef=*/false);
      Vec<T> e_sum[NV] = {}, f_sum[NV] = {};
      for (int64_t kt = g_.first_key_tile(n); kt <= n; ++kt) {
        score_tiles(sc, b, kvh, n, kt);
        for (int64_t jj = g_.key_row_lo(kt, n); jj < kTile; ++jj) {
          for (int w = 0; w < NV; ++w) {
            const int64_t at = jj * kTile + w * L;
            const Vec<T> pv = vexp(load(sc.s.get() + at) - load(sc.lse.get() + w * L));
            const Vec<T> ds = pv * (load(sc.dp.get() + at) - load(sc.d.get() + w * L));
            const Vec<T> av = load(sc.a.get() + at);
            e_sum[w] += pv * av;
            f_sum[w] += ds * av + pv * load(sc.b.get() + at);
          }
        }
      }
      const int64_t row0 = stats_row0(b, h, n);
      for (int64_t ii = g_.query_lo(n); ii < kTile; ++ii) {
        const T e = e_sum[ii / L][ii % L];
        e_[row0 + ii] = e;
        f_[row0 + ii] = f_sum[ii / L][ii % L] - e * sc.d[ii];
      }
    });
  }

  // Pass 2: the four gradients.
  void gradients() {
    const Rows<T> grad_q = rows_of<T>(p_.grad_q, p_.gq_batch_stride, p_.gq_row_stride, p_.gq_head_stride);
    const Rows<T> grad_dout = rows_of<T>(p_.grad_dout, p_.gdo_batch_stride, p_.gdo_row_stride, p_.gdo_head_stride);
    const Rows<T> grad_k = rows_of<T>(p_.grad_k, p_.gk_batch_stride, p_.gk_row_stride, p_.gk_head_stride);
    const Rows<T> grad_v = rows_of<T>(p_.grad_v, p_.gv_batch_stride, p_.gv_row_stride, p_.gv_head_stride);
    const auto begin = [&](Scratch& sc, int64_t b, int64_t h, int64_t n) {
      begin_query_tile(sc, b, h, n, /*with_ef=*/true);
    };
    const auto pair = [&](Scratch& sc, int64_t b, int64_t kvh, int64_t h, int64_t n, int64_t kt,
                          const ChunkOutputs<T, 2, 2>& outs) {
      score_tiles(sc, b, kvh, n, kt);
      const int64_t row_lo = g_.key_row_lo(kt, n), rows = kTile - row_lo, j0 = g_.start(kt) + row_lo;
      cotangent_tiles(sc, row_lo);
      const int64_t col_lo = g_.query_lo(n), i0 = g_.start(n) - g_.off + col_lo, depth = kTile - col_lo;
      const int64_t tile_at = row_lo * kTile + col_lo, key_at = row_lo * dim_;
      const T *p_t = sc.s.get() + tile_at, *ds_t = sc.dp.get() + tile_at;
      const T *gs_t = sc.a.get() + tile_at, *gdp_t = sc.b.get() + tile_at;
      // Query side: out[ii] += sum_jj tile[jj][ii] rows[jj].
      const auto to_query = [&](const T* tile, const Rows<const T>& rows_in, int o) {
        acc_rows<T, 1, kTile>(tile, depth, rows, rows_in.at(b, kvh, j0), rows_in.row, dim_, outs.query[o],
                              outs.query_ld[o]);
      };
      // Key side: out[jj] += sum_ii tile[jj][ii] rows[ii].
      const auto to_key = [&](const T* tile, const Rows<const T>& rows_in, int o) {
        acc_rows<T, kTile, 1>(tile, rows, depth, rows_in.at(b, h, i0), rows_in.row, dim_, outs.key[o] + key_at, dim_);
      };
      to_query(gs_t, k_, 0);  // grad_q = scale (GS k + dS gdk)
      if (gdk_.base) to_query(ds_t, gdk_, 0);
      to_query(gdp_t, v_, 1);  // grad_dout = GdP v + P gdv
      if (gdv_.base) to_query(p_t, gdv_, 1);
      to_key(gs_t, q_, 0);  // grad_k = scale (GS^T q + dS^T gdq)
      if (gdq_.base) to_key(ds_t, gdq_, 0);
      to_key(gdp_t, dout_, 1);  // grad_v = GdP^T dout
    };
    key_chunk_pass<T, 2, 2>(p_, {grad_q, grad_dout}, {grad_k, grad_v}, static_cast<T*>(p_.dq_accum),
                            [&] { return make_scratch(); }, begin, pair);
  }

  // Key rows row_lo .. kTile - 1 of the score tiles, in place: s <- P, dp <- scale * dS, a <- scale * GS, b <- GdP,
  // with x = dP - D: dS = P x, GdP = P (A - E), GS = P (A x - E dP + B - F).
  void cotangent_tiles(Scratch& sc, int64_t row_lo) const {
    constexpr int L = kLanes<T>;
    for (int64_t jj = row_lo; jj < kTile; ++jj) {
      for (int w = 0; w < kTileVecs<T>; ++w) {
        const int64_t at = jj * kTile + w * L;
        const Vec<T> e = load(sc.e.get() + w * L);
        const Vec<T> pv = vexp(load(sc.s.get() + at) - load(sc.lse.get() + w * L));
        const Vec<T> dp = load(sc.dp.get() + at), av = load(sc.a.get() + at);
        const Vec<T> x = dp - load(sc.d.get() + w * L);
        store(sc.s.get() + at, pv);
        store(sc.dp.get() + at, pv * x * scale_);
        store(sc.a.get() + at, pv * (av * x - e * dp + load(sc.b.get() + at) - load(sc.f.get() + w * L)) * scale_);
        store(sc.b.get() + at, pv * (av - e));
      }
    }
  }

  const SwaBwdBwdParams& p_;
  const Geometry g_;
  const int64_t dim_;
  const T scale_;
  const Rows<const T> q_, k_, v_, dout_, gdq_, gdk_, gdv_;  // gd*.base is nullptr when the cotangent is absent
  const T* lse_;
  T *d_, *e_, *f_;  // [batch, heads_q, seqlen_q]
};

}  // namespace

int64_t swa_bwd_bwd_workspace_bytes(const SwaBwdBwdParams& params) { return key_chunk_accum_bytes(params, 2); }

void swa_bwd_bwd(const SwaBwdBwdParams& params) {
  if (is_empty(params)) return;
  dispatch_float(params.dtype, "swa_bwd_bwd", [&](auto tag) { BwdBwd<decltype(tag)>(params).run(); });
}

}  // namespace ttt::cpu
