// The float16 CUTLASS GEMMs of the dynamic MLP (csrc/cuda/gemm_cutlass.cuh). nvcc only: CUTLASS kernels do not
// run in the CUDA simulator, whose build of this file is empty (its mlp_gemm is a host stand-in, gemm.cu).
#if defined(__CUDACC__)
#include "gemm_cutlass.cuh"

namespace ttt::cuda::mlp_cutlass {
template void swiglu_rc<__half>(const GemmParams&, void*);
template void store_r<__half, false>(const GemmParams&, void*);
template void store_r<__half, true>(const GemmParams&, void*);
template void accumulate_cr<__half>(const GemmParams&, void*);
}  // namespace ttt::cuda::mlp_cutlass
#endif
