"""The bundle: every offline part fitted into one folder the server loads, with a manifest that vouches for it.

`build_bundle` loops over the stages' parts (`mechanism`, `data`, `recall`, `rank`); `manifest`
records each part's files with sizes and sha256 and a content version; `settings` checks every
knob before any work starts.
"""
from homefeed.bundle.manifest import BundleError, read_manifest, verify, write_part

__all__ = ["BundleError", "build_bundle", "read_manifest", "verify", "write_part"]


def build_bundle(*args, **kwargs):
    """`homefeed.bundle.build.build_bundle` (imported on use: it pulls in every stage)."""
    from homefeed.bundle.build import build_bundle as build

    return build(*args, **kwargs)
