"""Image dedup parts on hand-made images and vectors: loading, the CNN, grouping with a cosine re-check."""
import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from homefeed.mechanism import image_dedup as im


def test_load_images_from_npy_rows_and_files(tmp_path):
    bank = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", bank)
    Image.fromarray(np.full((64, 48, 3), 200, np.uint8)).save(tmp_path / "a.png")
    items = pl.DataFrame({"item_id": [1, 2, 3], "image": ["npy:2", "a.png", "npy:0"]})
    out = im.load_images(items, root=tmp_path)
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
    assert np.array_equal(out[0], bank[2]) and np.array_equal(out[2], bank[0]) and (out[1] == 200).all()


@pytest.mark.parametrize("ref, message", [("npy:7", "items row 0: image 'npy:7' is not a row of"),
                                          ("missing.png", "items row 0: column 'image': cannot read")])
def test_bad_image_references_name_the_row(tmp_path, ref, message):
    np.save(tmp_path / "images.npy", np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=message):
        im.load_images(pl.DataFrame({"item_id": [1], "image": [ref]}), root=tmp_path)


def test_cnn_shapes_and_save_load_round_trip(tmp_path):
    model = im.ImageCNN(5, hidden=8, width=4, blocks=2, input_pool=2, colours=6, grid=2).eval()
    x = torch.rand(3, 3, 32, 32)
    z, logits = model(x)
    assert z.shape == (3, 8) and logits.shape == (3, 5)
    im.save_cnn(model, tmp_path / "cnn.npz")
    back = im.load_cnn(tmp_path / "cnn.npz")
    assert torch.allclose(back.embed(x), model.embed(x))
    with pytest.raises(ValueError, match="at least 2 leaf categories"):
        im.ImageCNN(1)


def test_perturb_keeps_range_and_moves_at_most_a_pixel():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(4, 3, 8, 8)
    x[:, :, 4, 4] = 1.0
    y = im.perturb(x, g)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    peak = y.sum(1).flatten(1).argmax(1)
    assert ((peak // 8 - 4).abs() <= 1).all() and ((peak % 8 - 4).abs() <= 1).all()


def test_training_learns_leaves_from_pixels():
    # two leaves: red or blue images with noise; a short run must tell them apart
    rng = np.random.default_rng(0)
    leaf = np.repeat([0, 1], 64)
    images = np.zeros((128, 32, 32, 3), np.uint8)
    images[leaf == 0, :, :, 0] = 200
    images[leaf == 1, :, :, 2] = 200
    images = np.clip(images + rng.integers(0, 40, images.shape), 0, 255).astype(np.uint8)
    before = torch.get_num_threads()
    threads = 2 if before != 2 else 1
    seen = []
    cfg = im.ImageConfig(steps=20, batch_size=32, width=4, colours=4, hidden=8, leaf_weight=1.0, threads=threads)
    model = im.train_cnn(images, leaf, config=cfg, on_step=lambda step, m: seen.append(torch.get_num_threads()))
    assert set(seen) == {threads} and torch.get_num_threads() == before  # the setting is the run's, not the process's
    assert im.leaf_accuracy(model, images, leaf) == 1.0
    assert im.embed(model, images).shape == (128, 8)


def test_groups_from_given_vectors_with_cosine_recheck():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((200, 16)).astype(np.float32)
    vec = np.concatenate([base, base[:50] + 0.01 * rng.standard_normal((50, 16)).astype(np.float32)])
    items = pl.DataFrame({"item_id": np.arange(1, 251), "image_vec": vec.tolist()})
    groups = im.fit_image_groups(items, config=im.ImageConfig(max_distance=6, min_cosine=0.95, neighbours=0))
    labels = groups.table["image_group"].to_numpy()
    assert (labels[:50] == labels[200:]).all()
    assert len(np.unique(labels)) == 200
    assert groups.table["fingerprint"].dtype == pl.UInt64


def test_cosine_recheck_removes_fingerprint_collisions():
    vec = np.array([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [0.0, 1.0]], np.float32)
    fp = np.array([0, 1, 3, 0], np.uint64)  # item 3's fingerprint collides with item 0's
    cfg = im.ImageConfig(max_distance=1, min_cosine=0.9, neighbours=0)
    assert im.group_vectors(vec, fp, config=cfg).tolist() == [0, 0, 1, 2]
    assert im.group_vectors(vec, fp, config=cfg.model_copy(update={"min_cosine": None})).tolist() == [0, 0, 0, 0]  # 1~2 too


def test_exact_cosine_reference_by_hand():
    vec = np.array([[1, 0], [1, 0.05], [0, 1], [-1, -1]], np.float32)
    # centred on the mean: items 0 and 1 stay close, the others apart
    assert im.cosine_groups(vec, threshold=0.99).tolist() == [0, 0, 1, 2]
    assert im.hamming_to_cosine(0, 64) == pytest.approx(np.cos(np.pi * 0.5 / 64))


def test_local_scale_by_hand():
    pairs = np.array([[0, 1], [0, 2], [1, 2], [2, 3]])
    sigma = im.local_scale(pairs, np.array([0.1, 0.3, 0.2, 0.5]), 5, k=2, default=9.0)
    assert sigma.tolist() == [0.3, 0.2, 0.3, 9.0, 9.0]


def test_local_scaling_keeps_a_copy_in_a_crowd_and_drops_a_lookalike():
    # a crowd of 8 look-alikes (cosine ~0.97 to each other) holds one re-listed copy pair (cosine 0.999)
    rng = np.random.default_rng(0)
    centre = rng.standard_normal(32)
    crowd = centre + 0.17 * rng.standard_normal((8, 32))
    far = rng.standard_normal((40, 32)) * 3
    vec = np.vstack([crowd, crowd[:1] + 0.01 * rng.standard_normal((1, 32)), far]).astype(np.float32)
    fp = np.zeros(len(vec), np.uint64)  # every pair is a candidate
    cfg = im.ImageConfig(max_distance=0, min_cosine=0.9, neighbours=4, max_scaled_distance=0.2)
    labels = im.group_vectors(vec, fp, config=cfg)
    assert labels[0] == labels[8] and len(np.unique(labels[:8])) == 8
    assert len(np.unique(im.group_vectors(vec, fp, config=cfg.model_copy(update={"neighbours": 0}))[:9])) < 8


def test_exact_reference_equals_the_hashed_path_when_every_pair_is_a_candidate():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((60, 12)).astype(np.float32)
    vec = np.vstack([base, base[:20] + 0.05 * rng.standard_normal((20, 12)).astype(np.float32)])
    cfg = im.ImageConfig(max_distance=0, min_cosine=0.5, neighbours=3, max_scaled_distance=0.5)
    hashed = im.group_vectors(vec, np.zeros(len(vec), np.uint64), config=cfg)
    exact = im.cosine_groups(vec, threshold=0.5, neighbours=3, max_scaled_distance=0.5)
    assert np.array_equal(hashed, exact) and (hashed[:20] == hashed[60:]).all()
