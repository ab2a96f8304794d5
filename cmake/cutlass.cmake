# The CUTLASS/CuTe headers (TTT_CUTLASS_ROOT: the nvidia-cutlass wheel's source/ directory) and, for the
# simulator's host-compiler build of the CUTLASS kernels, the CCCL headers (TTT_CCCL_INCLUDE: libcu++, which
# CUTLASS includes as <cuda/std/...>; nvcc brings its own). Both come from Python wheels of the build interpreter's
# environment (no git hosts needed): nvidia-cutlass, and nvidia-cuda-cccl or a CUDA toolkit's include/cccl.
# Either variable is empty when its headers are not found.
execute_process(
  COMMAND ${Python_EXECUTABLE} -c
    "import importlib.util, os; s = importlib.util.find_spec('cutlass_library'); print(os.path.join(s.submodule_search_locations[0], 'source') if s else '')"
  OUTPUT_VARIABLE TTT_CUTLASS_ROOT OUTPUT_STRIP_TRAILING_WHITESPACE)
if(TTT_CUTLASS_ROOT AND NOT EXISTS ${TTT_CUTLASS_ROOT}/include/cute/tensor.hpp)
  set(TTT_CUTLASS_ROOT "")
endif()

execute_process(
  COMMAND ${Python_EXECUTABLE} -c
    "import glob, importlib.util, os; s = importlib.util.find_spec('nvidia'); found = [d for root in (s.submodule_search_locations if s else []) for d in sorted(glob.glob(os.path.join(root, '*', 'include', 'cccl'))) if os.path.exists(os.path.join(d, 'cuda', 'std', 'utility'))]; print(found[0] if found else '')"
  OUTPUT_VARIABLE TTT_CCCL_INCLUDE OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT TTT_CCCL_INCLUDE)
  find_package(CUDAToolkit QUIET)
  foreach(dir ${CUDAToolkit_INCLUDE_DIRS})
    if(NOT TTT_CCCL_INCLUDE AND EXISTS ${dir}/cccl/cuda/std/utility)
      set(TTT_CCCL_INCLUDE ${dir}/cccl)
    endif()
  endforeach()
endif()
