// CUDA's built-in vector types (vector_types.h) for the simulator: int2, float4, uint3, dim3, ... with CUDA's sizes
// and alignments (a float4 is 16-byte aligned, a float3 is not), and the make_<type>() constructors.
#pragma once

#include <algorithm>
#include <cstddef>

#define TTT_SIM_VECTOR_TYPES(T, name)                                                                        \
  struct alignas(sizeof(T)) name##1 {                                                                        \
    T x;                                                                                                     \
  };                                                                                                         \
  struct alignas(2 * sizeof(T)) name##2 {                                                                    \
    T x, y;                                                                                                  \
  };                                                                                                         \
  struct name##3 {                                                                                           \
    T x, y, z;                                                                                               \
  };                                                                                                         \
  struct alignas(std::min<std::size_t>(4 * sizeof(T), 16)) name##4 {                                         \
    T x, y, z, w;                                                                                            \
  };                                                                                                         \
  constexpr name##1 make_##name##1(T x) { return name##1{x}; }                                              \
  constexpr name##2 make_##name##2(T x, T y) { return name##2{x, y}; }                                      \
  constexpr name##3 make_##name##3(T x, T y, T z) { return name##3{x, y, z}; }                              \
  constexpr name##4 make_##name##4(T x, T y, T z, T w) { return name##4{x, y, z, w}; }

TTT_SIM_VECTOR_TYPES(signed char, char)
TTT_SIM_VECTOR_TYPES(unsigned char, uchar)
TTT_SIM_VECTOR_TYPES(short, short)
TTT_SIM_VECTOR_TYPES(unsigned short, ushort)
TTT_SIM_VECTOR_TYPES(int, int)
TTT_SIM_VECTOR_TYPES(unsigned int, uint)
TTT_SIM_VECTOR_TYPES(long, long)
TTT_SIM_VECTOR_TYPES(unsigned long, ulong)
TTT_SIM_VECTOR_TYPES(long long, longlong)
TTT_SIM_VECTOR_TYPES(unsigned long long, ulonglong)
TTT_SIM_VECTOR_TYPES(float, float)
TTT_SIM_VECTOR_TYPES(double, double)

#undef TTT_SIM_VECTOR_TYPES

static_assert(sizeof(float4) == 16 && alignof(float4) == 16 && alignof(float3) == 4 && alignof(int2) == 8 &&
              alignof(double2) == 16 && alignof(short4) == 8);

// Launch dimensions; unspecified components are 1.
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};
