# CUDA support. Sets TTT_KERNELS_WITH_CUDA_KERNELS (compile the .cu kernels with nvcc) and
# TTT_KERNELS_WITH_CUDA_GLUE (register CUDA dispatch: needs a CUDA build of torch), and defines
# ttt_add_cuda_kernels(target sources [include dirs...]), which compiles kernels for every arch of
# TTT_KERNELS_CUDA_ARCHS and records nvcc's per-kernel resource report in <build>/<target>/cuda_resources.json
# (its path in <target>_CUDA_RESOURCES_JSON).
set(TTT_KERNELS_WITH_CUDA_KERNELS OFF)
set(TTT_KERNELS_WITH_CUDA_GLUE OFF)
set(TTT_KERNELS_CUDA_STATUS "disabled (TTT_KERNELS_CUDA=OFF)")

if(TTT_KERNELS_CUDA STREQUAL "AUTO" AND NOT TTT_TORCH_CUDA_VERSION)
  # A CPU build of torch cannot dispatch to CUDA kernels: compiling them (minutes) would only serve the resource
  # report. TTT_KERNELS_CUDA=ON compiles them anyway (CI does, to check every kernel compiles).
  set(TTT_KERNELS_CUDA_STATUS "disabled: torch is a CPU build (TTT_KERNELS_CUDA=ON compiles the kernels anyway)")
elseif(NOT TTT_KERNELS_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(NOT CMAKE_CUDA_COMPILER)
    set(_ttt_missing "nvcc (the CUDA toolkit) was not found")
  elseif(NOT TTT_CUTLASS_ROOT)
    set(_ttt_missing "the CUTLASS/CuTe headers were not found: install the `nvidia-cutlass` package "
                     "(pip install nvidia-cutlass==4.2.0.0) into the build interpreter's environment")
  endif()
  if(_ttt_missing)
    if(TTT_KERNELS_CUDA STREQUAL "ON")
      message(FATAL_ERROR "ttt_kernels: TTT_KERNELS_CUDA=ON but ${_ttt_missing}.")
    endif()
    string(REPLACE ";" "" _ttt_missing "${_ttt_missing}")
    set(TTT_KERNELS_CUDA_STATUS "disabled: ${_ttt_missing}")
  else()
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    set(CMAKE_CUDA_ARCHITECTURES OFF)  # arch flags are set per target below
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(TTT_KERNELS_WITH_CUDA_KERNELS ON)
    if(TTT_TORCH_CUDA_VERSION)
      set(TTT_KERNELS_WITH_CUDA_GLUE ON)
      set(TTT_KERNELS_CUDA_STATUS "kernels for sm ${TTT_KERNELS_CUDA_ARCHS}, CUDA dispatch registered")
    else()
      set(TTT_KERNELS_CUDA_STATUS "kernels for sm ${TTT_KERNELS_CUDA_ARCHS} compiled; no CUDA dispatch (CPU torch)")
    endif()
  endif()
endif()
message(STATUS "ttt_kernels: CUDA ${TTT_KERNELS_CUDA_STATUS}")

function(ttt_add_cuda_kernels target sources)
  set(gencode "")
  foreach(arch ${TTT_KERNELS_CUDA_ARCHS})
    list(APPEND gencode "-gencode=arch=compute_${arch},code=sm_${arch}")
  endforeach()
  add_library(${target}_cuda OBJECT ${sources})
  target_include_directories(${target}_cuda PRIVATE ${PROJECT_SOURCE_DIR}/include ${ARGN})
  target_include_directories(${target}_cuda SYSTEM PRIVATE
    ${TTT_CUTLASS_ROOT}/include ${TTT_CUTLASS_ROOT}/tools/util/include)
  target_compile_options(${target}_cuda PRIVATE
    ${gencode} -Xptxas=-v --expt-relaxed-constexpr -Werror=all-warnings -Xcompiler=-Wall,-Wextra
    -lineinfo)
  # The launcher keeps each object's ptxas report (registers, smem, stack, spills) next to it.
  set_target_properties(${target}_cuda PROPERTIES CUDA_COMPILER_LAUNCHER
    "${Python_EXECUTABLE};${PROJECT_SOURCE_DIR}/cmake/capture_ptxas.py")
  target_sources(${target} PRIVATE $<TARGET_OBJECTS:${target}_cuda>)
  target_link_libraries(${target} PRIVATE CUDA::cudart_static)

  set(json ${CMAKE_CURRENT_BINARY_DIR}/${target}/cuda_resources.json)
  string(REPLACE ";" "," archs "${TTT_KERNELS_CUDA_ARCHS}")
  add_custom_command(OUTPUT ${json}
    COMMAND ${Python_EXECUTABLE} ${PROJECT_SOURCE_DIR}/cmake/resource_report.py
            --archs ${archs} --out ${json} "$<TARGET_OBJECTS:${target}_cuda>"
    DEPENDS ${target}_cuda $<TARGET_OBJECTS:${target}_cuda> ${PROJECT_SOURCE_DIR}/cmake/resource_report.py
    COMMAND_EXPAND_LISTS
    COMMENT "Collecting the CUDA resource report into cuda_resources.json")
  add_custom_target(${target}_cuda_resources ALL DEPENDS ${json})
  set(${target}_CUDA_RESOURCES_JSON ${json} PARENT_SCOPE)

  if(TTT_KERNELS_WITH_CUDA_GLUE)
    target_compile_definitions(${target} PRIVATE TTT_KERNELS_WITH_CUDA=1)
    target_include_directories(${target} SYSTEM PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
    foreach(lib c10_cuda torch_cuda)
      target_link_libraries(${target} PRIVATE ${TTT_TORCH_LIB_DIR}/lib${lib}.so)
    endforeach()
    # NVTX ranges around the CUDA ops (csrc/ops/common.h): header-only nvtx3 from the CUDA toolkit.
    if(TARGET CUDA::nvtx3)
      target_link_libraries(${target} PRIVATE CUDA::nvtx3)
      target_compile_definitions(${target} PRIVATE TTT_KERNELS_WITH_NVTX=1)
    else()
      message(STATUS "ttt_kernels: nvtx3 headers not found in the CUDA toolkit: no NVTX ranges")
    endif()
  endif()
endfunction()
