"""Checks `seerscale export`, `embed` and `eval knn` against PyTorch.

make-folders SRC DST: a labelled image folder (ImageFolder layout) of 64 px
    crops of the first photos in SRC, one class per photo: DST/train/<class>
    and DST/val/<class>.
check MODEL TRAIN_FEATURES VAL_FEATURES KNN_JSON K T: loads the exported
    trunk into torchvision's RegNet built from the same BlockParams with
    strict=True; its pooled features of the validation images equal
    seerscale's within 1e-5 relative; a numpy kNN on seerscale's features
    gives the same predictions and top-1 as `eval knn`.
Run by tests/export.rs with the project venv.
"""
import json
import pathlib
import struct
import sys
from functools import partial

import numpy as np
import torch
from PIL import Image
from torchvision.models.regnet import BlockParams, RegNet

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
DTYPES = {"F32": np.float32, "I64": np.int64, "F16": np.float16}


def read_safetensors(path):
    """(tensors as numpy arrays, metadata) of a safetensors file."""
    raw = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n :]
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        if info["dtype"] == "BF16":
            u16 = np.frombuffer(data[a:b], dtype=np.uint16).astype(np.uint32) << 16
            arr = u16.view(np.float32)
        else:
            arr = np.frombuffer(data[a:b], dtype=DTYPES[info["dtype"]])
        out[name] = arr.reshape(info["shape"]).copy()
    return out, meta


def make_folders(src, dst):
    photos = sorted(p for p in pathlib.Path(src).iterdir() if p.suffix == ".png")[:4]
    for p in photos:
        img = Image.open(p).convert("RGB").resize((256, 256), Image.BILINEAR)
        for split, count, start in (("train", 6, 0), ("val", 3, 6)):
            d = pathlib.Path(dst) / split / p.stem
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                k = start + i
                x, y = 24 * (k % 3) + 8 * (k // 3), 24 * (k // 3) + 16 * (k % 2)
                img.crop((x, y, x + 64, y + 64)).save(d / f"{k}.png")


def trunk_from_export(model_path):
    tensors, meta = read_safetensors(model_path)
    assert meta["format"] == "torchvision.models.RegNet", meta
    cfg = json.loads(meta["seerscale.model"])["regnet"]
    se = cfg.get("se_ratio", 0.25)
    params = BlockParams.from_init_params(
        depth=cfg["depth"], w_0=int(cfg["w_0"]), w_a=float(cfg["w_a"]), w_m=float(cfg["w_m"]),
        group_width=cfg["group_width"], bottleneck_multiplier=cfg.get("bottleneck_multiplier", 1.0),
        se_ratio=se if se > 0 else None)
    net = RegNet(params, stem_width=cfg.get("stem_width", 32), norm_layer=partial(torch.nn.BatchNorm2d, eps=1e-5, momentum=0.1))
    net.fc = torch.nn.Identity()
    trunk = {k: torch.from_numpy(v) for k, v in tensors.items() if not k.startswith("swav_head.")}
    net.load_state_dict(trunk, strict=True)
    assert any(k.startswith("swav_head.prototypes") for k in tensors), "the head is exported apart"
    return net.eval()


def check(model_path, train_path, val_path, knn_path, k, temperature):
    net = trunk_from_export(model_path)
    val, vmeta = read_safetensors(val_path)
    res = int(vmeta["resolution"])
    files = json.loads(vmeta["files"])
    xs = []
    for f in files:
        img = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0
        h, w, _ = img.shape
        side = round(res * 256 / 224)
        assert min(h, w) == side, "test images are made at the resize side, so no resampling differs"
        y0, x0 = (h - res) // 2, (w - res) // 2
        crop = (img[y0 : y0 + res, x0 : x0 + res] - MEAN) / STD
        xs.append(crop.transpose(2, 0, 1))
    with torch.no_grad():
        x = torch.from_numpy(np.stack(xs))
        ours = net.trunk_output(net.stem(x)).mean(dim=(2, 3)).numpy()
    theirs = val["features"]
    rel = np.abs(ours - theirs).max() / np.abs(theirs).max()
    assert rel < 1e-5, f"torchvision features differ from seerscale's by {rel:.2e} (relative)"

    train, tmeta = read_safetensors(train_path)
    label = lambda f, root: pathlib.Path(f).parent.name
    tfiles, vfiles = json.loads(tmeta["files"]), files
    classes = sorted({label(f, None) for f in tfiles})
    tl = np.array([classes.index(label(f, None)) for f in tfiles])
    vl = np.array([classes.index(label(f, None)) for f in vfiles])
    unit = lambda a: a.astype(np.float64) / np.maximum(np.linalg.norm(a.astype(np.float64), axis=1, keepdims=True), 1e-12)
    sim = unit(val["features"]) @ unit(train["features"]).T
    kk = min(k, len(tl))
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :kk]
    votes = np.zeros((len(vl), len(classes)))
    for i in range(len(vl)):
        for j in idx[i]:
            votes[i, tl[j]] += np.exp(sim[i, j] / temperature)
    pred = votes.argmax(axis=1)
    result = json.loads(pathlib.Path(knn_path).read_text())
    assert list(pred) == result["predictions"], f"numpy kNN {list(pred)} vs seerscale {result['predictions']}"
    top1 = float((pred == vl).mean())
    assert abs(top1 - result["top1"]) < 1e-12, (top1, result["top1"])
    print(f"torchvision strict load ok; features rel. diff {rel:.2e}; kNN top-1 {top1:.3f} (numpy) = {result['top1']:.3f} (seerscale)")


if __name__ == "__main__":
    if sys.argv[1] == "make-folders":
        make_folders(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]), float(sys.argv[7]))
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
