"""Similar-image detection: a small CNN's image vectors -> SimHash fingerprints -> near-duplicate groups.

The same product is often listed many times (by other shops, in other venues) with the same photo,
shifted a pixel, re-compressed, colour-tweaked. A homepage showing three of them looks broken. This
module finds such groups:

1. images come from the catalogue's `image` column: "npy:ROW" rows of an `images.npy` array, image
   files read with Pillow (resized to 32x32), or vectors given in an `image_vec` list column;
2. a small CNN (B x 3 x 32 x 32 -> B x `hidden`: conv blocks for where things are, pooled 1x1 convs
   for which colours) is trained to classify an item's image into its leaf category; its last hidden
   layer is the image vector. Classification alone makes all items of a leaf look alike, so the same
   layer is also trained to tell images apart from each other but not from perturbed copies of
   themselves (instance discrimination, SimCLR: Chen et al. 2020), the perturbations being what
   re-listing does (a pixel of shift, colour jitter, noise), with batches of whole leaves so that the
   negatives are look-alikes. At inference the vector is averaged over the 9 one-pixel shifts;
3. SimHash (see `simhash.py`) maps vectors to 64-bit fingerprints; multi-index hashing finds all
   pairs within `max_distance` bits; each such candidate is re-checked by the cosine of its two
   vectors (a handful of dot products, not n^2), and union-find merges the survivors into groups.

    >>> groups = fit_image_groups(items, root="out/tiny")     # doctest: +SKIP
    >>> groups.table.head(2)                                  # item_id, image_group, fingerprint
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import nn
from torch.nn import functional as F

from homefeed.config import Section
from homefeed.mechanism.simhash import SimHasher, candidate_pairs, union_find
from homefeed.threads import torch_threads

SIZE = 32


class ImageConfig(Section):
    bits: int = 64  # SimHash fingerprint length (<= 64)
    max_distance: int = 11  # Hamming distance within which two fingerprints are candidate near-duplicates
    bands: int | None = None  # multi-index bands; None = 16-bit bands (4 for 64 bits)
    min_cosine: float | None = 0.95  # candidates must also have vector cosine >= this; None = fingerprints only
    neighbours: int = 5  # local scaling: compare with each item's k-th nearest candidate; 0 = off
    max_scaled_distance: float = 0.25  # kept if cosine distance <= this x the two items' local scale
    hidden: int = 64  # image vector size (last hidden layer)
    width: int = 16  # channels of the first conv block (then 2x)
    blocks: int = 2  # conv blocks (conv 3x3, batch norm, ReLU, max pool 2 except the last)
    input_pool: int = 2  # average-pool the 32x32 input by this factor first (speed)
    colours: int = 32  # 1x1-conv colour detectors pooled over the image
    grid: int = 4  # also max-pool the last conv map to grid x grid cells (where things are; 0 = none)
    leaf_batches: bool = True  # batches hold whole leaves, so instance negatives are look-alikes
    steps: int = 400  # optimisation steps (batches), however many passes over the images that is
    max_train_images: int = 5000  # train on a seeded sample this large (the features carry over to the rest)
    batch_size: int = 128
    lr: float = 0.01  # peak of the one-cycle schedule
    leaf_weight: float = 0.1  # weight of leaf classification
    instance_weight: float = 1.0  # weight of instance discrimination; 0 = leaf classification only
    temperature: float = 0.05
    seed: int = 0
    threads: int = 2  # torch CPU threads while training and embedding (restored after)


def load_images(items: pl.DataFrame, *, root: str | Path | None = None) -> np.ndarray:
    """uint8 (n, 32, 32, 3) images of `items` in row order, from their `image` column.

    'npy:ROW' reads row ROW of `root/images.npy`; any other value is an image file path (relative
    to `root`) read with Pillow. A missing or unreadable image is an error naming the row.
    """
    if "image" not in items.columns:
        raise ValueError(f"items have no 'image' column (columns: {items.columns}); give image vectors instead")
    root = Path(root or ".")
    refs = items["image"].to_list()
    out = np.zeros((len(refs), SIZE, SIZE, 3), np.uint8)
    is_npy = items["image"].str.starts_with("npy:").fill_null(False).to_numpy()
    if is_npy.any():
        bank = np.load(root / "images.npy", mmap_mode="r")
        rows = items["image"].str.strip_prefix("npy:").cast(pl.Int64, strict=False).to_numpy()
        bad = np.flatnonzero(is_npy & ((rows < 0) | (rows >= len(bank)) | np.isnan(rows.astype(float))))
        if bad.size:
            raise ValueError(f"items row {bad[0]}: image {refs[bad[0]]!r} is not a row of {root / 'images.npy'} ({len(bank)} rows)")
        out[is_npy] = _fit_size(np.asarray(bank[rows[is_npy].astype(np.int64)]))
    for i in np.flatnonzero(~is_npy):  # files: one Pillow decode each (offline only)
        out[i] = _read_file(root, refs[i], i)
    return out


def _fit_size(images: np.ndarray) -> np.ndarray:
    if images.shape[1:] == (SIZE, SIZE, 3):
        return images
    from PIL import Image
    return np.stack([np.asarray(Image.fromarray(im).convert("RGB").resize((SIZE, SIZE))) for im in images])


def _read_file(root: Path, ref: str | None, row: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    if not ref:
        raise ValueError(f"items row {row}: column 'image' is empty")
    try:
        with Image.open(root / ref) as im:
            return np.asarray(im.convert("RGB").resize((SIZE, SIZE)))
    except (FileNotFoundError, UnidentifiedImageError) as e:
        raise ValueError(f"items row {row}: column 'image': cannot read {root / ref}: {e}") from None


class ImageCNN(nn.Module):
    """B x 3 x 32 x 32 float images in [0, 1] -> B x hidden vectors (`embed`) and B x n_classes logits.

    Two branches meet in the hidden layer: conv blocks over the (average-pooled) image keep *where*
    things are, coarsely; 1x1 convolutions averaged over the whole image are a learned soft colour
    histogram, blind to shifts (Swain & Ballard 1991 colour indexing, made trainable).
    """

    def __init__(self, n_classes: int, *, hidden: int = 64, width: int = 16, blocks: int = 2, input_pool: int = 2,
                 colours: int = 32, grid: int = 0):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"need at least 2 leaf categories to classify, got {n_classes}")
        self.arch = dict(n_classes=n_classes, hidden=hidden, width=width, blocks=blocks, input_pool=input_pool,
                         colours=colours, grid=grid)  # saved with the weights

        def block(cin, cout, pool):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.MaxPool2d(2) if pool else nn.Identity())

        chans = [3, width] + [2 * width] * (blocks - 1)
        self.spatial = nn.Sequential(nn.AvgPool2d(input_pool), *(block(a, b, i < blocks - 1) for i, (a, b) in enumerate(zip(chans, chans[1:]))))
        self.colour = nn.Sequential(nn.Conv2d(3, colours, 1, bias=False), nn.BatchNorm2d(colours), nn.ReLU())  # (B, K, H, W)
        self.grid = grid
        n_spatial = chans[-1] * (2 + grid * grid)
        self.hidden = nn.Linear(n_spatial + 2 * colours, hidden)  # the image vector
        self.head = nn.Linear(hidden, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        f = self.spatial(x)  # (B, C, h, w)
        k = self.colour(x)  # how much of each colour (mean) and whether it occurs at all, e.g. a small mark (max)
        parts = [f.mean((2, 3)), f.amax((2, 3)), k.mean((2, 3)), k.amax((2, 3))]
        if self.grid:
            parts.append(F.adaptive_max_pool2d(f, self.grid).flatten(1))
        return self.hidden(torch.cat(parts, 1))  # (B, hidden)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.embed(x)
        return z, self.head(F.relu(z))


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, 32, 32)


def perturb(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A re-listed copy of each image (B, 3, H, W): shifted up to 1 px each way, colour jittered, noisy."""
    b, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    shift = torch.randint(0, 3, (b, 2), generator=g)
    out = torch.empty_like(x)
    for dy in range(3):  # 9 vectorised crops, one per shift
        for dx in range(3):
            rows = (shift[:, 0] == dy) & (shift[:, 1] == dx)
            out[rows] = padded[rows, :, dy:dy + h, dx:dx + w]
    out = out + (torch.rand(b, 3, 1, 1, generator=g) - 0.5) * 0.06
    out = out + torch.randn(out.shape, generator=g) * (4.0 / 255)
    return out.clamp(0, 1)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's contrastive loss: each view must pick its partner out of the 2B - 1 others."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2B, hidden)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    b = z1.shape[0]
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    return F.cross_entropy(sim, target)


def train_cnn(images: np.ndarray, labels: np.ndarray, *, config: ImageConfig | None = None,
              on_step: Callable[[int, ImageCNN], None] | None = None) -> ImageCNN:
    """Fit the CNN on uint8 images (n, 32, 32, 3) and integer leaf labels (n,); returns it in eval mode.

    Runs `config.steps` optimisation steps (as many passes over the images as that takes), each on
    two perturbed views of a batch: leaf cross-entropy on both plus the instance loss between them.
    """
    cfg = config or ImageConfig()
    with torch_threads(cfg.threads):
        torch.manual_seed(cfg.seed)
        g = torch.Generator().manual_seed(cfg.seed)
        if len(images) > cfg.max_train_images:
            pick = np.sort(np.random.default_rng(cfg.seed).choice(len(images), cfg.max_train_images, replace=False))
            images, labels = images[pick], np.asarray(labels)[pick]
        _, y = np.unique(labels, return_inverse=True)
        model = ImageCNN(int(y.max()) + 1, hidden=cfg.hidden, width=cfg.width, blocks=cfg.blocks, input_pool=cfg.input_pool,
                         colours=cfg.colours, grid=cfg.grid)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
        x_all, y_all = _to_tensor(images), torch.from_numpy(y.astype(np.int64))
        batches: list[torch.Tensor] = []
        for step in range(cfg.steps):
            if not batches:
                batches = [b for b in _batches(y, cfg.batch_size, g, by_leaf=cfg.leaf_batches) if len(b) > 1][::-1]
            idx = batches.pop()
            model.train()
            x, t = x_all[idx], y_all[idx]
            z1, logit1 = model(perturb(x, g))
            z2, logit2 = model(perturb(x, g))
            loss = 0.5 * cfg.leaf_weight * (F.cross_entropy(logit1, t) + F.cross_entropy(logit2, t))
            if cfg.instance_weight > 0:
                loss = loss + cfg.instance_weight * nt_xent(z1, z2, cfg.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if on_step is not None:
                on_step(step, model)
        return model.eval()


def _batches(y: np.ndarray, size: int, g: torch.Generator, *, by_leaf: bool) -> list[torch.Tensor]:
    """Shuffled index batches; with `by_leaf`, items of one leaf sit together (leaves in random order)."""
    perm = torch.randperm(len(y), generator=g)
    if by_leaf:
        leaf_rank = torch.randperm(int(y.max()) + 1, generator=g)[torch.from_numpy(y)]
        perm = perm[torch.argsort(leaf_rank[perm], stable=True)]
    return list(perm.split(size))


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Images (B, 3, H, W) moved dy, dx pixels (edges replicated)."""
    h, w = x.shape[2:]
    return F.pad(x, (1, 1, 1, 1), mode="replicate")[:, :, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


@torch.no_grad()
def embed(model: ImageCNN, images: np.ndarray, *, batch: int = 1024, shift_average: bool = True) -> np.ndarray:
    """float32 (n, hidden) image vectors; with `shift_average`, the mean over the 9 one-pixel shifts
    (test-time augmentation: a re-listed copy moved by a pixel gets the same vector)."""
    model.eval()
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)] if shift_average else [(0, 0)]
    out = np.zeros((len(images), model.hidden.out_features), np.float32)
    for i in range(0, len(images), batch):
        x = _to_tensor(images[i:i + batch])
        out[i:i + batch] = sum(model.embed(shifted(x, dy, dx)) for dy, dx in shifts).numpy() / len(shifts)
    return out


def leaf_accuracy(model: ImageCNN, images: np.ndarray, labels: np.ndarray) -> float:
    """Share of images whose predicted leaf is right (labels as given to `train_cnn`)."""
    classes, y = np.unique(labels, return_inverse=True)
    with torch.no_grad():
        pred = np.concatenate([model(_to_tensor(images[i:i + 2048]))[1].argmax(1).numpy() for i in range(0, len(images), 2048)])
    return float((pred == y).mean())


def save_cnn(model: ImageCNN, path: str | Path) -> None:
    """Weights and architecture as one .npz (no pickle)."""
    np.savez(path, arch=np.array(json.dumps(model.arch)), **{k: v.numpy() for k, v in model.state_dict().items()})


def load_cnn(path: str | Path) -> ImageCNN:
    with np.load(path, allow_pickle=False) as z:
        arch = json.loads(str(z["arch"]))
        state = {k: torch.from_numpy(z[k]) for k in z.files if k != "arch"}
    model = ImageCNN(arch.pop("n_classes"), **arch)
    model.load_state_dict(state)
    return model.eval()


def cosine_groups(vectors: np.ndarray, *, threshold: float, neighbours: int = 0, max_scaled_distance: float = 1.0,
                  batch: int = 2048) -> np.ndarray:
    """Exact reference, O(n^2): every pair with cosine >= threshold (and, with neighbours = k > 0, the
    same local-scaling rule as `group_vectors`, scales from exact k-th neighbours), then union-find."""
    v = np.asarray(vectors, np.float32)
    v = v - v.mean(axis=0)  # the same centring SimHash uses
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    pairs, cos, sigma = [], [], np.ones(len(v), np.float32)
    for lo in range(0, len(v), batch):
        s = v[lo:lo + batch] @ v.T  # (b, n)
        s[np.arange(len(s)), lo + np.arange(len(s))] = -np.inf  # not one's own neighbour
        if neighbours > 0:
            sigma[lo:lo + batch] = 1.0 - np.partition(s, -neighbours, axis=1)[:, -neighbours]
        i, j = np.nonzero(s >= threshold)
        keep = lo + i < j
        pairs.append(np.stack([lo + i[keep], j[keep]], axis=1))
        cos.append(s[i[keep], j[keep]])
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    if neighbours > 0 and len(pairs):
        dist = 1.0 - np.concatenate(cos)
        pairs = pairs[dist <= max_scaled_distance * np.sqrt(sigma[pairs[:, 0]] * sigma[pairs[:, 1]])]
    return union_find(len(v), pairs)


def hamming_to_cosine(max_distance: int, bits: int = 64) -> float:
    """The cosine SimHash's distance threshold stands for: E[hamming] = bits * angle / pi."""
    return float(np.cos(np.pi * (max_distance + 0.5) / bits))


class ImageGroups:
    """Near-duplicate image groups of a catalogue. `table`: item_id, image_group (Int64), fingerprint (UInt64)."""

    def __init__(self, table: pl.DataFrame, *, vectors: np.ndarray | None = None, model: ImageCNN | None = None,
                 hasher: SimHasher | None = None):
        self.table, self.vectors, self.model, self.hasher = table, vectors, model, hasher

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.table.write_parquet(folder / "image_groups.parquet")
        if self.hasher is not None:
            self.hasher.save(folder / "simhash.npz")
        if self.model is not None:
            save_cnn(self.model, folder / "image_cnn.npz")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "ImageGroups":
        folder = Path(folder)
        hasher = SimHasher.load(folder / "simhash.npz") if (folder / "simhash.npz").exists() else None
        model = load_cnn(folder / "image_cnn.npz") if (folder / "image_cnn.npz").exists() else None
        return cls(pl.read_parquet(folder / "image_groups.parquet"), model=model, hasher=hasher)


def image_vectors(items: pl.DataFrame, *, root: str | Path | None = None,
                  config: ImageConfig | None = None) -> tuple[np.ndarray, ImageCNN | None]:
    """(n, d) float32 vectors for `items`: the `image_vec` column if present, else a CNN trained here."""
    if "image_vec" in items.columns:
        return np.asarray(items["image_vec"].to_list(), np.float32), None
    images = load_images(items, root=root)
    with torch_threads((config or ImageConfig()).threads):
        model = train_cnn(images, items["leaf_category"].to_numpy(), config=config)
        return embed(model, images), model


def local_scale(pairs: np.ndarray, dist: np.ndarray, n: int, *, k: int, default: float) -> np.ndarray:
    """(n,) each item's distance to its k-th nearest candidate (`default` when it has fewer than k)."""
    who = np.concatenate([pairs[:, 0], pairs[:, 1]])
    d = np.concatenate([dist, dist])
    order = np.lexsort((d, who))
    who, d = who[order], d[order]
    start = np.searchsorted(who, np.arange(n))
    count = np.bincount(who, minlength=n)
    sigma = np.full(n, default)
    has = count >= k
    sigma[has] = d[start[has] + k - 1]
    return sigma


def group_vectors(vectors: np.ndarray, fingerprints: np.ndarray, *, config: ImageConfig | None = None) -> np.ndarray:
    """(n,) int64 group labels from fingerprints, re-checked with the vectors, merged by union-find.

    Candidates: fingerprint pairs within `max_distance` bits (multi-index hashing). A candidate is kept
    when its centred vectors reach `min_cosine` and, with `neighbours` = k > 0, when its cosine distance
    is small *relative to the two items' local density*: d_ij / sqrt(s_i s_j) <= `max_scaled_distance`,
    s_i being i's distance to its k-th nearest candidate (local scaling: Zelnik-Manor & Perona 2004).
    In a crowded leaf many different products look alike; a re-listed copy is close even there.
    """
    cfg = config or ImageConfig()
    pairs = candidate_pairs(fingerprints, max_distance=cfg.max_distance, bits=cfg.bits, bands=cfg.bands)
    if cfg.min_cosine is not None and len(pairs):
        v = np.asarray(vectors, np.float32)
        v = v - v.mean(axis=0)
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        cos = np.einsum("ij,ij->i", v[pairs[:, 0]], v[pairs[:, 1]])
        keep = cos >= cfg.min_cosine
        if cfg.neighbours > 0:
            dist = 1.0 - cos
            sigma = local_scale(pairs, dist, len(v), k=cfg.neighbours, default=1.0 - hamming_to_cosine(cfg.max_distance, cfg.bits))
            keep &= dist <= cfg.max_scaled_distance * np.sqrt(sigma[pairs[:, 0]] * sigma[pairs[:, 1]])
        pairs = pairs[keep]
    return union_find(len(fingerprints), pairs)


def fit_image_groups(items: pl.DataFrame, *, root: str | Path | None = None, config: ImageConfig | None = None,
                     vectors: np.ndarray | None = None) -> ImageGroups:
    """Group `items` by near-duplicate images (vectors given, from `image_vec`, or from the CNN on `image`)."""
    cfg = config or ImageConfig()
    model = None
    if vectors is None:
        vectors, model = image_vectors(items, root=root, config=cfg)
    hasher = SimHasher(bits=cfg.bits, seed=cfg.seed).fit(vectors)
    fp = hasher.transform(vectors)
    labels = group_vectors(vectors, fp, config=cfg)
    table = pl.DataFrame({"item_id": items["item_id"], "image_group": labels, "fingerprint": pl.Series(fp, dtype=pl.UInt64)})
    return ImageGroups(table, vectors=vectors, model=model, hasher=hasher)
