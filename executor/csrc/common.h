// Internals shared by the shim's translation units (not part of the C ABI).
#pragma once
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <chrono>
#include <cstdint>
#include <string>

struct ssc_pg {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  // Gloo has no AVG reduction; the Rust side emulates it with SUM.
  bool is_gloo;
  std::chrono::milliseconds timeout;
  // CUDA device of an NCCL group, -1 for Gloo. NCCL's barrier needs a device
  // and otherwise guesses one (rank % local GPU count) with a warning.
  int device;
  // The rendezvous host, so subgroups bind Gloo where the world did.
  std::string host;
};

namespace ssc {
// Records the exception message and maps it to an SSC_* status.
int fail_current_exception();
void set_error(std::string msg);
// The rendezvous store every process group starts from (rank 0 serves it).
c10::intrusive_ptr<c10d::Store> make_store(const char* host, uint16_t port, int rank, int world,
                                           std::chrono::milliseconds timeout);
// An NCCL backend on `store` (cuda.cpp; throws in a build without CUDA).
c10::intrusive_ptr<c10d::Backend> make_nccl(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                            int world, int device,
                                            std::chrono::milliseconds timeout);
}  // namespace ssc

// Runs `body`, turning any C++ exception into a status code.
#define SSC_GUARD(...)                        \
  try {                                       \
    __VA_ARGS__;                                   \
    return SSC_OK;                            \
  } catch (...) {                             \
    return ssc::fail_current_exception();     \
  }
