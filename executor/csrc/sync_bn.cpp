// Synchronized batch norm (SyncBN) over a c10d process group, as a C++
// autograd function: tch has no custom autograd, libtorch's C++ API has.
//
// Modelled on PyTorch's torch/nn/modules/_functions.py::SyncBatchNorm, but
// built from ATen ops that exist on CPU and CUDA alike (batch_norm_stats,
// batch_norm_elemt and batch_norm_backward_reduce are CUDA-only):
//
// forward   local per-channel mean and biased variance in fp32
//           (batch_norm_update_stats, the native two-pass kernel), turned
//           into count / sum / sum of squares in fp64 and all-reduced (one
//           SUM all-reduce of 2C+1 doubles); global mean, variance and
//           invstd from those; running stats updated with the unbiased
//           variance of the global count; normalised with weight and bias by
//           the native eval-mode kernel fed the global statistics.
// backward  local sum(dy) and sum(dy * (x - mean)) by the native backward
//           kernel (weight and bias gradients only), all-reduced (one SUM
//           all-reduce of 2C floats); grad_input with the global count.
//           grad_weight and grad_bias stay local: FSDP's reduce-scatter sums
//           them over ranks like every other parameter gradient.
//
// Saved for backward: the input, weight, mean and invstd, what native
// batch_norm saves, so the planner's activation model of BN holds. The
// output is not saved (the executor applies ReLU in place on it). Extra
// memory is per-channel vectors, except that the backward's grad_input is
// computed in fp32 before the cast when the input is bf16/fp16.
#include "common.h"
#include "shim.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <string>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Non-tensor arguments: kept out of autograd's inputs (the running stats
// are buffers updated in place, not differentiable inputs).
struct SyncBnArgs {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  at::Tensor running_mean;  // undefined: do not update running stats
  at::Tensor running_var;
  double momentum;
  double eps;
};

// Blocking SUM all-reduce bounded by the group's timeout. Any failure
// becomes a c10::Error naming the phase; inside backward it surfaces from
// run_backward as an error instead of a hang.
void all_reduce_sum(const c10::intrusive_ptr<c10d::Backend>& backend, std::chrono::milliseconds timeout,
                    at::Tensor& t, const char* phase) {
  bool done = false;
  std::string why;
  try {
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    o.timeout = timeout;
    std::vector<at::Tensor> v{t};
    auto work = backend->allreduce(v, o);
    done = work->wait(timeout);
    if (!done) why = "timed out after " + std::to_string(timeout.count()) + " ms";
  } catch (const c10::Error& e) {
    why = e.what_without_backtrace();
  } catch (const std::exception& e) {
    why = e.what();
  }
  TORCH_CHECK(done, "SyncBN ", phase, " all-reduce failed: ", why);
}

// [C] -> [1, C, 1, ...] to broadcast over an input of `dim` dimensions.
at::Tensor per_channel(const at::Tensor& v, int64_t dim) {
  std::vector<int64_t> shape(static_cast<size_t>(dim), 1);
  shape[1] = v.numel();
  return v.view(shape);
}

struct SyncBatchNormFn : public torch::autograd::Function<SyncBatchNormFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const at::Tensor& bias, const SyncBnArgs& a) {
    const int64_t c = input.size(1);
    const int64_t local_count = input.numel() / c;
    const auto f32 = input.options().dtype(at::kFloat);
    at::Tensor mean_l, var_l;
    // fp32 statistics even for bf16/fp16 input: the native kernel
    // accumulates in the running stats' dtype when they are fp32 (mixed
    // mode); these scratch buffers only select that mode (momentum 0).
    std::tie(mean_l, var_l) = at::batch_norm_update_stats(input, at::zeros({c}, f32), at::ones({c}, f32), 0.0);
    // count, sum and sum of squares per channel, in fp64 so that
    // E[x^2] - E[x]^2 over ranks does not cancel away fp32 digits.
    const double n = static_cast<double>(local_count);
    at::Tensor m = mean_l.to(at::kDouble);
    at::Tensor stats = at::cat({m * n, (var_l.to(at::kDouble) + m * m) * n,
                                at::full({1}, n, input.options().dtype(at::kDouble))});
    all_reduce_sum(a.backend, a.timeout, stats, "forward");
    at::Tensor count = stats.narrow(0, 2 * c, 1);
    at::Tensor mean_d = stats.narrow(0, 0, c) / count;
    at::Tensor var_d = (stats.narrow(0, c, c) / count - mean_d * mean_d).clamp_min(0.0);
    at::Tensor mean = mean_d.to(at::kFloat);
    at::Tensor var = var_d.to(at::kFloat);
    at::Tensor invstd = (var_d + a.eps).rsqrt().to(at::kFloat);
    if (a.running_mean.defined()) {
      // PyTorch's update: unbiased variance over the global batch.
      at::Tensor unbiased = (var_d * count / (count - 1.0)).to(at::kFloat);
      a.running_mean.mul_(1.0 - a.momentum).add_(mean, a.momentum);
      a.running_var.mul_(1.0 - a.momentum).add_(unbiased, a.momentum);
    }
    // Eval-mode batch norm with the global statistics is exactly the
    // normalisation wanted, in one fused kernel, output in the input dtype.
    at::Tensor out = std::get<0>(at::native_batch_norm(input, weight, bias, mean, var, /*training=*/false, 0.0, a.eps));
    ctx->save_for_backward({input, weight, mean, invstd});
    ctx->saved_data["count"] = count.to(at::kFloat);
    ctx->saved_data["eps"] = a.eps;
    ctx->saved_data["backend"] = c10::IValue::make_capsule(a.backend);
    ctx->saved_data["timeout_ms"] = static_cast<int64_t>(a.timeout.count());
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& mean = saved[2];
    const at::Tensor& invstd = saved[3];
    const at::Tensor& dy = grads[0];
    at::Tensor count = ctx->saved_data["count"].toTensor();
    double eps = ctx->saved_data["eps"].toDouble();
    auto backend = c10::dynamic_intrusive_pointer_cast<c10d::Backend>(ctx->saved_data["backend"].toCapsule());
    TORCH_CHECK(backend, "SyncBN backward: the process group is gone");
    std::chrono::milliseconds timeout(ctx->saved_data["timeout_ms"].toInt());

    // The native backward's weight gradient is sum(dy * (x - mean)) * invstd
    // and its bias gradient sum(dy): with invstd = 1 the first is the raw
    // sum this needs. One fused pass, no input-sized temporaries.
    at::Tensor sum_dy_l, sum_dy_xmu_l;
    std::tie(std::ignore, sum_dy_xmu_l, sum_dy_l) = at::native_batch_norm_backward(
        dy, input, weight, {}, {}, mean, at::ones_like(invstd), /*train=*/true, eps, {false, true, true});
    const int64_t c = mean.numel();
    at::Tensor sums = at::cat({sum_dy_l, sum_dy_xmu_l});
    // Every rank takes part whatever it needs, so collectives stay matched.
    all_reduce_sum(backend, timeout, sums, "backward");

    at::Tensor grad_input, grad_weight, grad_bias;
    if (ctx->needs_input_grad(0)) {
      const int64_t d = input.dim();
      at::Tensor mean_dy = sums.narrow(0, 0, c) / count;
      at::Tensor mean_dy_xmu = sums.narrow(0, c, c) / count;
      // (dy - mean(dy) - (x - mean) * invstd^2 * mean(dy * (x - mean))) * invstd * w,
      // in fp32 (in place on one buffer), as batch_norm_backward_elemt.
      at::Tensor g = at::sub(input, per_channel(mean, d));
      g.mul_(per_channel(-(invstd * invstd * mean_dy_xmu), d));
      g.add_(dy).sub_(per_channel(mean_dy, d));
      g.mul_(per_channel(invstd * weight.to(at::kFloat), d));
      grad_input = g.scalar_type() == input.scalar_type() ? g : g.to(input.scalar_type());
    }
    if (ctx->needs_input_grad(1)) grad_weight = (sum_dy_xmu_l * invstd).to(weight.scalar_type());
    if (ctx->needs_input_grad(2)) grad_bias = sum_dy_l.to(weight.scalar_type());
    return {grad_input, grad_weight, grad_bias, at::Tensor()};
  }
};

at::Tensor& T(void* p) { return *static_cast<at::Tensor*>(p); }

}  // namespace

extern "C" int ssc_sync_batch_norm(ssc_pg* pg, void* input, void* weight, void* bias, void* running_mean,
                                   void* running_var, double momentum, double eps, void** out) {
  SSC_GUARD({
    TORCH_CHECK(pg != nullptr && input && weight && bias && out, "SyncBN: null argument");
    const at::Tensor& x = T(input);
    const at::Tensor& w = T(weight);
    const at::Tensor& b = T(bias);
    TORCH_CHECK(x.dim() >= 2, "SyncBN: input must be [N, C, ...], got ", x.sizes());
    const int64_t c = x.size(1);
    TORCH_CHECK(w.dim() == 1 && w.numel() == c && b.dim() == 1 && b.numel() == c,
                "SyncBN: weight ", w.sizes(), " and bias ", b.sizes(), " must be [", c, "] for input ", x.sizes());
    TORCH_CHECK(x.numel() > 0, "SyncBN: empty input ", x.sizes(), " on this rank");
    TORCH_CHECK(x.numel() / c > 1 || pg->backend->getSize() > 1,
                "SyncBN: expected more than 1 value per channel when training, got input ", x.sizes());
    TORCH_CHECK(eps > 0.0, "SyncBN: eps must be > 0, got ", eps);
    SyncBnArgs a{pg->backend, pg->timeout, {}, {}, momentum, eps};
    TORCH_CHECK((running_mean == nullptr) == (running_var == nullptr),
                "SyncBN: give both running statistics or neither");
    if (running_mean) {
      a.running_mean = T(running_mean);
      a.running_var = T(running_var);
      TORCH_CHECK(a.running_mean.numel() == c && a.running_var.numel() == c, "SyncBN: running statistics ",
                  a.running_mean.sizes(), " / ", a.running_var.sizes(), " must have ", c, " channels");
      TORCH_CHECK(a.running_mean.scalar_type() == at::kFloat && a.running_var.scalar_type() == at::kFloat,
                  "SyncBN: running statistics must be fp32");
    }
    at::Tensor y = SyncBatchNormFn::apply(x, w, b, a);
    *out = new at::Tensor(std::move(y));
  });
}
