#!/usr/bin/env python3
"""PyTorch reference for `scripts/bench-vs-pytorch`: SwAV pretraining of a
RegNet-Y under FSDP2 (`fully_shard`) over Gloo, the same work the seerscale
executor does for a plan, timed the same way.

Model: torchvision's RegNet built from the seerscale model TOML
(`BlockParams.from_init_params(depth, w_0, w_a, w_m, group_width, b, se_ratio)`,
stem width from the TOML), its fc replaced by the SwAV head: Linear layers
with bias separated by ReLUs, L2 normalisation, then fp32 prototypes without
bias (re-normalised every step). Loss: swapped prediction over multi-crop
with Sinkhorn-Knopp in fp32 whose sums are all-reduced over ranks. Optimiser:
SGD + momentum with LARC (norms of whole parameters, reduced across shards).
FSDP2: one `fully_shard` unit per RegNet block, plus the root.

Optionally every block is activation-checkpointed (`--checkpoint all`:
non-reentrant `torch.utils.checkpoint` inside each block's forward, under
its `fully_shard`, as torchtitan applies AC before FSDP).

Memory: live tensor bytes counted by a dispatch mode (every storage an op
creates, resized, or frees, from before the model is built; the DataLoader
workers' batches live in shared memory outside it), and the process's peak
RSS.

Prints ONE JSON line on rank 0: images/s, median step time, peak live
tensor bytes (max over ranks and timed steps), peak RSS.
"""

import argparse
import functools
import json
import math
import os
import resource
import statistics
import sys
import time
import tomllib
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
import weakref
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

REPO = Path(__file__).resolve().parent.parent


def load_toml(name_or_path, kind):
    p = Path(name_or_path)
    if not p.exists():
        p = REPO / "configs" / kind / f"{name_or_path}.toml"
    with open(p, "rb") as f:
        return tomllib.load(f)


def build_model(cfg):
    from torchvision.models.regnet import BlockParams, RegNet

    r = cfg["regnet"]
    params = BlockParams.from_init_params(
        depth=r["depth"], w_0=r["w_0"], w_a=r["w_a"], w_m=r["w_m"], group_width=r["group_width"],
        bottleneck_multiplier=r.get("bottleneck_multiplier", 1.0), se_ratio=r.get("se_ratio", 0.25),
    )
    trunk = RegNet(params, stem_width=r.get("stem_width", 32))
    feat = trunk.fc.in_features
    trunk.fc = nn.Identity()  # avgpool + flatten stay: the head gets pooled features
    layers, d = [], feat
    dims = cfg["head"]["mlp_dims"]
    for i, o in enumerate(dims):
        layers.append(nn.Linear(d, o))
        if i + 1 < len(dims):
            layers.append(nn.ReLU(inplace=True))
        d = o
    return SwavModel(trunk, nn.Sequential(*layers), nn.Linear(d, cfg["head"]["prototypes"], bias=False))


class SwavModel(nn.Module):
    def __init__(self, trunk, mlp, proto):
        super().__init__()
        self.trunk, self.mlp, self.proto = trunk, mlp, proto

    def forward(self, crops_by_res):
        # One trunk pass per resolution group (SwAV's multi-crop batching).
        z = torch.cat([self.trunk(x) for x in crops_by_res])
        z = F.normalize(self.mlp(z), dim=1)
        # Prototypes in fp32 (SEER: "important for convergence").
        return self.proto(z.float())


def blocks_of(model):
    # torchvision: trunk_output = Sequential of AnyStage, each a Sequential of blocks.
    return [b for stage in model.trunk.trunk_output for b in stage]


@torch.no_grad()
def sinkhorn(scores, eps, iters, world):
    q = torch.exp(scores.float() / eps).t()  # K x B
    k, b = q.shape[0], q.shape[1] * world
    s = q.sum()
    if world > 1:
        dist.all_reduce(s)
    q /= s
    for _ in range(iters):
        rows = q.sum(dim=1, keepdim=True)
        if world > 1:
            dist.all_reduce(rows)
        q /= rows
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()


def swav_loss(scores, n_crops, bs, sw, world):
    chunks = scores.chunk(n_crops)
    loss = 0.0
    for a in sw["crops_for_assign"]:
        q = sinkhorn(chunks[a].detach(), sw["epsilon"], sw["sinkhorn_iterations"], world)
        sub = 0.0
        for v in range(n_crops):
            if v != a:
                sub -= torch.mean(torch.sum(q * F.log_softmax(chunks[v] / sw["temperature"], dim=1), dim=1))
        loss += sub / (n_crops - 1)
    return loss / len(sw["crops_for_assign"])


@torch.no_grad()
def larc_sgd(params, bufs, lr, momentum, wd, trust, world):
    """SGD + momentum with LARC (clip=False): per-parameter lr scale
    trust·|p| / (|g| + wd·|p|), with |.| over the whole parameter (local
    shards' squared norms summed over ranks in one all-reduce). Written as
    PyTorch's own `foreach` optimisers are: multi-tensor ops, the trust
    ratios computed on the device, nothing read back to the host."""
    loc = lambda t: t.to_local() if hasattr(t, "to_local") else t
    ps = [loc(p) for p in params]
    gs = [loc(p.grad) for p in params]
    sq = torch.stack([torch.stack(torch._foreach_norm(ps)), torch.stack(torch._foreach_norm(gs))]).pow(2)
    if world > 1:
        dist.all_reduce(sq)
    pn, gn = sq.sqrt()
    scale = torch.where((pn > 0) & (gn > 0), trust * pn / (gn + wd * pn), torch.ones_like(pn))
    d = torch._foreach_add(gs, ps, alpha=wd)
    torch._foreach_mul_(d, list(scale.unbind()))
    torch._foreach_mul_(bufs, momentum)
    torch._foreach_add_(bufs, d)
    torch._foreach_add_(ps, bufs, alpha=-lr)


def count_host_work(run):
    """ATen ops dispatched while `run()` runs and reads of a value on the
    host among them, from torch.profiler's RecordFunction events: the hook
    the executor counts with (executor/csrc/op_count.cpp), so both sides
    count the same way (nested ops included)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    names = [e.name for e in prof.events() if e.name.startswith("aten::")]
    return len(names), sum(1 for n in names if n == "aten::_local_scalar_dense")


def synthetic_batch(crops, bs, gen):
    return [torch.randn(c["count"] * bs, 3, c["resolution"], c["resolution"], generator=gen) for c in crops]


class PhotoCrops(torch.utils.data.Dataset):
    """The seerscale default data (scikit-image's bundled photos), multi-crop
    augmented like SwAV: random resized crop, flip, colour jitter, grayscale,
    Gaussian blur."""

    def __init__(self, root, crops, color_strength, blur_p):
        from torchvision import transforms as T

        exts = {".png", ".jpg", ".jpeg"}
        self.files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in exts)
        s = color_strength
        self.tf = []
        for c in crops:
            t = T.Compose([
                T.RandomResizedCrop(c["resolution"], scale=tuple(c["scale"])),
                T.RandomHorizontalFlip(),
                T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
                T.RandomGrayscale(p=0.2),
                T.RandomApply([T.GaussianBlur(3)], p=blur_p),
                T.ToTensor(),
            ])
            self.tf += [t] * c["count"]

    def __len__(self):
        return len(self.files) * 1000  # cycle: steps never run out

    def __getitem__(self, i):
        from PIL import Image

        try:
            img = Image.open(self.files[i % len(self.files)]).convert("RGB")
        except Exception:  # unreadable: same policy as the executor (skip)
            img = Image.new("RGB", (64, 64))
        return [t(img) for t in self.tf]


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the storages alive right now, and their peak: every storage
    an op returns is counted once, until it is freed; `resize_` (FSDP2
    frees and refills unsharded parameters that way) changes its size."""

    def __init__(self):
        super().__init__()
        self.sizes = {}
        self.current = 0
        self.peak = 0

    def _free(self, key):
        self.current -= self.sizes.pop(key, 0)

    def _track(self, t):
        if not isinstance(t, torch.Tensor):
            return
        local = getattr(t, "_local_tensor", None)
        if local is not None:
            t = local
        if t.device.type != "cpu":
            return
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return  # a wrapper without storage of its own
        key = id(st)
        n = st.nbytes()
        if key in self.sizes:
            self.current += n - self.sizes[key]
            self.sizes[key] = n
        else:
            self.sizes[key] = n
            self.current += n
            weakref.finalize(st, self._free, key)
        self.peak = max(self.peak, self.current)

    def reset_peak(self):
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self._track(t)
        if func is torch.ops.aten.resize_.default or func is torch.ops.aten.set_.source_Storage:
            self._track(args[0])
        return out


class CudaPeak:
    """The CUDA caching allocator's peak allocated bytes since the last
    reset: what the executor reports on a GPU."""

    def __init__(self, device):
        self.device = device

    def reset_peak(self):
        torch.cuda.reset_peak_memory_stats(self.device)

    @property
    def peak(self):
        return torch.cuda.max_memory_allocated(self.device)

    def __exit__(self, *exc):
        pass


def rank_main(rank, world, port, a, out_q):
    cuda = a.device == "cuda"
    device = torch.device("cuda", rank % max(1, torch.cuda.device_count())) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # as the executor: each conv's algorithm timed at first call
        mem = CudaPeak(device)
    else:
        mem = LiveTensorBytes()
        mem.__enter__()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed + rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model_cfg = load_toml(a.model, "models")
    recipe = load_toml(a.recipe, "recipes")
    crops = recipe["data"]["crops"]
    sw = recipe["swav"]
    opt = recipe["optim"]
    n_crops = sum(c["count"] for c in crops)
    bs = a.batch_per_rank

    model = build_model(model_cfg).to(device)
    if a.checkpoint == "all":
        from torch.utils.checkpoint import checkpoint

        for blk in blocks_of(model):
            blk.forward = functools.partial(checkpoint, blk.forward, use_reentrant=False)
    reduce_dtype = torch.bfloat16 if a.reduce == "bf16" else torch.float32
    mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=reduce_dtype) if a.precision == "bf16" else MixedPrecisionPolicy()
    for blk in blocks_of(model):
        fully_shard(blk, mp_policy=mp_policy, reshard_after_forward=a.reshard_after_forward)
    # Prototypes stay fp32 whatever the compute dtype.
    fully_shard(model.proto, mp_policy=MixedPrecisionPolicy(), reshard_after_forward=a.reshard_after_forward)
    fully_shard(model, mp_policy=mp_policy, reshard_after_forward=a.reshard_after_forward)
    params = [p for p in model.parameters()]
    bufs = [torch.zeros_like(p.to_local() if hasattr(p, "to_local") else p) for p in params]
    lr = opt["lr_per_256"] * bs * world / 256

    if a.data == "photos":
        ds = PhotoCrops(a.photos, crops, recipe["data"].get("color_strength", 1.0), recipe["data"].get("blur_p", 0.5))
        sampler = torch.utils.data.DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=a.seed)
        dl = iter(torch.utils.data.DataLoader(ds, batch_size=bs, sampler=sampler, num_workers=a.workers, drop_last=True, persistent_workers=a.workers > 0))

        def next_batch():
            views = next(dl)  # list over crops of [bs, 3, r, r]
            out, i = [], 0
            for c in crops:
                out.append(torch.cat(views[i:i + c["count"]]).to(device))
                i += c["count"]
            return out
    else:
        gen = torch.Generator().manual_seed(a.seed + rank)
        # On a GPU the synthetic batches are made once and stay there: the
        # race is the training step, not the input pipeline.
        fixed = [t.to(device) for t in synthetic_batch(crops, bs, gen)] if cuda else None
        next_batch = (lambda: fixed) if cuda else (lambda: synthetic_batch(crops, bs, gen))

    def train_step(batch):
        """One step after the batch is at hand, its loss read for the log
        (as the executor's step ends with its metrics' read-back)."""
        # Unit-norm prototypes from the start (then every step, as SwAV).
        with torch.no_grad():
            w = model.proto.weight
            wl = w.to_local() if hasattr(w, "to_local") else w
            wl.copy_(F.normalize(wl, dim=1))  # rows are whole on each rank (dim-0 shard)
        scores = model(batch)
        loss = swav_loss(scores, n_crops, bs, sw, world)
        loss.backward()
        larc_sgd(params, bufs, lr, opt["momentum"], opt["weight_decay"], opt.get("larc_trust", 0.001) or 0.001, world)
        for p in params:
            p.grad = None
        return float(loss.detach())

    times, losses = [], []
    peaks = []
    for step in range(a.warmup + a.steps):
        mem.reset_peak()
        t0 = time.perf_counter()
        batch = next_batch()
        loss = train_step(batch)
        dt = time.perf_counter() - t0
        if step >= a.warmup:
            times.append(dt)
            losses.append(loss)
            peaks.append(mem.peak)
    mem.__exit__(None, None, None)
    # One more step under the profiler, untimed: the host's work per step.
    batch = next_batch()
    ops, reads = count_host_work(lambda: train_step(batch))
    peak_live = torch.tensor([max(peaks)], dtype=torch.float64, device=device)
    peak_kib = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss], dtype=torch.float64, device=device)
    t = torch.tensor([statistics.median(times), sum(times)], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(peak_kib, op=dist.ReduceOp.MAX)
        dist.all_reduce(peak_live, op=dist.ReduceOp.MAX)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if rank == 0:
        global_images = bs * world
        out_q.put({
            "engine": "pytorch-fsdp2",
            "torch": torch.__version__,
            "model": model_cfg["name"],
            "recipe": recipe["name"],
            "world_size": world,
            "batch_per_rank": bs,
            "crops": [f"{c['count']}x{c['resolution']}" for c in crops],
            "threads_per_rank": a.threads,
            "precision": a.precision,
            "data": a.data,
            "warmup_steps": a.warmup,
            "timed_steps": a.steps,
            "step_time_median_s": float(t[0]),
            "images_per_s": global_images / float(t[0]),
            "images_per_s_mean": global_images * a.steps / float(t[1]),
            "peak_rss_bytes": int(peak_kib.item()) * 1024,
            "peak_tensor_bytes": int(peak_live.item()),
            "checkpoint": a.checkpoint,
            "aten_ops_per_step": ops,
            "host_syncs_per_step": reads,
            "loss_first": losses[0],
            "loss_last": losses[-1],
        })
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="regnety-tiny", help="model name under configs/models or a TOML path")
    ap.add_argument("--recipe", default="tiny-cpu", help="recipe (crops, SwAV, optimiser) under configs/recipes or a TOML path")
    ap.add_argument("--batch-per-rank", type=int, default=8)
    ap.add_argument("--world-size", type=int, default=1)
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)), help="torch.set_num_threads per rank")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--reduce", choices=["fp32", "bf16"], default="fp32", help="gradient reduce dtype under bf16")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: NCCL, one GPU per rank, cuDNN autotuning")
    ap.add_argument("--no-reshard-after-forward", dest="reshard_after_forward", action="store_false")
    ap.add_argument("--checkpoint", choices=["none", "all"], default="none", help="activation checkpointing of every block")
    ap.add_argument("--data", choices=["synthetic", "photos"], default="photos")
    ap.add_argument("--photos", default=str(REPO / ".photos"))
    ap.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per rank (photos)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.steps < 1:
        sys.exit("--steps must be >= 1")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    procs = [ctx.Process(target=rank_main, args=(r, a.world_size, port, a, q)) for r in range(a.world_size)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    bad = [i for i, p in enumerate(procs) if p.exitcode != 0]
    if bad:
        sys.exit(f"pytorch_reference: rank(s) {bad} failed")
    print(json.dumps(q.get()))


if __name__ == "__main__":
    main()
