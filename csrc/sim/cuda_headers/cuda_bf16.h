// The simulator's __nv_bfloat16 (README.md in this directory).
#pragma once
#include "ttt_kernels/sim/fp16.h"
