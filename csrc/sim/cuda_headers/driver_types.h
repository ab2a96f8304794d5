// CUDA runtime types (README.md in this directory).
#pragma once
#include "cuda_runtime_api.h"
