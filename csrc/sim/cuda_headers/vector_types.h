// The simulator's vector types and dim3 (README.md in this directory).
#pragma once
#include "ttt_kernels/sim/vector_types.h"
