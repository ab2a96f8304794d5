// The CUDA driver declarations CUTLASS's host code names (README.md in this directory); every call fails.
#pragma once

#include <cstddef>

typedef unsigned long long CUdeviceptr;
typedef struct CUstream_st* CUstream;
enum CUresult { CUDA_SUCCESS = 0, CUDA_ERROR_NOT_SUPPORTED = 801 };

inline CUresult cuGetErrorString(CUresult, const char** message) {
  *message = "not supported by the CUDA simulator";
  return CUDA_SUCCESS;
}
inline CUresult cuMemsetD8Async(CUdeviceptr, unsigned char, std::size_t, CUstream) {
  return CUDA_ERROR_NOT_SUPPORTED;
}
inline CUresult cuMemsetD16Async(CUdeviceptr, unsigned short, std::size_t, CUstream) {
  return CUDA_ERROR_NOT_SUPPORTED;
}
inline CUresult cuMemsetD32Async(CUdeviceptr, unsigned int, std::size_t, CUstream) {
  return CUDA_ERROR_NOT_SUPPORTED;
}
