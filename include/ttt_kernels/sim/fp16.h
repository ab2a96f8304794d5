// 16-bit floating-point types of the CUDA simulator: __half, __nv_bfloat16 and their pairs __half2, __nv_bfloat162,
// with the conversions and the device-side arithmetic of cuda_fp16.h / cuda_bf16.h. Included by sim/runtime.h.
//
// Storage is the IEEE binary16 / bfloat16 bit pattern in an unsigned short, so the types are layout-compatible with
// torch's at::Half / at::BFloat16 (and with CUDA's): a kernel reads tensor memory through them directly.
//
// Rounding: float -> 16 bit is round-to-nearest-even with overflow to infinity and NaN -> canonical NaN 0x7fff, as
// cvt.rn.{f16,bf16}.f32. double and integer inputs round once (through fp32 rounded to odd, which has enough extra
// bits to make the second rounding exact). Arithmetic (+ - * /) computes in fp32 and rounds once to 16 bits: fp32
// carries at least 2p + 2 significand bits for both formats (p = 8, 11), so this equals the correctly rounded result
// of the hardware instructions. fma rounds twice (fp32 fma, then to 16 bits) and may differ from hfma in the last
// bit on rare halfway cases.
//
// Differences from the CUDA headers, all compile-time: the arithmetic operators and __h* functions are templates,
// so mixed expressions such as `bf16 + float` (ambiguous with nvcc) compile here and compute in float; the integer
// conversion operators (operator int() etc.) are not provided.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "ttt_kernels/sim/vector_types.h"

namespace ttt::sim::fp16 {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// fp32 nearest to `d` with round-to-odd: rounding this value once more to <= 22 significand bits gives the correctly
// rounded result of `d`.
inline float float_round_to_odd(double d) {
  float f = static_cast<float>(d);
  if (std::isfinite(f) && static_cast<double>(f) != d) {
    uint32_t b = float_bits(f);
    if (std::fabs(static_cast<double>(f)) > std::fabs(d)) --b;  // truncate: one ulp toward zero
    f = bits_float(b | 1u);
  }
  return f;
}

struct BFloat16Codec {
  static uint16_t from_float(float f) {
    uint32_t x = float_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    x += 0x7fffu + ((x >> 16) & 1u);  // round to nearest, ties to even; carries into the exponent (up to inf)
    return static_cast<uint16_t>(x >> 16);
  }
  static float to_float(uint16_t h) { return bits_float(uint32_t{h} << 16); }
};

struct HalfCodec {
  static uint16_t from_float(float f) {
    const uint32_t bits = float_bits(f);
    const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
    const uint32_t x = bits & 0x7fffffffu;
    if (x > 0x7f800000u) return 0x7fffu;
    if (x >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 = 65504 + half an ulp: rounds to infinity
    if (x >= 0x38800000u) {                        // normal half (>= 2^-14): rebias the exponent 127 -> 15
      const uint32_t r = x - (112u << 23);
      return sign | static_cast<uint16_t>((r + 0xfffu + ((r >> 13) & 1u)) >> 13);
    }
    // Subnormal half: a multiple of 2^-24; scaling by 2^24 is exact and nearbyint rounds to nearest even.
    return sign | static_cast<uint16_t>(std::nearbyint(bits_float(x) * 16777216.0f));
  }
  static float to_float(uint16_t h) {
    const uint32_t sign = uint32_t{h & 0x8000u} << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t mant = h & 0x3ffu;
    if (exp == 0x1fu) return bits_float(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
      const float v = static_cast<float>(mant) * (1.0f / 16777216.0f);
      return sign ? -v : v;
    }
    return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
  }
};

// Storage and conversions shared by __half and __nv_bfloat16. The bits are public (protected in CUDA) so that code
// may memcpy to and from the types without -Wclass-memaccess; use __half_as_ushort & co. in kernels.
template <class Codec, class Raw>
struct Float16Base {
  unsigned short __x;

  Float16Base() = default;
  constexpr Float16Base(const Raw& raw) : __x(raw.x) {}
  Float16Base(float f) : __x(Codec::from_float(f)) {}
  Float16Base(double d) : __x(Codec::from_float(float_round_to_odd(d))) {}
  Float16Base(short v) : Float16Base(static_cast<double>(v)) {}
  Float16Base(unsigned short v) : Float16Base(static_cast<double>(v)) {}
  Float16Base(int v) : Float16Base(static_cast<double>(v)) {}
  Float16Base(unsigned int v) : Float16Base(static_cast<double>(v)) {}
  Float16Base(long long v) : Float16Base(static_cast<double>(v)) {}
  Float16Base(unsigned long long v) : Float16Base(static_cast<double>(v)) {}
  operator float() const { return Codec::to_float(__x); }
  operator Raw() const { return Raw{__x}; }
};

}  // namespace ttt::sim::fp16

struct __half_raw {
  unsigned short x;
};
struct __nv_bfloat16_raw {
  unsigned short x;
};

struct alignas(2) __half : ttt::sim::fp16::Float16Base<ttt::sim::fp16::HalfCodec, __half_raw> {
  using Float16Base::Float16Base;
};
struct alignas(2) __nv_bfloat16 : ttt::sim::fp16::Float16Base<ttt::sim::fp16::BFloat16Codec, __nv_bfloat16_raw> {
  using Float16Base::Float16Base;
};

struct alignas(4) __half2 {
  __half x;
  __half y;
  __half2() = default;
  constexpr __half2(const __half& a, const __half& b) : x(a), y(b) {}
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x;
  __nv_bfloat16 y;
  __nv_bfloat162() = default;
  constexpr __nv_bfloat162(const __nv_bfloat16& a, const __nv_bfloat16& b) : x(a), y(b) {}
};

using half = __half;
using half2 = __half2;
using nv_bfloat16 = __nv_bfloat16;
using nv_bfloat162 = __nv_bfloat162;

static_assert(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2 && sizeof(__half2) == 4 &&
              sizeof(__nv_bfloat162) == 4);
static_assert(std::is_trivially_copyable_v<__half> && std::is_trivially_default_constructible_v<__half> &&
              std::is_trivially_copyable_v<__nv_bfloat162> && std::is_standard_layout_v<__nv_bfloat16>);

namespace ttt::sim::fp16 {
template <class T>
inline constexpr bool is_scalar_v = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;
template <class T>
inline constexpr bool is_pair_v = std::is_same_v<T, __half2> || std::is_same_v<T, __nv_bfloat162>;
template <class T>
using EnableScalar = std::enable_if_t<is_scalar_v<T>, T>;
template <class T>
using EnableScalarBool = std::enable_if_t<is_scalar_v<T>, bool>;
template <class T>
using EnablePair = std::enable_if_t<is_pair_v<T>, T>;
template <class T>
using EnablePairBool = std::enable_if_t<is_pair_v<T>, bool>;

template <class T>
inline uint16_t bits_of(T v) {
  uint16_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}
template <class T>
inline T from_bits(uint16_t b) {
  T v;
  std::memcpy(&v, &b, sizeof b);
  return v;
}
template <class T>
inline T canonical_nan() {
  return from_bits<T>(0x7fffu);
}
}  // namespace ttt::sim::fp16

// ---- Conversions ---------------------------------------------------------------------------------------------------

inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half __double2half(double d) { return __half(d); }
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __double2bfloat16(double d) { return __nv_bfloat16(d); }
inline float __bfloat162float(__nv_bfloat16 h) { return static_cast<float>(h); }

inline unsigned short __half_as_ushort(__half h) { return ttt::sim::fp16::bits_of(h); }
inline short __half_as_short(__half h) { return static_cast<short>(ttt::sim::fp16::bits_of(h)); }
inline __half __ushort_as_half(unsigned short b) { return ttt::sim::fp16::from_bits<__half>(b); }
inline __half __short_as_half(short b) { return ttt::sim::fp16::from_bits<__half>(static_cast<uint16_t>(b)); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return ttt::sim::fp16::bits_of(h); }
inline short __bfloat16_as_short(__nv_bfloat16 h) { return static_cast<short>(ttt::sim::fp16::bits_of(h)); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short b) { return ttt::sim::fp16::from_bits<__nv_bfloat16>(b); }
inline __nv_bfloat16 __short_as_bfloat16(short b) {
  return ttt::sim::fp16::from_bits<__nv_bfloat16>(static_cast<uint16_t>(b));
}

inline __half2 __floats2half2_rn(float lo, float hi) { return __half2(__half(lo), __half(hi)); }
inline __half2 __float2half2_rn(float f) { return __half2(__half(f), __half(f)); }
inline __half2 __halves2half2(__half lo, __half hi) { return __half2(lo, hi); }
inline __half2 __half2half2(__half h) { return __half2(h, h); }
inline __half __low2half(__half2 p) { return p.x; }
inline __half __high2half(__half2 p) { return p.y; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return __nv_bfloat162(__nv_bfloat16(lo), __nv_bfloat16(hi));
}
inline __nv_bfloat162 __float2bfloat162_rn(float f) { return __nv_bfloat162(__nv_bfloat16(f), __nv_bfloat16(f)); }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 lo, __nv_bfloat16 hi) { return __nv_bfloat162(lo, hi); }
inline __nv_bfloat162 __bfloat162bfloat162(__nv_bfloat16 h) { return __nv_bfloat162(h, h); }
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 p) { return p.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 p) { return p.y; }

template <class P>
inline std::enable_if_t<ttt::sim::fp16::is_pair_v<P>, float> __low2float(P p) {
  return static_cast<float>(p.x);
}
template <class P>
inline std::enable_if_t<ttt::sim::fp16::is_pair_v<P>, float> __high2float(P p) {
  return static_cast<float>(p.y);
}

// ---- Scalar arithmetic (cuda_fp16.h / cuda_bf16.h __h* functions and operators) ----------------------------------
// One template per function serves __half and __nv_bfloat16 (EnableScalar), or __half2 and __nv_bfloat162
// (EnablePair); the pair functions apply the scalar ones to both halves.

#define TTT_SIM_F16_ARITH(fn, op)                                                  \
  template <class T>                                                               \
  inline ttt::sim::fp16::EnableScalar<T> fn(T a, T b) {                            \
    return T(static_cast<float>(a) op static_cast<float>(b));                      \
  }
TTT_SIM_F16_ARITH(__hadd, +)
TTT_SIM_F16_ARITH(__hsub, -)
TTT_SIM_F16_ARITH(__hmul, *)
TTT_SIM_F16_ARITH(__hdiv, /)
#undef TTT_SIM_F16_ARITH

// Ordered comparisons (false when either is NaN); __hneu is the unordered "not equal" behind operator!=.
#define TTT_SIM_F16_COMPARE(fn, op)                                                \
  template <class T>                                                               \
  inline ttt::sim::fp16::EnableScalarBool<T> fn(T a, T b) {                        \
    return static_cast<float>(a) op static_cast<float>(b);                         \
  }
TTT_SIM_F16_COMPARE(__heq, ==)
TTT_SIM_F16_COMPARE(__hlt, <)
TTT_SIM_F16_COMPARE(__hle, <=)
TTT_SIM_F16_COMPARE(__hgt, >)
TTT_SIM_F16_COMPARE(__hge, >=)
#undef TTT_SIM_F16_COMPARE
template <class T>
inline ttt::sim::fp16::EnableScalarBool<T> __hne(T a, T b) {
  return __hlt(a, b) || __hgt(a, b);
}
template <class T>
inline ttt::sim::fp16::EnableScalarBool<T> __hneu(T a, T b) {
  return !__heq(a, b);
}

template <class T>
inline ttt::sim::fp16::EnableScalar<T> __hfma(T a, T b, T c) {
  return T(std::fma(static_cast<float>(a), static_cast<float>(b), static_cast<float>(c)));
}
template <class T>
inline ttt::sim::fp16::EnableScalar<T> __hneg(T a) {
  return ttt::sim::fp16::from_bits<T>(static_cast<uint16_t>(ttt::sim::fp16::bits_of(a) ^ 0x8000u));
}
template <class T>
inline ttt::sim::fp16::EnableScalar<T> __habs(T a) {
  return ttt::sim::fp16::from_bits<T>(static_cast<uint16_t>(ttt::sim::fp16::bits_of(a) & 0x7fffu));
}
template <class T>
inline ttt::sim::fp16::EnableScalarBool<T> __hisnan(T a) {
  return std::isnan(static_cast<float>(a));
}
template <class T>
inline ttt::sim::fp16::EnableScalarBool<T> __hisinf(T a) {
  return std::isinf(static_cast<float>(a));
}
// max/min: a NaN operand yields the other operand; two NaNs yield the canonical NaN.
template <class T>
inline ttt::sim::fp16::EnableScalar<T> __hmax(T a, T b) {
  if (__hisnan(a) && __hisnan(b)) return ttt::sim::fp16::canonical_nan<T>();
  return T(std::fmax(static_cast<float>(a), static_cast<float>(b)));
}
template <class T>
inline ttt::sim::fp16::EnableScalar<T> __hmin(T a, T b) {
  if (__hisnan(a) && __hisnan(b)) return ttt::sim::fp16::canonical_nan<T>();
  return T(std::fmin(static_cast<float>(a), static_cast<float>(b)));
}

// ---- Pair arithmetic (__half2 / __nv_bfloat162), element-wise ---------------------------------------------------

#define TTT_SIM_F16X2_MAP(fn2, fn)                                                 \
  template <class P>                                                               \
  inline ttt::sim::fp16::EnablePair<P> fn2(P a, P b) {                             \
    return P(fn(a.x, b.x), fn(a.y, b.y));                                          \
  }
TTT_SIM_F16X2_MAP(__hadd2, __hadd)
TTT_SIM_F16X2_MAP(__hsub2, __hsub)
TTT_SIM_F16X2_MAP(__hmul2, __hmul)
TTT_SIM_F16X2_MAP(__h2div, __hdiv)
TTT_SIM_F16X2_MAP(__hmax2, __hmax)
TTT_SIM_F16X2_MAP(__hmin2, __hmin)
#undef TTT_SIM_F16X2_MAP
// Comparisons of pairs (and the pair operators ==, != ...) are true when both halves compare true.
#define TTT_SIM_F16X2_COMPARE(fn2, fn)                                             \
  template <class P>                                                               \
  inline ttt::sim::fp16::EnablePairBool<P> fn2(P a, P b) {                         \
    return fn(a.x, b.x) && fn(a.y, b.y);                                           \
  }
TTT_SIM_F16X2_COMPARE(__hbeq2, __heq)
TTT_SIM_F16X2_COMPARE(__hbneu2, __hneu)
TTT_SIM_F16X2_COMPARE(__hblt2, __hlt)
TTT_SIM_F16X2_COMPARE(__hble2, __hle)
TTT_SIM_F16X2_COMPARE(__hbgt2, __hgt)
TTT_SIM_F16X2_COMPARE(__hbge2, __hge)
#undef TTT_SIM_F16X2_COMPARE
template <class P>
inline ttt::sim::fp16::EnablePair<P> __hfma2(P a, P b, P c) {
  return P(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y));
}
template <class P>
inline ttt::sim::fp16::EnablePair<P> __hneg2(P a) {
  return P(__hneg(a.x), __hneg(a.y));
}
template <class P>
inline ttt::sim::fp16::EnablePair<P> __habs2(P a) {
  return P(__habs(a.x), __habs(a.y));
}

// ---- Operators ------------------------------------------------------------------------------------------------------
// For Enable = EnableScalar / EnablePair: arithmetic, compound assignment, unary and comparison operators through
// the scalar / pair functions above.

#define TTT_SIM_F16_OPERATORS(Enable, EnableBool, add, sub, mul, div, neg, eq, ne, lt, le, gt, ge)            \
  template <class T>                                                                                          \
  inline Enable<T> operator+(const T& a, const T& b) {                                                        \
    return add(a, b);                                                                                         \
  }                                                                                                           \
  template <class T>                                                                                          \
  inline Enable<T> operator-(const T& a, const T& b) {                                                        \
    return sub(a, b);                                                                                         \
  }                                                                                                           \
  template <class T>                                                                                          \
  inline Enable<T> operator*(const T& a, const T& b) {                                                        \
    return mul(a, b);                                                                                         \
  }                                                                                                           \
  template <class T>                                                                                          \
  inline Enable<T> operator/(const T& a, const T& b) {                                                        \
    return div(a, b);                                                                                         \
  }                                                                                                           \
  template <class T>                                                                                          \
  inline Enable<T>& operator+=(T& a, const T& b) {                                                            \
    return a = add(a, b);                                                                                     \
  }                                                                                                           \
  template <class T>                                                                                          \
  inline Enable<T>& operator-=(T& a, const T& b) {                                                            \
    return a = sub(a, b);                                                                                     \
  }                                                                                                           \
  template <class T>                                                                                          \
  inline Enable<T>& operator*=(T& a, const T& b) {                                                            \
    return a = mul(a, b);                                                                                     \
  }                                                                                                           \
  template <class T>                                                                                          \
  inline Enable<T>& operator/=(T& a, const T& b) {                                                            \
    return a = div(a, b);                                                                                     \
  }                                                                                                           \
  template <class T>                                                                                          \
  inline Enable<T> operator+(const T& a) {                                                                    \
    return a;                                                                                                 \
  }                                                                                                           \
  template <class T>                                                                                          \
  inline Enable<T> operator-(const T& a) {                                                                    \
    return neg(a);                                                                                            \
  }                                                                                                           \
  template <class T>                                                                                          \
  inline EnableBool<T> operator==(const T& a, const T& b) {                                                   \
    return eq(a, b);                                                                                          \
  }                                                                                                           \
  template <class T>                                                                                          \
  inline EnableBool<T> operator!=(const T& a, const T& b) {                                                   \
    return ne(a, b);                                                                                          \
  }                                                                                                           \
  template <class T>                                                                                          \
  inline EnableBool<T> operator<(const T& a, const T& b) {                                                    \
    return lt(a, b);                                                                                          \
  }                                                                                                           \
  template <class T>                                                                                          \
  inline EnableBool<T> operator<=(const T& a, const T& b) {                                                   \
    return le(a, b);                                                                                          \
  }                                                                                                           \
  template <class T>                                                                                          \
  inline EnableBool<T> operator>(const T& a, const T& b) {                                                    \
    return gt(a, b);                                                                                          \
  }                                                                                                           \
  template <class T>                                                                                          \
  inline EnableBool<T> operator>=(const T& a, const T& b) {                                                   \
    return ge(a, b);                                                                                          \
  }
TTT_SIM_F16_OPERATORS(ttt::sim::fp16::EnableScalar, ttt::sim::fp16::EnableScalarBool, __hadd, __hsub, __hmul, __hdiv,
                      __hneg, __heq, __hneu, __hlt, __hle, __hgt, __hge)
TTT_SIM_F16_OPERATORS(ttt::sim::fp16::EnablePair, ttt::sim::fp16::EnablePairBool, __hadd2, __hsub2, __hmul2, __h2div,
                      __hneg2, __hbeq2, __hbneu2, __hblt2, __hble2, __hbgt2, __hbge2)
#undef TTT_SIM_F16_OPERATORS

// ++ / -- on scalars add or subtract 1.
template <class T>
inline ttt::sim::fp16::EnableScalar<T>& operator++(T& a) {
  return a = __hadd(a, T(1.0f));
}
template <class T>
inline ttt::sim::fp16::EnableScalar<T>& operator--(T& a) {
  return a = __hsub(a, T(1.0f));
}
template <class T>
inline ttt::sim::fp16::EnableScalar<T> operator++(T& a, int) {
  const T old = a;
  a = __hadd(a, T(1.0f));
  return old;
}
template <class T>
inline ttt::sim::fp16::EnableScalar<T> operator--(T& a, int) {
  const T old = a;
  a = __hsub(a, T(1.0f));
  return old;
}

// ---- Pairs <-> float2 ----------------------------------------------------------------------------------------------

inline float2 __half22float2(__half2 p) { return make_float2(static_cast<float>(p.x), static_cast<float>(p.y)); }
inline __half2 __float22half2_rn(float2 f) { return __floats2half2_rn(f.x, f.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 p) {
  return make_float2(static_cast<float>(p.x), static_cast<float>(p.y));
}
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return __floats2bfloat162_rn(f.x, f.y); }
