// The CUDA runtime declarations CUTLASS's host code names (README.md in this directory). No function here has a
// device behind it: memory operations fail, device queries describe one SM.
#pragma once

#include <cstddef>

typedef struct CUstream_st* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorNotSupported = 801 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };

inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t error) {
  return error == cudaSuccess ? "no error" : "not supported by the CUDA simulator";
}
inline cudaError_t cudaMemsetAsync(void*, int, std::size_t, cudaStream_t = nullptr) { return cudaErrorNotSupported; }
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int) {
  *value = 1;
  return cudaSuccess;
}
