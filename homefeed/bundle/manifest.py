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

Signing: a manifest hashes its files but not itself, so anyone who can write the folder can change a file and
recompute the manifest. With a key (`bundle.key_file`, `load_key`), `sign_bundle` adds `signature`: HMAC-SHA256 over
the canonical JSON of the whole manifest minus that field (file lists, sizes, checksums, config, metrics, version),
and `verify(..., key=)` refuses a bundle that is unsigned or whose manifest changed since, naming what failed and
never any part of the key. A reload can then trust a bundle built on another machine that holds the same key.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from pathlib import Path

FORMAT_VERSION = 1
SIGNATURE_ALG = "hmac-sha256"
MIN_KEY_BYTES = 16  # a shorter key can be guessed


class BundleError(RuntimeError):
    """A bundle that is missing, incomplete or does not match its manifest."""


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_key(path: str | Path) -> bytes:
    """The signing key: the first line of the file at `path` (surrounding whitespace dropped), as bytes.

    BundleError when the file is missing, unreadable, empty or shorter than MIN_KEY_BYTES; the message names the
    file and never shows any of its content."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 16)
    except FileNotFoundError:
        raise BundleError(f"bundle.key_file: {path} does not exist; create it with a random first line, "
                          f"e.g. `openssl rand -hex 32 > {path}`") from None
    except OSError as e:
        raise BundleError(f"bundle.key_file: cannot read {path}: {e.strerror or type(e).__name__}") from None
    key = raw.split(b"\n", 1)[0].strip()
    if not key:
        raise BundleError(f"bundle.key_file: {path} is empty (the key is its first line)")
    if len(key) < MIN_KEY_BYTES:
        raise BundleError(f"bundle.key_file: the key in {path} is {len(key)} bytes; use at least {MIN_KEY_BYTES} "
                          f"(e.g. `openssl rand -hex 32`)")
    return key


def configured_key(key_file: str | Path | None) -> bytes | None:
    """`load_key(key_file)`, or None when no key file is configured (`bundle.key_file = ""`): bundles are not signed."""
    return load_key(key_file) if key_file else None


def canonical(manifest: dict) -> bytes:
    """The bytes a signature covers: the manifest minus `signature`, as JSON with sorted keys and no spacing."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def signature(manifest: dict, key: bytes) -> dict:
    """The `signature` entry for `manifest` under `key`."""
    return {"alg": SIGNATURE_ALG, "hmac": hmac.new(key, canonical(manifest), hashlib.sha256).hexdigest()}


def check_signature(manifest: dict, key: bytes, where: str | Path = "bundle") -> None:
    """Raise BundleError unless `manifest` carries a valid signature under `key` (compared in constant time)."""
    sig = manifest.get("signature")
    if sig is None:
        raise BundleError(f"{where}: manifest.json is not signed, and this server requires signed bundles "
                          f"(bundle.key_file is set); build it with the same bundle.key_file, or sign it with "
                          f"`homefeed.bundle.manifest.sign_bundle`")
    if not isinstance(sig, dict) or sig.get("alg") != SIGNATURE_ALG or not isinstance(sig.get("hmac"), str):
        raise BundleError(f"{where}: manifest.json has a malformed signature (expected {{'alg': '{SIGNATURE_ALG}', "
                          f"'hmac': hex}})")
    if not hmac.compare_digest(sig["hmac"].encode(), signature(manifest, key)["hmac"].encode()):
        raise BundleError(f"{where}: manifest.json does not match its signature: it was changed after signing "
                          f"(file list, sizes, checksums, config or version) or signed with another key")


def sign_bundle(bundle: str | Path, key: bytes) -> dict:
    """Sign the bundle's manifest as it stands (after every `write_part`); returns the signed manifest."""
    bundle = Path(bundle)
    if not (bundle / "manifest.json").exists():
        raise BundleError(f"{bundle} is not a bundle (no manifest.json); nothing to sign")
    manifest = read_manifest(bundle)
    manifest["signature"] = signature(manifest, key)
    _write_manifest(bundle, manifest)
    return manifest


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


SECRETS = (("serve", "admin_token"),)  # config values never written into a bundle (it is copied and shown)


def without_secrets(config: dict) -> dict:
    """The config with every secret value replaced by "(set)" when set, so a bundle never carries the admin token."""
    out = json.loads(json.dumps(config))
    for section, key in SECRETS:
        if out.get(section, {}).get(key):
            out[section][key] = "(set)"
    return out


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
    manifest.pop("signature", None)  # it vouched for the old content; `sign_bundle` signs the new one
    manifest["format_version"] = FORMAT_VERSION
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if config is not None:
        manifest["config"] = without_secrets(config)
    manifest["parts"][part] = {"files": files, "metrics": metrics or {}, "built": manifest["updated"], **(info or {})}
    manifest["version"] = content_version(manifest)
    _write_manifest(bundle, manifest)
    return manifest["parts"][part]


def verify(bundle: str | Path, *, parts: tuple[str, ...] = (), key: bytes | None = None) -> dict:
    """Check the bundle against its manifest; return the manifest or raise BundleError naming the problem.

    With `key`, the manifest must carry a valid signature under it (checked before any listed file is read)."""
    bundle = Path(bundle)
    if not (bundle / "manifest.json").exists():
        raise BundleError(f"{bundle} is not a bundle (no manifest.json); build one with `homefeed build DATASET --out {bundle}`")
    manifest = read_manifest(bundle)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{bundle}: bundle format {manifest.get('format_version')} but this homefeed reads {FORMAT_VERSION}")
    if key is not None:
        check_signature(manifest, key, bundle)
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
