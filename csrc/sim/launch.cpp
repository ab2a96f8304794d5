// Kernel launches in the CUDA simulator: validation, the worker threads that share the grid's blocks, and the
// error that ttt::launch throws.
#include <cxxabi.h>
#include <dlfcn.h>
#include <link.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "ttt_kernels/device/launch.h"
#include "ttt_kernels/sim/config.h"
#include "ttt_kernels/sim/scheduler.h"

namespace ttt::sim::detail {
namespace {

// CUDA's limits for every architecture the project targets (sm_80+). The dynamic shared memory limit is sm_90's
// opt-in maximum.
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockDim[3] = {1024, 1024, 64};
constexpr unsigned kMaxGridDim[3] = {2147483647u, 65535, 65535};
constexpr std::size_t kMaxDynamicSmemBytes = 227 * 1024;

// Name of the function at `addr` in the symbol table (.symtab) of the ELF file `path` loaded at `base`, or "".
// Reached for kernels with internal linkage (anonymous namespaces, static), which the dynamic symbol table lacks;
// only on the error path, so the file is simply read whole.
std::string local_symbol(const char* path, uintptr_t base, uintptr_t addr) {
  std::ifstream file(path, std::ios::binary);
  const std::vector<char> elf((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  const auto in_file = [&](uint64_t offset, uint64_t bytes) {
    return offset <= elf.size() && bytes <= elf.size() - offset;
  };
  if (!in_file(0, sizeof(ElfW(Ehdr))) || std::memcmp(elf.data(), ELFMAG, SELFMAG) != 0) return "";
  ElfW(Ehdr) eh;
  std::memcpy(&eh, elf.data(), sizeof eh);
  // Shared objects and position-independent executables hold addresses relative to their load base.
  const uintptr_t target = eh.e_type == ET_DYN ? addr - base : addr;
  const auto section = [&](unsigned i, ElfW(Shdr)& sh) {
    const uint64_t offset = eh.e_shoff + uint64_t{i} * eh.e_shentsize;
    if (i >= eh.e_shnum || eh.e_shentsize < sizeof sh || !in_file(offset, sizeof sh)) return false;
    std::memcpy(&sh, elf.data() + offset, sizeof sh);
    return true;
  };
  ElfW(Shdr) symtab;
  ElfW(Shdr) strtab;
  for (unsigned i = 0; section(i, symtab); ++i) {
    if (symtab.sh_type != SHT_SYMTAB || !section(symtab.sh_link, strtab) ||
        !in_file(symtab.sh_offset, symtab.sh_size) || !in_file(strtab.sh_offset, strtab.sh_size)) {
      continue;
    }
    for (uint64_t off = 0; off + sizeof(ElfW(Sym)) <= symtab.sh_size; off += sizeof(ElfW(Sym))) {
      ElfW(Sym) sym;
      std::memcpy(&sym, elf.data() + symtab.sh_offset + off, sizeof sym);
      if (ELF64_ST_TYPE(sym.st_info) == STT_FUNC && sym.st_value == target && sym.st_name < strtab.sh_size) {
        const char* name = elf.data() + strtab.sh_offset + sym.st_name;
        return std::string(name, strnlen(name, strtab.sh_size - sym.st_name));
      }
    }
  }
  return "";
}

// The demangled name of the kernel function, else its address.
std::string kernel_name(const void* kernel) {
  Dl_info info{};
  std::string name;
  if (dladdr(kernel, &info) != 0) {
    if (info.dli_sname != nullptr && info.dli_saddr == kernel) {
      name = info.dli_sname;
    } else if (info.dli_fname != nullptr) {
      name = local_symbol(info.dli_fname, reinterpret_cast<uintptr_t>(info.dli_fbase),
                          reinterpret_cast<uintptr_t>(kernel));
    }
  }
  if (name.empty()) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "kernel at %p", kernel);
    return buf;
  }
  int status = 0;
  const std::unique_ptr<char, void (*)(void*)> demangled(abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status),
                                                         std::free);
  return status == 0 && demangled ? demangled.get() : name;
}

std::mutex g_launched_mutex;
std::unordered_set<const void*> g_launched;  // the kernels launched so far
std::map<const void*, std::set<std::string>> g_instructions;  // per kernel, the arch.h instructions it executed

// What CUDA would reject about the launch's shape, or "".
std::string invalid_launch(const KernelLaunch& k) {
  const unsigned block[3] = {k.block.x, k.block.y, k.block.z};
  const unsigned grid[3] = {k.grid.x, k.grid.y, k.grid.z};
  const char* axes = "xyz";
  for (int i = 0; i < 3; ++i) {
    if (block[i] == 0 || block[i] > kMaxBlockDim[i]) {
      return "blockDim." + std::string(1, axes[i]) + " = " + std::to_string(block[i]) + " is outside [1, " +
             std::to_string(kMaxBlockDim[i]) + "]";
    }
    if (grid[i] == 0 || grid[i] > kMaxGridDim[i]) {
      return "gridDim." + std::string(1, axes[i]) + " = " + std::to_string(grid[i]) + " is outside [1, " +
             std::to_string(kMaxGridDim[i]) + "]";
    }
  }
  const uint64_t threads = uint64_t{block[0]} * block[1] * block[2];
  if (threads > kMaxThreadsPerBlock) {
    return "a block of " + std::to_string(threads) + " threads exceeds the limit of " +
           std::to_string(kMaxThreadsPerBlock);
  }
  if (k.smem_bytes > kMaxDynamicSmemBytes) {
    return std::to_string(k.smem_bytes) + " bytes of dynamic shared memory exceed the limit of " +
           std::to_string(kMaxDynamicSmemBytes) + " (227 KiB)";
  }
  return "";
}

}  // namespace

void record_instructions(const void* kernel, const std::vector<const char*>& instructions) {
  const std::lock_guard<std::mutex> lock(g_launched_mutex);
  std::set<std::string>& executed = g_instructions[kernel];
  executed.insert(instructions.begin(), instructions.end());
}

void launch(const KernelLaunch& k) {
  const auto prefix = [&] {
    return "ttt::launch(" + kernel_name(k.kernel) + ", " + ttt::detail::launch_shape(k.grid, k.block, k.smem_bytes) +
           "): ";
  };
  if (in_simulated_thread()) {
    throw std::runtime_error(prefix() + "launching a kernel from device code is not supported by the simulator");
  }
  if (const std::string problem = invalid_launch(k); !problem.empty()) {
    throw std::runtime_error(prefix() + "invalid launch: " + problem);
  }
  {
    const std::lock_guard<std::mutex> lock(g_launched_mutex);
    g_launched.insert(k.kernel);
  }

  const Config cfg = config();
  const std::vector<GlobalBuffer> buffers = cfg.memcheck ? launch_buffers() : std::vector<GlobalBuffer>{};
  const uint64_t blocks = uint64_t{k.grid.x} * k.grid.y * k.grid.z;
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const uint64_t workers =
      std::min<uint64_t>(blocks, cfg.num_workers > 0 ? static_cast<unsigned>(cfg.num_workers) : cores);

  // Workers take blocks from a shared counter until the grid is done or a block fails. The reported error is the
  // one of the lowest failing block index, so a single worker reports deterministically.
  std::atomic<uint64_t> next_block{0};
  std::atomic<bool> stop{false};
  std::mutex error_mutex;
  uint64_t error_block = UINT64_MAX;
  std::string error;
  const auto record = [&](uint64_t block, std::string message) {
    std::lock_guard<std::mutex> lock(error_mutex);
    if (block <= error_block) {
      error_block = block;
      error = std::move(message);
    }
    stop = true;
  };
  const auto work = [&] {
    try {
      Worker worker(k, cfg, buffers);
      while (!stop.load(std::memory_order_relaxed)) {
        const uint64_t block = next_block.fetch_add(1, std::memory_order_relaxed);
        if (block >= blocks) break;
        std::string message = worker.run_block(block);
        if (!message.empty()) record(block, std::move(message));
      }
    } catch (const std::exception& e) {
      record(UINT64_MAX, e.what());
    }
  };

  std::vector<std::thread> pool;
  for (uint64_t i = 1; i < workers; ++i) {
    try {
      pool.emplace_back(work);
    } catch (const std::system_error&) {
      break;  // no more OS threads: the ones running (at least this one) finish the grid
    }
  }
  work();
  for (std::thread& t : pool) t.join();
  if (!error.empty()) throw std::runtime_error(prefix() + error);
}

}  // namespace ttt::sim::detail

namespace ttt::sim {

std::vector<std::string> launched_kernels() {
  std::vector<const void*> kernels;
  {
    const std::lock_guard<std::mutex> lock(detail::g_launched_mutex);
    kernels.assign(detail::g_launched.begin(), detail::g_launched.end());
  }
  std::vector<std::string> names;
  for (const void* kernel : kernels) names.push_back(detail::kernel_name(kernel));
  return names;
}

std::vector<std::pair<std::string, std::vector<std::string>>> executed_instructions() {
  std::vector<std::pair<const void*, std::vector<std::string>>> per_kernel;
  {
    const std::lock_guard<std::mutex> lock(detail::g_launched_mutex);
    for (const void* kernel : detail::g_launched) {
      const auto it = detail::g_instructions.find(kernel);
      per_kernel.emplace_back(kernel, it == detail::g_instructions.end()
                                          ? std::vector<std::string>{}
                                          : std::vector<std::string>(it->second.begin(), it->second.end()));
    }
  }
  std::vector<std::pair<std::string, std::vector<std::string>>> named;
  for (auto& [kernel, instructions] : per_kernel) {
    named.emplace_back(detail::kernel_name(kernel), std::move(instructions));
  }
  return named;
}

}  // namespace ttt::sim
