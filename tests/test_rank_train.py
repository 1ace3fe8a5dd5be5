"""Training loop: learns the planted signal, seeded determinism, early stopping, checkpoints, optimisers."""
import numpy as np
import pytest
import torch
from torch import nn

from homefeed.evaluate.metrics import auc
from homefeed.rank.samples import SampleSettings, build_all
from homefeed.rank.train import TrainSettings, load_checkpoint, predict, train
from test_rank_samples import toy_dataset


class TinyModel(nn.Module):
    """Logistic regression over one shared embedding table + mean of the sequence (the batch contract)."""

    def __init__(self, spec, dim=4):
        super().__init__()
        sizes = torch.tensor([f.vocab_size for f in spec.sparse])
        self.register_buffer("offsets", torch.cumsum(sizes, 0) - sizes)
        self.table = nn.Embedding(int(sizes.sum()), dim)
        self.seq_offsets = self.offsets[spec.target_indices]
        self.dense = nn.Linear(len(spec.dense), 1)
        self.out = nn.Linear(2 * dim, 1)

    def forward(self, batch):
        e = self.table(batch["sparse"] + self.offsets).sum(1)                  # (B, D)
        h = self.table(batch["seq"] + self.seq_offsets).sum(2)                 # (B, L, D)
        mask = (batch["seq"][..., 0] > 0).unsqueeze(-1)
        pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.out(torch.cat([e, pooled], 1)).squeeze(-1) + self.dense(batch["dense"]).squeeze(-1)


@pytest.fixture(scope="module")
def parts():
    return build_all(toy_dataset(n_users=150, days=6), SampleSettings(drop_bots=False, active_min_actions=0))


FAST = TrainSettings(epochs=4, batch_size=256, lr=0.01, patience=2, seed=3, threads=1)


def _fit(parts, settings=FAST, model_cls=TinyModel):
    torch.manual_seed(settings.seed)
    model = model_cls(parts["train"].spec)
    return model, train(model, parts["train"], parts["valid"], settings)


def test_training_learns_the_planted_signal(parts):
    model, result = _fit(parts)
    test_auc = auc(parts["test"].tensors["label"].numpy(), predict(model, parts["test"]))
    assert result.best_valid_auc > 0.7 and test_auc > 0.7
    assert result.history[result.best_epoch]["valid_auc"] == result.best_valid_auc
    assert result.samples_per_s > 0 and len(result.history) >= 1


def test_same_seed_gives_the_same_model(parts):
    m1, r1 = _fit(parts)
    m2, r2 = _fit(parts)
    assert r1.best_valid_auc == r2.best_valid_auc
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    _, r3 = _fit(parts, FAST.model_copy(update={"seed": 4}))
    assert r3.history[0]["loss"] != r1.history[0]["loss"]


def test_early_stopping_keeps_the_best_epoch(parts):
    # a learning rate too small to move the AUC: epoch 0 stays best, then `patience` stale epochs stop it
    _, result = _fit(parts, FAST.model_copy(update={"lr": 1e-12, "epochs": 10, "patience": 3}))
    assert result.best_epoch == 0 and len(result.history) == 4


def test_checkpoint_round_trip(parts, tmp_path):
    model, result = _fit(parts, FAST.model_copy(update={"checkpoint_dir": str(tmp_path)}))
    assert result.checkpoint == tmp_path / "best.npz" and (tmp_path / "best.json").exists()
    fresh = TinyModel(parts["train"].spec)
    load_checkpoint(fresh, result.checkpoint)
    assert np.allclose(predict(fresh, parts["test"]), predict(model, parts["test"]))
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(nn.Linear(2, 1), result.checkpoint)


@pytest.mark.parametrize("optimizer", ["sparse_adam", "adagrad"])
def test_sparse_embedding_optimisers(parts, optimizer):
    model, result = _fit(parts, FAST.model_copy(update={"embedding_optimizer": optimizer}))
    assert model.table.sparse and result.best_valid_auc > 0.7


def test_bf16_autocast_trains(parts):
    _, result = _fit(parts, FAST.model_copy(update={"bf16": True, "epochs": 2}))
    assert result.best_valid_auc > 0.65


def test_rank_model_presets_train(parts):
    build_model = pytest.importorskip("homefeed.rank.model").build_model
    for preset in ("deepfm", "din"):
        torch.manual_seed(0)
        model = build_model(parts["train"].spec, preset, embed_dim=4, hidden=[16])
        result = train(model, parts["train"], parts["valid"], FAST.model_copy(update={"epochs": 2}))
        assert result.best_valid_auc > 0.65, preset


def test_empty_parts_are_a_clear_error(parts):
    empty = parts["valid"].__class__({k: v[:0] for k, v in parts["valid"].tensors.items()}, parts["valid"].ts[:0],
                                     parts["valid"].spec, parts["valid"].encoders, "exposures")
    with pytest.raises(ValueError, match="0 valid"):
        train(TinyModel(parts["train"].spec), parts["train"], empty, FAST)
