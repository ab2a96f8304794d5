// The bfloat16 CUTLASS GEMMs of the dynamic MLP (csrc/cuda/gemm_cutlass.cuh), for the GPU and for the simulator.
#include "gemm_cutlass.cuh"

namespace ttt::TTT_CUDA_NS::mlp_cutlass {
template void swiglu_rc<__nv_bfloat16>(const GemmParams&, void*);
template void store_r<__nv_bfloat16, false>(const GemmParams&, void*);
template void store_r<__nv_bfloat16, true>(const GemmParams&, void*);
template void accumulate_cr<__nv_bfloat16>(const GemmParams&, void*);
}  // namespace ttt::TTT_CUDA_NS::mlp_cutlass
