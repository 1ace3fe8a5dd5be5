"""Bundle manifest: parts recorded with checksums; a changed or missing file refuses to load."""
import pytest

from homefeed.bundle.manifest import BundleError, read_manifest, verify, write_part


def test_parts_recorded_and_verified(tmp_path):
    (tmp_path / "recall").mkdir()
    (tmp_path / "recall" / "itemcf.npz").write_bytes(b"abc")
    (tmp_path / "rank").mkdir()
    (tmp_path / "rank" / "model.pt").write_bytes(b"xyz")
    write_part(tmp_path, "recall", metrics={"hitrate@50": 0.3})
    write_part(tmp_path, "rank")
    m = verify(tmp_path, parts=("recall", "rank"))
    assert m["parts"]["recall"]["files"]["recall/itemcf.npz"]["bytes"] == 3
    assert m["parts"]["recall"]["metrics"] == {"hitrate@50": 0.3}
    # rebuilding one part keeps the other's record
    (tmp_path / "rank" / "model.pt").write_bytes(b"new model")
    write_part(tmp_path, "rank")
    assert "recall" in read_manifest(tmp_path)["parts"]
    verify(tmp_path)


def test_tampered_missing_and_absent(tmp_path):
    (tmp_path / "recall").mkdir()
    f = tmp_path / "recall" / "t.npz"
    f.write_bytes(b"abc")
    write_part(tmp_path, "recall")
    f.write_bytes(b"abd")
    with pytest.raises(BundleError, match="recall/t.npz.*checksum"):
        verify(tmp_path)
    f.unlink()
    with pytest.raises(BundleError, match="missing"):
        verify(tmp_path)
    with pytest.raises(BundleError, match="part 'rank' is missing"):
        f.write_bytes(b"abc")
        verify(tmp_path, parts=("rank",))
    with pytest.raises(BundleError, match="not a bundle"):
        verify(tmp_path / "nope")
