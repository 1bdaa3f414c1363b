#!/usr/bin/env python3
"""Times RegNet work on this machine's GPU with PyTorch, for seerscale's GPU
time-model report (`seerscale accuracy`): the rows measured on this GPU.

  gpu_timing.py public --out rows.json   # the public-timing workloads, re-run here
  gpu_timing.py convs  --out convs.json  # single convolutions: forward, data and weight gradient

`public` re-runs the workloads of ../shared/reference/gpu-timings on this GPU:
pycls's (fp32, forward and backward timed separately as pycls's
`compute_time_train` does, 1000-class fc + cross-entropy, torch.rand input)
and timm's (AMP fp16 autocast, forward + backward + SGD step), each model
built by torchvision's `RegNet` from pycls's generator numbers. cuDNN
autotuning is on (`cudnn.benchmark = True`, as pycls and timm set it) and
PyTorch's TF32 defaults are kept (convolutions may use TF32, matmuls not).

`convs` times the convolutions of RegNet-Y blocks one by one with CUDA
events, each pass on its own (`aten.convolution_backward` with one output
mask at a time), in bf16 and fp32, for the shapes of regnety-400mf, of SEER
10B's and SEER 2021's stage-3 blocks, and the same grouped convolutions with
channels per group rounded to a multiple of 8, which decides whether cuDNN
can use tensor cores.

Every timing: warm-up calls (autotuning included), then the mean of timed
calls between CUDA events. Prints progress to stderr; writes one JSON file.
"""

import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# pycls dds_baselines generator numbers (depth, w_0, w_a, w_m, group_width) and
# the per-GPU training batch (TRAIN.BATCH_SIZE / 8 GPUs).
PYCLS = {
    "RegNetX-200MF": (13, 24, 36.44, 2.49, 8, 128),
    "RegNetX-400MF": (22, 24, 24.48, 2.54, 16, 128),
    "RegNetX-600MF": (16, 48, 36.97, 2.24, 24, 128),
    "RegNetX-800MF": (16, 56, 35.73, 2.28, 16, 128),
    "RegNetX-1.6GF": (18, 80, 34.01, 2.25, 24, 128),
    "RegNetX-3.2GF": (25, 88, 26.31, 2.25, 48, 64),
    "RegNetX-4.0GF": (23, 96, 38.65, 2.43, 40, 64),
    "RegNetX-6.4GF": (17, 184, 60.83, 2.07, 56, 64),
    "RegNetX-8.0GF": (23, 80, 49.56, 2.88, 120, 64),
    "RegNetX-12GF": (19, 168, 73.36, 2.37, 112, 64),
    "RegNetX-16GF": (22, 216, 55.59, 2.1, 128, 64),
    "RegNetX-32GF": (23, 320, 69.86, 2.0, 168, 32),
    "RegNetY-200MF": (13, 24, 36.44, 2.49, 8, 128),
    "RegNetY-400MF": (16, 48, 27.89, 2.09, 8, 128),
    "RegNetY-600MF": (15, 48, 32.54, 2.32, 16, 128),
    "RegNetY-800MF": (14, 56, 38.84, 2.4, 16, 128),
    "RegNetY-1.6GF": (27, 48, 20.71, 2.65, 24, 128),
    "RegNetY-3.2GF": (21, 80, 42.63, 2.66, 24, 64),
    "RegNetY-4.0GF": (22, 96, 31.41, 2.24, 64, 64),
    "RegNetY-6.4GF": (25, 112, 33.22, 2.27, 72, 64),
    "RegNetY-8.0GF": (17, 192, 76.82, 2.19, 56, 64),
    "RegNetY-12GF": (19, 168, 73.36, 2.37, 112, 64),
    "RegNetY-16GF": (18, 200, 106.23, 2.48, 112, 32),
    "RegNetY-32GF": (20, 232, 115.89, 2.53, 232, 32),
}
# timm's names for the pycls models in its RTX 3090 AMP table, and its batch.
TIMM = {
    "regnetx_002": ("RegNetX-200MF", 512), "regnety_002": ("RegNetY-200MF", 512),
    "regnetx_004": ("RegNetX-400MF", 512), "regnety_004": ("RegNetY-400MF", 512),
    "regnetx_006": ("RegNetX-600MF", 512), "regnety_006": ("RegNetY-600MF", 512),
    "regnetx_008": ("RegNetX-800MF", 512), "regnety_008": ("RegNetY-800MF", 512),
    "regnetx_016": ("RegNetX-1.6GF", 512), "regnety_016": ("RegNetY-1.6GF", 512),
    "regnetx_032": ("RegNetX-3.2GF", 384), "regnety_032": ("RegNetY-3.2GF", 384),
    "regnetx_040": ("RegNetX-4.0GF", 384), "regnety_040": ("RegNetY-4.0GF", 384),
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def regnet(name):
    from torchvision.models.regnet import BlockParams, RegNet

    depth, w0, wa, wm, gw, _ = PYCLS[name]
    se = 0.25 if name.startswith("RegNetY") else None
    return RegNet(BlockParams.from_init_params(depth, w0, wa, wm, gw, se_ratio=se))


def cuda_time(fn, warmup, iters):
    """Mean seconds per call between CUDA events, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def device_info():
    p = torch.cuda.get_device_properties(0)
    return {
        "gpu": p.name,
        "sms": p.multi_processor_count,
        "memory_gib": round(p.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }


def pycls_row(name, warmup, iters):
    """pycls's compute_time_train: forward (+ loss) and backward timed apart."""
    batch = PYCLS[name][5]
    model = regnet(name).cuda().train()
    x = torch.rand(batch, 3, 224, 224, device="cuda")
    y = torch.zeros(batch, dtype=torch.int64, device="cuda")
    fw, bw = [], []
    for i in range(warmup + iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        loss.backward()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i >= warmup:
            fw.append(t1 - t0)
            bw.append(t2 - t1)
        model.zero_grad(set_to_none=True)
    return {"source": "pycls", "model": name, "batch": batch, "resolution": 224, "dtype": "fp32",
            "forward_s": sum(fw) / len(fw), "backward_s": sum(bw) / len(bw),
            "peak_allocated_bytes": torch.cuda.max_memory_allocated()}


def timm_row(timm_name, warmup, iters):
    """timm's benchmark.py train mode: AMP forward + backward + SGD step."""
    name, batch = TIMM[timm_name]
    model = regnet(name).cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    y = torch.randint(1000, (batch,), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    t = cuda_time(step, warmup, iters)
    return {"source": "timm", "model": timm_name, "pycls_model": name, "batch": batch, "resolution": 224,
            "dtype": "fp16-amp", "step_s": t, "peak_allocated_bytes": torch.cuda.max_memory_allocated()}


def public(args):
    torch.backends.cudnn.benchmark = True
    rows, t0 = [], time.perf_counter()
    jobs = [("pycls", n) for n in PYCLS] + [("timm", n) for n in TIMM]
    if args.match:
        jobs = [j for j in jobs if any(m in j[1] for m in args.match)]
    for kind, name in jobs:
        if time.perf_counter() - t0 > args.budget_s:
            log(f"budget of {args.budget_s} s spent: {kind} {name} and later rows not measured")
            break
        torch.cuda.reset_peak_memory_stats()
        try:
            row = pycls_row(name, args.warmup, args.iters) if kind == "pycls" else timm_row(name, args.warmup, args.iters)
        except Exception as e:  # one bad row must not lose the others
            row = {"source": kind, "model": name, "error": str(e).splitlines()[0]}
        log(json.dumps(row))
        rows.append(row)
        torch.cuda.empty_cache()
    return rows


def conv_shapes():
    """(label, batch·crops rows, cin, cout, kernel, stride, groups, hw) of the
    convs worth timing one by one."""
    out = []

    def block(label, rows, w_in, w, gw, hw, stride, se_w):
        g = w // gw
        out.append((f"{label}.a", rows, w_in, w, 1, 1, 1, hw * stride))
        out.append((f"{label}.b", rows, w, w, 3, stride, g, hw * stride))
        out.append((f"{label}.se.reduce", rows, w, se_w, 1, 1, 1, 1))
        out.append((f"{label}.se.expand", rows, se_w, w, 1, 1, 1, 1))
        out.append((f"{label}.c", rows, w, w, 1, 1, 1, hw))

    # regnety-400mf at 32 images x 2x160 (stage widths 48/104/208/440, group width 8).
    for (w_in, w, hw, se) in [(32, 48, 40, 8), (48, 104, 20, 12), (104, 208, 10, 26), (208, 440, 5, 52)]:
        block(f"400mf-{w}@{hw}", 64, w_in, w, 8, hw, 2, se)
    # SEER 10B stage 3 (width 11110, group width 1010) at 16 images: 2x160 -> 10 px, 4x96 -> 6 px.
    for gw, w in [(1010, 11110), (1008, 11088), (1024, 11264)]:
        block(f"10b-s3-g{gw}@10", 32, w, w, gw, 10, 1, 2778)
        block(f"10b-s3-g{gw}@6", 64, w, w, gw, 6, 1, 2778)
    # SEER 2021 256GF stage 3 (width 4103, group width 373) at 17 images: 2x224 -> 14 px, 4x96 -> 6 px.
    for gw, w in [(373, 4103), (376, 4136), (384, 4224)]:
        block(f"256gf-s3-g{gw}@14", 34, w, w, gw, 14, 1, 1026)
        block(f"256gf-s3-g{gw}@6", 68, w, w, gw, 6, 1, 1026)
    return out


def convs(args):
    torch.backends.cudnn.benchmark = True
    aten = torch.ops.aten
    rows, seen, t0 = [], set(), time.perf_counter()
    for dtype_name, dtype in [("bf16", torch.bfloat16), ("fp32", torch.float32)]:
        for label, n, cin, cout, k, s, g, hw in conv_shapes():
            key = (dtype_name, n, cin, cout, k, s, g, hw)
            if key in seen:
                continue
            seen.add(key)
            if time.perf_counter() - t0 > args.budget_s:
                log(f"budget of {args.budget_s} s spent: {dtype_name} {label} and later convs not measured")
                return rows
            pad = k // 2
            x = torch.randn(n, cin, hw, hw, device="cuda", dtype=dtype)
            w = torch.randn(cout, cin // g, k, k, device="cuda", dtype=dtype)
            y = F.conv2d(x, w, None, s, pad, 1, g)
            gy = torch.randn_like(y)
            common = ([0], [s, s], [pad, pad], [1, 1], False, [0, 0], g)
            row = {"label": label, "dtype": dtype_name, "n": n, "cin": cin, "cout": cout, "kernel": k, "stride": s,
                   "groups": g, "hw": hw, "out_hw": y.shape[-1]}
            try:
                row["forward_s"] = cuda_time(lambda: F.conv2d(x, w, None, s, pad, 1, g), args.warmup, args.iters)
                row["dgrad_s"] = cuda_time(lambda: aten.convolution_backward(gy, x, w, *common, [True, False, False]), args.warmup, args.iters)
                row["wgrad_s"] = cuda_time(lambda: aten.convolution_backward(gy, x, w, *common, [False, True, False]), args.warmup, args.iters)
            except Exception as e:
                row["error"] = str(e).splitlines()[0]
            macs = n * cout * y.shape[-1] ** 2 * (cin // g) * k * k
            row["flops"] = 2 * macs
            if "forward_s" in row:
                log(f"{dtype_name} {label}: fwd {row['forward_s']*1e3:.3f} ms ({2*macs/row['forward_s']/1e12:.1f} TFLOP/s) "
                    f"dgrad {row['dgrad_s']*1e3:.3f} wgrad {row['wgrad_s']*1e3:.3f}")
            rows.append(row)
            del x, w, y, gy
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["public", "convs"])
    p.add_argument("--out", required=True)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--budget-s", type=float, default=150.0, help="stop starting new rows after this many seconds")
    p.add_argument("--match", nargs="*", default=[], help="only the public rows whose model name contains one of these")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA device is visible (this script times GPU work)")
    rows = public(args) if args.what == "public" else convs(args)
    with open(args.out, "w") as f:
        json.dump({"device": device_info(), "what": args.what, "rows": rows}, f, indent=1)
    log(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
