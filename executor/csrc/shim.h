// C ABI of the seerscale c10d shim. Tensors cross the boundary as tch's
// `C_tensor*`, which is an `at::Tensor*` (torch-sys' torch_api.h).
// Every fallible call returns a status code and leaves a message in a
// thread-local buffer read by ssc_last_error(), so no C++ exception ever
// unwinds into Rust.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  SSC_OK = 0,
  SSC_ERR = 1,      // any other failure (bad argument, unsupported dtype, ...)
  SSC_TIMEOUT = 2,  // a collective or the store did not complete in time
  SSC_NETWORK = 3,  // a peer closed its connection (usually: it died)
};

typedef struct ssc_pg ssc_pg;
typedef struct ssc_work ssc_work;

const char* ssc_last_error(void);

// Process groups. `timeout_ms` bounds store rendezvous and every collective.
int ssc_pg_new_gloo(const char* host, uint16_t port, int rank, int world,
                    int64_t timeout_ms, ssc_pg** out);
int ssc_has_nccl(void);
int ssc_pg_new_nccl(const char* host, uint16_t port, int rank, int world,
                    int device, int64_t timeout_ms, ssc_pg** out);
// A subgroup of `parent`'s ranks (PyTorch's new_group): a backend of the
// same kind over the parent's store under `prefix`, which the group's
// members (and only they) pass alike; `rank` is this rank's index in it.
int ssc_pg_new_sub(ssc_pg* parent, const char* prefix, int rank, int size, ssc_pg** out);
void ssc_pg_free(ssc_pg* pg);

// Collectives (asynchronous: each returns a work handle to wait on).
// op: 0 = sum, 1 = avg, 2 = max.
int ssc_all_gather_into(ssc_pg* pg, void* out, void* in, ssc_work** w);
int ssc_reduce_scatter(ssc_pg* pg, void* out, void* in, int op, ssc_work** w);
int ssc_all_reduce(ssc_pg* pg, void* t, int op, ssc_work** w);
int ssc_broadcast(ssc_pg* pg, void* t, int root, ssc_work** w);
int ssc_barrier(ssc_pg* pg, ssc_work** w);
int ssc_work_wait(ssc_work* w, int64_t timeout_ms);
void ssc_work_free(ssc_work* w);

// Synchronized batch norm in training mode (csrc/sync_bn.cpp): batch
// statistics over every rank of `pg`, as an autograd function whose backward
// all-reduces too (every rank must run forward and backward in the same
// order). running_mean/running_var (fp32, updated in place with `momentum`)
// may both be NULL: then they are left alone, as in a recompute pass.
// On success *out is a new heap at::Tensor* owned by the caller (tch:
// Tensor::from_ptr).
int ssc_sync_batch_norm(ssc_pg* pg, void* input, void* weight, void* bias,
                        void* running_mean, void* running_var, double momentum,
                        double eps, void** out);

// Memory statistics.
int ssc_cpu_mem_install(void);
int64_t ssc_cpu_mem_current(void);
int64_t ssc_cpu_mem_peak(void);
void ssc_cpu_mem_reset_peak(void);
int ssc_cuda_mem_stats(int device, int64_t* current, int64_t* peak);
int ssc_cuda_mem_reset_peak(int device);
// "GPU name (SMs, memory); torch, CUDA, cuDNN, NCCL versions" of `device`,
// NUL-terminated into `buf` (truncated to `len`).
int ssc_cuda_describe(int device, char* buf, int len);

// ATen operators dispatched by this process (csrc/op_count.cpp), counted
// from the first install on; threads that call exclude_thread are left out.
int ssc_op_count_install(void);
void ssc_op_count_exclude_thread(void);
int64_t ssc_op_count_ops(void);
// Of those, reads of a tensor's value on the host (`_local_scalar_dense`).
int64_t ssc_op_count_scalar_reads(void);

// Storage of a tensor: free it (every view keeps its metadata) and refill
// it with a fresh allocation from the storage's own allocator.
int ssc_storage_free(void* t);
int ssc_storage_refill(void* t, int64_t nbytes);
int64_t ssc_storage_nbytes(void* t);

#ifdef __cplusplus
}
#endif
