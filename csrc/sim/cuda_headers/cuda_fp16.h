// The simulator's __half (README.md in this directory).
#pragma once
#include "ttt_kernels/sim/fp16.h"
