"""Item images as PNG for the console, from the items table's `image` column, served from memory.

An item's `image` is one of:

    npy:ROW        row ROW of the shop's `images.npy` (uint8, (n, H, W, 3)), as `homefeed generate` writes
    a file path    relative to the image folder (or absolute), read with Pillow and shrunk to THUMB pixels
    http(s)://...  the shop's own image server: the endpoint redirects the browser there
    empty / null   a neutral placeholder

`npy:` rows resolve against `BUNDLE/data/images.npy` when the bundle carries one, else against the
folder the dataset was ingested from (the manifest names the dataset; its `report.json` names the
source), the same folder `mechanism/image_dedup.py` read when it grouped near-duplicates. The bank is
memory-mapped; each PNG is encoded once and kept in a bounded LRU, so a page of cards costs no disk
read after the first view. Responses carry an ETag of (bundle version, item) and a day's max-age.

    >>> bank = ImageBank(bundle)                   # doctest: +SKIP
    >>> kind, body = bank.image(bundle.item_code("17"))   # ("png", b"\\x89PNG...") or ("url", "https://...")
"""
from __future__ import annotations

import io
import json
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

THUMB = 128  # longest side of an image read from a file (the synthetic shop's are 32 x 32)
CACHE_ITEMS = 20_000  # encoded PNGs kept (a 32 x 32 PNG is ~2 KB)
MAX_AGE_S = 86_400


def _png(pixels: np.ndarray | Image.Image) -> bytes:
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(np.asarray(pixels, np.uint8))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def _placeholder() -> bytes:
    """A neutral grey tile with a lighter inner frame: visibly 'no picture', never mistaken for an item."""
    tile = np.full((32, 32, 3), 214, np.uint8)
    tile[6:26, 6:26] = 232
    tile[10:22, 10:22] = 214
    return _png(tile)


PLACEHOLDER = _placeholder()


def image_folder(bundle_path: Path, manifest: dict) -> Path | None:
    """Where `npy:ROW` and relative paths resolve: the bundle's data folder when it holds images.npy, else the
    folder the bundle's dataset was ingested from (None when neither is on this machine)."""
    if (bundle_path / "data" / "images.npy").exists():
        return bundle_path / "data"
    part = manifest.get("parts", {}).get("data", {})
    dataset = part.get("dataset") or part.get("info", {}).get("dataset")
    report = Path(dataset) / "report.json" if dataset else None
    if report is None or not report.exists():
        return None
    try:
        source = Path(json.loads(report.read_text())["source"])
    except (ValueError, KeyError, TypeError):
        return None
    return source if source.is_dir() else None


class ImageBank:
    """The image of every item code of one bundle: `image(code)` -> ("png", bytes) or ("url", address)."""

    def __init__(self, refs: list[str | None], folder: Path | None):
        """refs: the `image` value per item code (index = code; None for code 0 and items without one)."""
        self.refs = refs
        self.folder = folder
        self._bank = None
        if folder is not None and (folder / "images.npy").exists():
            self._bank = np.load(folder / "images.npy", mmap_mode="r")
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.missing = 0  # images referenced but not readable here (served as the placeholder)

    @classmethod
    def of(cls, bundle) -> "ImageBank":
        """From a `ServingBundle`: its items table's `image` column, by item code."""
        refs: list[str | None] = [None] * bundle.n_items
        if "image" in bundle.items.columns:
            for code, ref in zip(bundle.items["item_id"].to_list(), bundle.items["image"].to_list()):
                refs[code] = ref or None
        return cls(refs, image_folder(bundle.path, bundle.manifest))

    def image(self, code: int) -> tuple[str, bytes | str]:
        """("url", address) for an image on the shop's server, else ("png", bytes): the item's, or the placeholder."""
        ref = self.refs[code] if 0 < code < len(self.refs) else None
        if ref and ref.startswith(("http://", "https://")):
            return "url", ref
        with self._lock:
            body = self._cache.get(code)
            if body is not None:
                self._cache.move_to_end(code)
                return "png", body
        body = self._encode(ref)
        with self._lock:
            self._cache[code] = body
            if len(self._cache) > CACHE_ITEMS:
                self._cache.popitem(last=False)
        return "png", body

    def _encode(self, ref: str | None) -> bytes:
        if not ref:
            return PLACEHOLDER
        try:
            if ref.startswith("npy:"):
                row = int(ref[4:])
                if self._bank is None or not 0 <= row < len(self._bank):
                    raise LookupError(ref)
                return _png(self._bank[row])
            path = Path(ref) if Path(ref).is_absolute() or self.folder is None else self.folder / ref
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.thumbnail((THUMB, THUMB))
                return _png(im)
        except (LookupError, ValueError, OSError):  # a reference this machine cannot read: the placeholder
            self.missing += 1
            return PLACEHOLDER

    def headers(self, version: str, code: int) -> dict[str, str]:
        return {"Cache-Control": f"public, max-age={MAX_AGE_S}", "ETag": f'"{version}-{code}"'}
