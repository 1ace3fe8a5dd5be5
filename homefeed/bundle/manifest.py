"""The bundle: one folder holding every artefact the server needs, and a manifest that vouches for it.

    BUNDLE/
      manifest.json          format version, content version, creation time, config, and per part:
                             files with size and sha256, the part's evaluation metrics, when it was built
      data/ recall/ rank/ mechanism/   one sub-folder per part

Parts are written independently (`write_part`), so rebuilding one part reuses the others. Loading
(`verify`) recomputes every checksum and refuses a bundle whose files differ from the manifest,
naming the file, so a half-copied or edited bundle never serves. `version` is a hash of every
file's checksum and the config, so two bundles built within one second still differ, and the same
content rebuilt keeps its version (per-user state built for it stays valid).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

FORMAT_VERSION = 1


class BundleError(RuntimeError):
    """A bundle that is missing, incomplete or does not match its manifest."""


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(bundle: str | Path) -> dict:
    path = Path(bundle) / "manifest.json"
    if not path.exists():
        return {"format_version": FORMAT_VERSION, "parts": {}}
    return json.loads(path.read_text())


def content_version(manifest: dict) -> str:
    """16 hex digits of sha256 over every part's file checksums and the config: equal content, equal version."""
    h = hashlib.sha256()
    for part in sorted(manifest.get("parts", {})):
        for rel, meta in sorted(manifest["parts"][part]["files"].items()):
            h.update(f"{rel}\0{meta['sha256']}\n".encode())
    h.update(json.dumps(manifest.get("config", {}), sort_keys=True).encode())
    return h.hexdigest()[:16]


def _write_manifest(bundle: Path, manifest: dict) -> None:
    tmp = bundle / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, bundle / "manifest.json")  # atomic: a reader sees the old or the new manifest


def write_part(bundle: str | Path, part: str, *, metrics: dict | None = None, config: dict | None = None,
               info: dict | None = None) -> dict:
    """Record every file now under `bundle/part/` in the manifest, with sizes and checksums."""
    bundle = Path(bundle)
    folder = bundle / part
    if not folder.is_dir():
        raise BundleError(f"part {part!r} has no folder {folder}")
    files = {str(p.relative_to(bundle)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file()}
    manifest = read_manifest(bundle)
    manifest["format_version"] = FORMAT_VERSION
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if config is not None:
        manifest["config"] = config
    manifest["parts"][part] = {"files": files, "metrics": metrics or {}, "built": manifest["updated"], **(info or {})}
    manifest["version"] = content_version(manifest)
    _write_manifest(bundle, manifest)
    return manifest["parts"][part]


def verify(bundle: str | Path, *, parts: tuple[str, ...] = ()) -> dict:
    """Check the bundle against its manifest; return the manifest or raise BundleError naming the problem."""
    bundle = Path(bundle)
    if not (bundle / "manifest.json").exists():
        raise BundleError(f"{bundle} is not a bundle (no manifest.json); build one with `homefeed build DATASET --out {bundle}`")
    manifest = read_manifest(bundle)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{bundle}: bundle format {manifest.get('format_version')} but this homefeed reads {FORMAT_VERSION}")
    for part in parts:
        if part not in manifest["parts"]:
            raise BundleError(f"{bundle}: part {part!r} is missing; parts present: {', '.join(manifest['parts']) or 'none'}")
    for name, part in manifest["parts"].items():
        for rel, meta in part["files"].items():
            path = bundle / rel
            if not path.exists():
                raise BundleError(f"{bundle}: {rel} (part {name}) is missing")
            if path.stat().st_size != meta["bytes"] or sha256(path) != meta["sha256"]:
                raise BundleError(f"{bundle}: {rel} (part {name}) does not match its checksum in manifest.json")
    return manifest
