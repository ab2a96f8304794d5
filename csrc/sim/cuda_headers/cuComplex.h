// cuComplex's types, for cutlass/complex.h's conversions (README.md in this directory).
#pragma once
#include "ttt_kernels/sim/vector_types.h"

typedef float2 cuFloatComplex;
typedef double2 cuDoubleComplex;

inline float cuCrealf(cuFloatComplex z) { return z.x; }
inline float cuCimagf(cuFloatComplex z) { return z.y; }
inline double cuCreal(cuDoubleComplex z) { return z.x; }
inline double cuCimag(cuDoubleComplex z) { return z.y; }
inline cuFloatComplex make_cuFloatComplex(float re, float im) { return {re, im}; }
inline cuDoubleComplex make_cuDoubleComplex(double re, double im) { return {re, im}; }
