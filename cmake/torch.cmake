# Locates the torch of the build interpreter (CPU or CUDA build) and exposes it as the INTERFACE target ttt::torch.
# torch's own shared libraries are imported directly instead of find_package(Torch): its CMake config expects a full
# CUDA toolkit (cuBLAS, cuSPARSE, driver stubs), which neither this package nor minimal toolkits have.
execute_process(
  COMMAND ${Python_EXECUTABLE} -c "
import os, torch
root = os.path.dirname(torch.__file__)
print(torch.__version__)
print(torch.version.cuda or '')
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(os.path.join(root, 'include'))
print(os.path.join(root, 'lib'))"
  OUTPUT_VARIABLE _ttt_torch_info OUTPUT_STRIP_TRAILING_WHITESPACE
  RESULT_VARIABLE _ttt_torch_status ERROR_VARIABLE _ttt_torch_error)
if(NOT _ttt_torch_status EQUAL 0)
  message(FATAL_ERROR "ttt_kernels: cannot import torch with ${Python_EXECUTABLE}:\n${_ttt_torch_error}\n"
    "Install torch first and build with `pip install --no-build-isolation .`.")
endif()
string(REPLACE "\n" ";" _ttt_torch_info "${_ttt_torch_info}")
list(GET _ttt_torch_info 0 TTT_TORCH_VERSION)
list(GET _ttt_torch_info 1 TTT_TORCH_CUDA_VERSION)
list(GET _ttt_torch_info 2 TTT_TORCH_CXX11_ABI)
list(GET _ttt_torch_info 3 _ttt_torch_include)
list(GET _ttt_torch_info 4 TTT_TORCH_LIB_DIR)
message(STATUS "ttt_kernels: torch ${TTT_TORCH_VERSION} (CUDA: '${TTT_TORCH_CUDA_VERSION}') at ${TTT_TORCH_LIB_DIR}")

add_library(ttt_torch INTERFACE)
add_library(ttt::torch ALIAS ttt_torch)
target_include_directories(ttt_torch SYSTEM INTERFACE
  ${_ttt_torch_include} ${_ttt_torch_include}/torch/csrc/api/include)
target_compile_definitions(ttt_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=${TTT_TORCH_CXX11_ABI})
foreach(lib c10 torch_cpu torch)
  target_link_libraries(ttt_torch INTERFACE ${TTT_TORCH_LIB_DIR}/lib${lib}.so)
endforeach()
