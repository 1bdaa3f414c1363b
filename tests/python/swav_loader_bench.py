"""SwAV's own data pipeline (facebookresearch/swav, src/multicropdataset.py),
timed on the same encoded images `seerscale data bench` reads: PIL decode
and RGB conversion, then per crop RandomResizedCrop, horizontal flip,
colour distortion (ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) with p 0.8, gray
p 0.2), PIL Gaussian blur (p 0.5, radius 0.1-2), ToTensor, Normalize.

    python swav_loader_bench.py --data DIR --crops 2x160,4x96 [--workers 0,4,16] [--seconds 3]

Prints JSON: per worker count, decoded and multi-cropped images/s (0
workers: this process, one thread; N: a torch DataLoader with N worker
processes, batches of 32).
"""

import argparse
import io
import json
import os
import random
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import transforms

MEAN = [0.485, 0.456, 0.406]
STD = [0.228, 0.224, 0.225]


class RandomGaussianBlur:
    """SwAV's PILRandomGaussianBlur."""

    def __init__(self, p=0.5, radius_min=0.1, radius_max=2.0):
        self.p, self.lo, self.hi = p, radius_min, radius_max

    def __call__(self, img):
        if np.random.rand() > self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.lo, self.hi)))


def color_distortion(s=1.0):
    jitter = transforms.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
    return transforms.Compose([transforms.RandomApply([jitter], p=0.8), transforms.RandomGrayscale(p=0.2)])


def multi_crop(groups):
    """One transform per crop, as SwAV's MultiCropDataset builds them."""
    out = []
    for i, (count, size) in enumerate(groups):
        scale = (0.14, 1.0) if i == 0 else (0.05, 0.14)
        t = transforms.Compose(
            [
                transforms.RandomResizedCrop(size, scale=scale),
                transforms.RandomHorizontalFlip(p=0.5),
                transforms.Compose([color_distortion(), RandomGaussianBlur()]),
                transforms.ToTensor(),
                transforms.Normalize(mean=MEAN, std=STD),
            ]
        )
        out.extend([t] * count)
    return out


class Encoded(torch.utils.data.Dataset):
    def __init__(self, blobs, trans, length):
        self.blobs, self.trans, self.length = blobs, trans, length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        img = Image.open(io.BytesIO(self.blobs[i % len(self.blobs)])).convert("RGB")
        return [t(img) for t in self.trans]


def parse_crops(s):
    return [tuple(int(v) for v in g.split("x")) for g in s.split(",")]


def read_images(folder, n):
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpg", ".jpeg", ".png", ".webp")))[:n]
    return [open(os.path.join(folder, f), "rb").read() for f in names]


def timed(fn, seconds):
    done, start = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - start < seconds:
        done += fn(done)
    return done / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--crops", default="2x160,4x96")
    ap.add_argument("--workers", default="0")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    blobs = read_images(a.data, a.images)
    if not blobs:
        sys.exit(f"{a.data}: no JPEG, PNG or WebP image")
    trans = multi_crop(parse_crops(a.crops))
    rows = []
    for w in [int(v) for v in a.workers.split(",")]:
        if w == 0:
            decoded = timed(lambda k: (Image.open(io.BytesIO(blobs[k % len(blobs)])).convert("RGB").load(), 1)[1], a.seconds)
            ds = Encoded(blobs, trans, 1 << 30)
            cropped = timed(lambda k: (ds[k], 1)[1], a.seconds)
            rows.append({"workers": 0, "decoded_per_s": decoded, "images_per_s": cropped})
            continue
        batch = 32
        ds = Encoded(blobs, trans, 1 << 30)
        dl = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=w, persistent_workers=True, prefetch_factor=4)
        it = iter(dl)
        for _ in range(2 * w):
            next(it)  # every worker started and warm
        n, start = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - start < a.seconds:
            next(it)
            n += batch
        rows.append({"workers": w, "decoded_per_s": None, "images_per_s": n / (time.perf_counter() - start)})
        del it, dl
    print(json.dumps({"pipeline": "facebookresearch/swav multicropdataset (PIL + torchvision)", "pillow": Image.__version__, "torchvision": transforms.__name__ and __import__("torchvision").__version__, "crops": a.crops, "samples": len(blobs), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
