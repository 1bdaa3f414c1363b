"""SEER's training step in PyTorch, written from VISSL's code and configs, to
check seerscale's executor step by step (run by executor/tests/seer_reference.rs
with the project venv).

step DIR: DIR holds what the executor dumped for one run on N ranks:
    run.json (settings, per-step loss and lr, the schedule), init.safetensors
    (initial parameters), batch_s{k}_r{r}.safetensors (rank r's augmented
    crops of step k, one tensor per resolution group, image-major),
    grads_s{k}.safetensors (full gradients of step k) and params.safetensors
    (after the last step). The reference replays every step on the global
    batch, emulating the N ranks where VISSL's step depends on them:
    - RegNet-Y trunk (classy_vision / VISSL regnet: stem, Y blocks with SE,
      projection shortcut) run per resolution group, as VISSL's multi-crop;
      BatchNorm as PyTorch SyncBatchNorm over groups of `sync_group` ranks
      (batch statistics over the group's rows, gradients through them);
    - SwAV head (Linear / ReLU / Linear, then F.normalize) on each rank's
      crops, prototypes a bias-free Linear, L2-normalised before the step;
    - SwAVCriterion: per assignment crop, exp(scores / eps - all-reduced max)
      and distributed_sinkhornknopp with its guards, all sums over ranks; the
      queue as facebookresearch/swav keeps it (zeros, filled from
      queue_start_iter, used once full, scored with the current
      prototypes, queue columns first); cross-entropy against log_softmax of
      every other crop, averaged as VISSL; the loss of each rank averaged
      over ranks (DDP's gradient mean);
    - prototypes frozen (gradient dropped, as TEMP_FROZEN_PARAMS_ITER_MAP)
      for the first iterations;
    - apex LARC (trust, eps, no clip; decay and trust ratio only where the
      parameter and gradient norms are non-zero) around torch SGD with
      momentum, weight decay moved into LARC;
    - the lr from VISSL's resolved composite schedule (below).
    Checks: loss and gradients within 1e-5 relative at every step, the lr to
    1e-9, the parameters after the last step within 1e-5; and the initial
    convolutions' spread against torchvision's rule.

schedules FILE: FILE lists schedules (VISSL config values plus the
    executor's lr per step); each is resolved as vissl/utils/hydra_config.py
    does (auto_lr_scaling linear; resolve_linear_schedule: the warm-up starts
    at base x images per node / 256 and is dropped on one node where that
    start is not below the peak) and evaluated as ClassyVision's
    CompositeParamScheduler with interval_scaling [rescaled, fixed].
"""
import json
import math
import re
import pathlib
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from export_check import read_safetensors  # noqa: E402

torch.set_default_dtype(torch.float32)
torch.set_num_threads(1)
BN_EPS = 1e-5
WHERE_EPSILON = 1e-6  # ClassyVision CompositeParamScheduler


# ---------------------------------------------------------------- schedule

def linear(start, end, where):
    return end * where + start * (1 - where)


def cosine(start, end, where):
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * where))


def vissl_schedule(c):
    """The lr per step VISSL resolves for schedule case `c`."""
    base, bs = c["base_lr"], c["batch_per_replica"]
    nodes, per_node = c["num_nodes"], c["proc_per_node"]
    scaled = base * bs * nodes * per_node / 256.0
    start = base * bs * per_node / 256.0
    wf = c["warmup_fraction"]
    parts = [("linear", start, scaled, wf, "rescaled"), ("cosine", scaled, scaled * c["final_ratio"], 1.0 - wf, "fixed")]
    if wf == 0.0 or (nodes == 1 and start <= scaled):
        parts = parts[1:]
    lrs = []
    for k in range(c["total_steps"]):
        where = k / c["total_steps"]
        if len(parts) == 1:
            _, s, e, _, _ = parts[0]
            lrs.append(cosine(s, e, where))
            continue
        i, total = 0, parts[0][3]
        while where + WHERE_EPSILON > total and i < len(parts) - 1:
            i += 1
            total += parts[i][3]
        kind, s, e, length, scaling = parts[i]
        w = (where - (total - length)) / length if scaling == "rescaled" else where
        lrs.append(linear(s, e, w) if kind == "linear" else cosine(s, e, w))
    return lrs


def check_schedules(path):
    cases = json.loads(pathlib.Path(path).read_text())
    for c in cases:
        want = np.array(vissl_schedule(c))
        got = np.array(c["lrs"])
        assert want.shape == got.shape, (want.shape, got.shape)
        rel = np.abs(got - want) / np.abs(want)
        worst = int(rel.argmax())
        assert rel.max() < 1e-9, f"{c['num_nodes']} nodes: step {worst}: executor {got[worst]} vs VISSL {want[worst]}"
        warm = c["num_nodes"] > 1
        print(f"lr schedule, {c['num_nodes']} node(s) x {c['proc_per_node']} x {c['batch_per_replica']} images, "
              f"{c['total_steps']} steps: {'warm-up from ' + format(want[0], '.6g') if warm else 'no warm-up'}, "
              f"peak region {want.max():.6g}, max relative difference {rel.max():.1e}")


# ---------------------------------------------------------------- model

def sync_bn(x, w, b, groups):
    """PyTorch SyncBatchNorm in training mode over `groups` equal groups of
    ranks: the rows are the ranks' rows in rank order."""
    outs = []
    for chunk in x.chunk(groups, 0):
        outs.append(F.batch_norm(chunk, None, None, w, b, training=True, momentum=0.0, eps=BN_EPS))
    return torch.cat(outs, 0)


def conv(x, p, name, stride=1, groups=1, bias=False):
    w = p[name + ".weight"]
    pad = (w.shape[-1] - 1) // 2
    return F.conv2d(x, w, p[name + ".bias"] if bias else None, stride=stride, padding=pad, groups=groups)


def trunk(x, p, blocks, bn_groups):
    bn = lambda y, n: sync_bn(y, p[n + ".weight"], p[n + ".bias"], bn_groups)  # noqa: E731
    x = F.relu(bn(conv(x, p, "stem.conv", stride=2), "stem.bn"))
    for name in blocks:
        if not re.fullmatch(r"s\d+\.b\d+", name):
            continue
        stride = 2 if name.endswith(".b0") else 1
        if name + ".proj.weight" in p:
            short = bn(conv(x, p, name + ".proj", stride=stride), name + ".proj_bn")
        else:
            short = x
        y = F.relu(bn(conv(x, p, name + ".a"), name + ".a_bn"))
        wb = p[name + ".b.weight"]
        y = F.relu(bn(conv(y, p, name + ".b", stride=stride, groups=wb.shape[0] // wb.shape[1]), name + ".b_bn"))
        if name + ".se.reduce.weight" in p:
            s = F.adaptive_avg_pool2d(y, 1)
            s = F.relu(conv(s, p, name + ".se.reduce", bias=True))
            s = torch.sigmoid(conv(s, p, name + ".se.expand", bias=True))
            y = y * s
        y = bn(conv(y, p, name + ".c"), name + ".c_bn")
        x = F.relu(short + y)
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def head(hs, p, bn_groups):
    """VISSL's swav_head on every rank's rows (`hs`, one per rank): Linear,
    BatchNorm1d (use_bn: SyncBN over the ranks' groups), ReLU, ..., Linear;
    F.normalize; the prototypes."""
    layers = sorted({int(k.split(".")[2]) for k in p if re.fullmatch(r"head\.mlp\.\d+\.weight", k)})
    per_group = len(hs) // bn_groups
    for i in layers:
        hs = [F.linear(h, p[f"head.mlp.{i}.weight"], p[f"head.mlp.{i}.bias"]) for h in hs]
        if i != layers[-1]:
            if f"head.mlp.{i}.bn.weight" in p:
                w, b = p[f"head.mlp.{i}.bn.weight"], p[f"head.mlp.{i}.bn.bias"]
                hs = [y for g in range(bn_groups) for y in
                      F.batch_norm(torch.cat(hs[g * per_group:(g + 1) * per_group]), None, None, w, b, training=True, eps=BN_EPS)
                      .split([h.shape[0] for h in hs[g * per_group:(g + 1) * per_group]])]
            hs = [F.relu(h) for h in hs]
    embs = [F.normalize(h, dim=1, p=2) for h in hs]
    return embs, [F.linear(e, p["head.proto.weight"]) for e in embs]


# ---------------------------------------------------------------- SwAV

def distributed_sinkhornknopp(qs, num_iter):
    """vissl/losses/distibuted_sinkhornknopp.py over ranks' `[K, n_r]`
    matrices; all_reduce_sum is the sum over the list."""
    eps_num_stab = 1e-12
    qs = [q.clone() for q in qs]
    for q in qs:
        mask = torch.isinf(q)
        if mask.any():
            q[mask] = 0
            q[mask] = torch.max(q)
    sum_q = sum(q.sum() for q in qs)
    qs = [q / sum_q for q in qs]
    k = qs[0].shape[0]
    n_total = sum(q.shape[1] for q in qs)
    r = torch.ones(k, dtype=qs[0].dtype) / k
    for _ in range(num_iter):
        u = sum(q.sum(dim=1) for q in qs)
        if (u == 0).any():
            qs = [q + eps_num_stab for q in qs]
            u = sum(q.sum(dim=1) for q in qs)
        u = r / u
        mask = torch.isinf(u)
        if mask.any():
            u[mask] = 0
            u[mask] = torch.max(u)
        qs = [q * u.unsqueeze(1) for q in qs]
        qs = [q * ((torch.ones(q.shape[1], dtype=q.dtype) / n_total) / q.sum(dim=0)).unsqueeze(0) for q in qs]
    return [(q / q.sum(dim=0, keepdim=True)).t() for q in qs]


def swav_loss(scores, queues, protos, run, bs):
    """SwAVCriterion on every rank's `[num_crops * bs, K]` scores (crop-major
    rows); returns the mean over ranks of each rank's loss."""
    n_crops = sum(run["crops"])
    eps, temp = run["epsilon"], run["temperature"]
    totals = [0.0 for _ in scores]
    for i, crop_id in enumerate(run["crops_for_assign"]):
        with torch.no_grad():
            mine = [s[bs * crop_id: bs * (crop_id + 1)] for s in scores]
            queued = [q.scores(i, protos, bs) for q in queues] if queues else [None for _ in scores]
            cols = [s if qs is None else torch.cat((qs, s)) for s, qs in zip(mine, queued)]
            m = max((c / eps).max() for c in cols)  # all_reduce_max
            codes = distributed_sinkhornknopp([torch.exp(c / eps - m).t() for c in cols], run["sinkhorn_iters"])
            codes = [c[-bs:] for c in codes]
        for r, s in enumerate(scores):
            loss = 0.0
            others = [c for c in range(n_crops) if c != crop_id]
            for v in others:
                x = s[bs * v: bs * (v + 1)] / temp
                loss = loss - torch.mean(torch.sum(codes[r] * F.log_softmax(x, dim=1), dim=1))
            totals[r] = totals[r] + loss / len(others)
    return sum(t / len(run["crops_for_assign"]) for t in totals) / len(scores)


class Queue:
    """One rank's queue as facebookresearch/swav main_swav.py keeps it."""

    def __init__(self, assign, length, dim):
        self.emb = torch.zeros(assign, length, dim)
        self.pushes = 0

    def scores(self, i, protos, bs):
        if self.pushes * bs < self.emb.shape[1]:
            return None
        return self.emb[i].to(protos.dtype) @ protos.t()

    def push(self, emb, crops_for_assign, bs):
        for i, c in enumerate(crops_for_assign):
            self.emb[i, bs:] = self.emb[i, :-bs].clone()
            self.emb[i, :bs] = emb[c * bs:(c + 1) * bs].detach()
        self.pushes += 1


# ---------------------------------------------------------------- the step

def larc_sgd(params, grads, bufs, lr, run, frozen):
    """apex LARC (clip False) around torch.optim.SGD(momentum, nesterov
    False); LARC takes the weight decay over, SGD runs with none."""
    wd, trust, eps, mom = run["weight_decay"], run["larc_trust"], run["larc_eps"], run["momentum"]
    with torch.no_grad():
        for n, p in params.items():
            if n in frozen:
                continue  # grad is None: SGD skips it, no buffer is made
            g = grads[n].clone()
            p_norm, g_norm = torch.norm(p), torch.norm(g)
            if p_norm != 0 and g_norm != 0:
                adaptive = trust * p_norm / (g_norm + p_norm * wd + eps)
                g += wd * p
                g *= adaptive
            bufs[n] = g.clone() if n not in bufs else bufs[n].mul_(mom).add_(g)
            p.sub_(lr * bufs[n])


def rel(a, b):
    return (float(torch.norm(a - b)) / max(float(torch.norm(b)), 1e-30))


def flat(d, names):
    return torch.cat([d[n].reshape(-1) for n in names])


def load(path):
    tensors, _ = read_safetensors(path)
    return {k: torch.from_numpy(v) for k, v in tensors.items()}


def check_init(params):
    """torchvision / VISSL RegNet init: conv std sqrt(2 / (k*k*out)), not
    divided by the groups; BN weight 1, bias 0."""
    worst = 0.0
    for n, w in params.items():
        if w.dim() == 4 and w.numel() >= 500 and ".se." not in n:
            want = math.sqrt(2.0 / (w.shape[2] * w.shape[3] * w.shape[0]))
            worst = max(worst, abs(float(w.std()) / want - 1))
        if n.endswith("bn.weight"):
            assert torch.all(w == 1), n
        if n.endswith("bn.bias"):
            assert torch.all(w == 0), n
    assert worst < 0.15, f"a convolution's initial spread is {worst:.0%} off torchvision's sqrt(2 / (k^2 out))"
    return worst


def forward_backward(params, batches, run, queues, dtype):
    """One step's loss, gradients and embeddings from `params` in `dtype`
    (the queues are read, not pushed)."""
    world, bs = run["world"], run["images_per_rank"]
    bn_groups = world // run["sync_group"]
    leaves = {n: t.detach().to(dtype).requires_grad_(True) for n, t in params.items()}
    # Per resolution group: every rank's crops, crop-major (VISSL's
    # collator), ranks in order.
    feats = []
    for g, count in enumerate(run["crops"]):
        per_rank = []
        for b in batches:
            x = b[f"group{g}"].to(dtype)
            per_rank.append(x.view(bs, count, *x.shape[1:]).transpose(0, 1).reshape(bs * count, *x.shape[1:]))
        feats.append(trunk(torch.cat(per_rank), leaves, run["blocks"], bn_groups).chunk(world, 0))
    embs, scores = head([torch.cat([f[r] for f in feats]) for r in range(world)], leaves, bn_groups)
    loss = swav_loss(scores, queues, leaves["head.proto.weight"].detach(), run, bs)
    loss.backward()
    return float(loss.detach()), {n: t.grad for n, t in leaves.items()}, embs


def check_step(d):
    d = pathlib.Path(d)
    run = json.loads((d / "run.json").read_text())
    world, bs = run["world"], run["images_per_rank"]
    params = {n: t.clone() for n, t in load(d / "init.safetensors").items()}
    names = sorted(params)
    init_off = check_init(params)
    lrs = vissl_schedule(run["schedule"])
    queues = [Queue(len(run["crops_for_assign"]), run["queue_length"] // world, params["head.proto.weight"].shape[1])
              for _ in range(world)] if run["queue_length"] > 0 else None
    bufs = {}
    for step, rec in enumerate(run["steps"]):
        with torch.no_grad():
            params["head.proto.weight"].copy_(F.normalize(params["head.proto.weight"], dim=1, p=2))
        batches = [load(d / f"batch_s{step}_r{r}.safetensors") for r in range(world)]
        use_queue = queues if queues is not None and step >= run["queue_start_iter"] else None
        loss, grads, embs = forward_backward(params, batches, run, use_queue, torch.float32)
        # The same step in fp64: what the gradients are, and how far apart
        # two fp32 implementations of it can be (this one's distance).
        loss64, grads64, _ = forward_backward(params, batches, run, use_queue, torch.float64)
        if use_queue:
            for q, e in zip(use_queue, embs):
                q.push(e, run["crops_for_assign"], bs)
        got = {n: t.double() for n, t in load(d / f"grads_s{step}.safetensors").items()}
        loss_rel = abs(rec["loss"] - loss64) / abs(loss64)
        lr_rel = abs(rec["lr"] - lrs[step]) / lrs[step]
        grad_rel = rel(flat(got, names), flat(grads64, names))
        floor = rel(flat({n: g.double() for n, g in grads.items()}, names), flat(grads64, names))
        # Per tensor, leaving out gradients that are zero but for rounding
        # (a Linear's bias before a BN).
        live = [n for n in names if float(torch.norm(grads64[n])) > 1e-9]
        worst = max(live, key=lambda n: rel(got[n], grads64[n]))
        queued = use_queue is not None and use_queue[0].pushes * bs > use_queue[0].emb.shape[1]
        frozen = {"head.proto.weight"} if step < run["freeze_prototypes_iters"] else set()
        print(f"step {step}: loss {loss64:.7f} (executor {rec['loss']:.7f}, rel {loss_rel:.1e}); "
              f"lr {lrs[step]:.9g} (rel {lr_rel:.1e}); gradients rel {grad_rel:.1e} "
              f"(reference in fp32: {floor:.1e}; worst tensor {worst} {rel(got[worst], grads64[worst]):.1e}); "
              f"queue {'in Sinkhorn' if queued else 'filling' if use_queue else 'off'}; prototypes {'frozen' if frozen else 'trained'}")
        assert loss_rel < 1e-5, f"step {step}: loss {rec['loss']} vs reference {loss64}"
        assert lr_rel < 1e-9, f"step {step}: lr {rec['lr']} vs VISSL {lrs[step]}"
        # 1e-5, or as close as the reference's own fp32 run comes where
        # fp32 rounding alone (the stem's weight gradient, summed over every
        # pixel behind a BN) puts two correct implementations further apart.
        tol = max(1e-5, 2 * floor)
        assert grad_rel < tol, f"step {step}: gradients differ by {grad_rel:.2e} relative (fp32 reference: {floor:.2e})"
        larc_sgd(params, grads, bufs, lrs[step], run, frozen)
    final = load(d / "params.safetensors")
    p_rel = rel(flat(final, names), flat(params, names))
    worst = max(names, key=lambda n: rel(final[n], params[n]))
    moved = rel(flat(params, names), flat(load(d / "init.safetensors"), names))
    print(f"after {len(run['steps'])} steps: parameters rel {p_rel:.1e} (worst {worst} {rel(final[worst], params[worst]):.1e}); "
          f"moved {moved:.1e} from init; initial convolutions within {init_off:.0%} of torchvision's spread")
    assert moved > 1e-4, "the parameters barely moved: the comparison would be vacuous"
    assert p_rel < 1e-5, f"parameters after the steps differ by {p_rel:.2e} relative"


if __name__ == "__main__":
    if sys.argv[1] == "schedules":
        check_schedules(sys.argv[2])
    elif sys.argv[1] == "step":
        check_step(sys.argv[2])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
