// The CUDA runtime API as CUTLASS's host code names it (README.md in this directory).
#pragma once
#include "cuda_runtime_api.h"
