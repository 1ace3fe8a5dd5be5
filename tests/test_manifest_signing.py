"""Signed manifests: with a key, a bundle whose manifest was changed (even with every checksum recomputed) or that
is unsigned is refused, naming what failed and never the key; the key file's faults are clear errors."""
import json
import shutil

import pytest

from homefeed.bundle.manifest import (BundleError, configured_key, content_version, load_key, read_manifest, sha256,
                                      sign_bundle, verify, write_part)
from homefeed.serve.artefacts import ServingBundle

KEY = b"test-signing-key-7f3a9c0e5b21d846"
SECRET_TEXT = KEY.decode()


def small_bundle(folder):
    """A two-part bundle of small files, signed under KEY."""
    for part, files in {"recall": {"a.json": "[1, 2, 3]", "b.bin": "xyz"}, "rank": {"model.pt": "weights"}}.items():
        (folder / part).mkdir(parents=True)
        for name, text in files.items():
            (folder / part / name).write_text(text)
        write_part(folder, part, config={"seed": 7})
    sign_bundle(folder, KEY)
    return folder


def rewrite(folder, change):
    """Edit manifest.json as an attacker with write access would: change it, then recompute the version."""
    m = read_manifest(folder)
    change(m)
    m["version"] = content_version(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def refused(folder, key) -> str:
    """The message of the BundleError that verifying `folder` under `key` raises (it never shows the key)."""
    with pytest.raises(BundleError) as e:
        verify(folder, key=key)
    assert SECRET_TEXT not in str(e.value) and KEY.hex() not in str(e.value)
    return str(e.value)


def test_a_signed_bundle_verifies_and_the_signature_covers_the_whole_manifest(tmp_path):
    b = small_bundle(tmp_path)
    m = verify(b, key=KEY)
    assert m["signature"]["alg"] == "hmac-sha256" and len(m["signature"]["hmac"]) == 64
    verify(b)  # a server without a key still loads it


def test_a_changed_file_list_is_refused(tmp_path):
    b = small_bundle(tmp_path)
    rewrite(b, lambda m: m["parts"]["recall"]["files"].pop("recall/b.bin"))
    (b / "recall" / "b.bin").unlink()
    verify(b)  # without a key the emptied list passes: the attack the signature stops
    message = refused(b, KEY)
    assert "does not match its signature" in message, message


def test_a_changed_file_with_recomputed_checksums_is_refused(tmp_path):
    b = small_bundle(tmp_path)
    evil = b / "rank" / "model.pt"
    evil.write_text("other weights")

    def recompute(m):
        m["parts"]["rank"]["files"]["rank/model.pt"] = {"bytes": evil.stat().st_size, "sha256": sha256(evil)}
    rewrite(b, recompute)
    verify(b)  # the checksums alone vouch for the new file
    message = refused(b, KEY)
    assert "does not match its signature" in message and "checksums" in message, message


def test_a_changed_config_or_metric_is_refused(tmp_path):
    b = small_bundle(tmp_path)
    rewrite(b, lambda m: m["config"].update(seed=8))
    message = refused(b, KEY)
    assert "does not match its signature" in message, message


def test_a_wrong_key_is_refused_without_printing_either_key(tmp_path):
    b = small_bundle(tmp_path)
    other = b"another-key-0123456789abcdef0000"
    message = refused(b, other)
    assert "signed with another key" in message, message
    assert other.decode() not in message


def test_an_unsigned_bundle_is_refused_when_a_key_is_configured(tmp_path):
    b = small_bundle(tmp_path)
    m = read_manifest(b)
    del m["signature"]
    (b / "manifest.json").write_text(json.dumps(m))
    verify(b)
    message = refused(b, KEY)
    assert "not signed" in message and "bundle.key_file" in message, message


@pytest.mark.parametrize("bad", [None, "abc", {"alg": "md5", "hmac": "00"}, {"alg": "hmac-sha256", "hmac": 5}])
def test_a_malformed_signature_is_refused(tmp_path, bad):
    b = small_bundle(tmp_path)
    rewrite(b, lambda m: m.update(signature=bad))
    message = refused(b, KEY)
    assert ("not signed" if bad is None else "malformed signature") in message, message


def test_rebuilding_a_part_drops_the_stale_signature_until_signed_again(tmp_path):
    b = small_bundle(tmp_path)
    (b / "recall" / "a.json").write_text("[4]")
    write_part(b, "recall")
    message = refused(b, KEY)
    assert "not signed" in message, message
    sign_bundle(b, KEY)
    assert verify(b, key=KEY)["parts"]["recall"]["files"]["recall/a.json"]["bytes"] == 3


def test_load_key_reads_the_first_line_and_says_what_is_wrong(tmp_path):
    good = tmp_path / "key"
    good.write_bytes(KEY + b"\r\nsecond line is ignored\n")
    assert load_key(good) == KEY
    assert configured_key("") is None and configured_key(str(good)) == KEY
    with pytest.raises(BundleError, match="does not exist"):
        load_key(tmp_path / "absent")
    (tmp_path / "empty").write_text("\n\n")
    with pytest.raises(BundleError, match="is empty"):
        load_key(tmp_path / "empty")
    with pytest.raises(BundleError, match="cannot read"):
        load_key(tmp_path)  # a folder: unreadable as a file
    (tmp_path / "short").write_text("short-secret\n")
    with pytest.raises(BundleError, match="12 bytes; use at least 16") as e:
        load_key(tmp_path / "short")
    assert "short-secret" not in str(e.value)


def test_serving_refuses_a_tampered_signed_bundle_before_opening_its_files(tiny_bundle, tmp_path):
    b = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, b, ignore=shutil.ignore_patterns(".complete"))
    sign_bundle(b, KEY)
    assert ServingBundle.load(b, key=KEY).version == read_manifest(tiny_bundle)["version"]

    channels = b / "recall" / "channels.json"
    channels.write_text(channels.read_text() + "\n")  # same meaning, other bytes; checksums recomputed below

    def recompute(m):
        m["parts"]["recall"]["files"]["recall/channels.json"] = {"bytes": channels.stat().st_size,
                                                                 "sha256": sha256(channels)}
    rewrite(b, recompute)
    ServingBundle.load(b)  # unsigned trust: loads
    with pytest.raises(BundleError, match="does not match its signature") as e:
        ServingBundle.load(b, key=KEY)
    assert SECRET_TEXT not in str(e.value)

    rewrite(b, lambda m: m["parts"]["data"]["files"].update({"data/../../../../etc/hostname": {"bytes": 0, "sha256": ""}}))
    with pytest.raises(BundleError, match="does not match its signature"):  # refused before the path is looked at
        ServingBundle.load(b, key=KEY)


def test_the_admin_token_never_reaches_a_bundle(tmp_path):
    (tmp_path / "rank").mkdir()
    (tmp_path / "rank" / "model.pt").write_text("weights")
    write_part(tmp_path, "rank", config={"serve": {"admin_token": "s3cret-token;42", "history_len": 200}})
    text = (tmp_path / "manifest.json").read_text()
    assert "s3cret-token" not in text
    assert read_manifest(tmp_path)["config"]["serve"] == {"admin_token": "(set)", "history_len": 200}


def test_build_signs_with_the_configured_key_and_a_bad_key_file_stops_it_first(tiny_dataset_dir, tiny_bundle, tmp_path):
    from homefeed.bundle import build_bundle
    from homefeed.config import load_config

    key_file = tmp_path / "bundle.key"
    key_file.write_text(SECRET_TEXT + "\n")
    cfg = load_config(overrides=[f"bundle.key_file={key_file}"])
    shutil.copytree(tiny_bundle, tmp_path / "b")  # the other parts as built; the data part rebuilt and all signed
    build_bundle(tiny_dataset_dir, tmp_path / "b", cfg, parts=("data",))
    verify(tmp_path / "b", key=KEY)
    assert "signed with another key" in refused(tmp_path / "b", b"another-key-of-enough-length-0123")
    with pytest.raises(BundleError):
        build_bundle(tiny_dataset_dir, tmp_path / "c", load_config(overrides=[f"bundle.key_file={tmp_path / 'none'}"]),
                     parts=("data",))
    assert not (tmp_path / "c").exists()  # refused before any part was written
