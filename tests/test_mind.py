"""MIND: routing shapes, masking and K'_u, the random routing logits, the loss (negatives attended too), samples,
export equality, early stopping on validation HitRate (and the holdout without validation days), side fields
that tell items apart, the interest merges, and the `mind`/`mind1` channels under the recall contract with fast
settings, save/load and settings."""
from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from homefeed.data.user_state import UserState, states_at
from homefeed.recall import CHANNELS, make_channel
from homefeed.recall.mind import MIND, MIND1, MINDSettings
from homefeed.recall.ann import AnnIndex
from homefeed.recall.graph.eges import SideInfo
from homefeed.recall.mind.channel import example_inputs, informative_sides, merge_interests
from homefeed.recall.mind.evaluate import category_diversity
from homefeed.recall.mind.export import ExportMismatch, check_onnx, export_onnx, export_torchscript, load_torchscript
from homefeed.recall.mind.model import MINDModel, attended_scores, label_aware_attention, sampled_softmax_loss
from homefeed.recall.mind.profile import ProfileVocab
from homefeed.recall.mind.routing import CapsuleRouting, interest_count, squash
from homefeed.recall.mind.samples import NegativeSampler, build_sequences, state_behaviors
from homefeed.recall.mind.train import TrainSettings, train_mind
from homefeed.recall.mind.validate import Validation, holdout_split
from homefeed.recall.popular import Popular
from recall_contract import RecallerContract
from recall_fixtures import DAY, T0, dataset_from, t, tiny_dataset

FAST = {"model": {"dim": 16, "max_len": 10, "hidden": [16]}, "train": {"epochs": 1, "negatives": 50, "batch_size": 256, "threads": 1}}


def fast(cls, **serve):
    return cls(settings=cls.Settings(**FAST, serve=serve))


def test_interest_count_follows_the_formula():
    n = torch.tensor([0, 1, 2, 3, 4, 7, 8, 15, 16, 100, 1000])
    for k in (1, 2, 4, 8):
        expected = [max(1, min(k, int(math.floor(math.log2(max(v, 1)))))) for v in n.tolist()]
        assert interest_count(n, k).tolist() == expected


def test_squash_keeps_direction_and_bounds_length():
    z = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.01, 0.0]])
    u = squash(z)
    assert torch.allclose(u[0], torch.tensor([0.6, 0.8]) * 25 / 26)
    assert torch.equal(u[1], torch.zeros(2)) and float(u[2].norm()) < 1e-3


def test_routing_shapes_and_interest_mask():
    routing = CapsuleRouting(8, 4, 20).eval()
    lengths = torch.tensor([0, 1, 4, 9, 20])
    real = torch.arange(20).unsqueeze(0) < lengths.unsqueeze(1)
    caps, weights, mask = routing(torch.randn(5, 20, 8), real)
    assert caps.shape == (5, 4, 8) and weights.shape == (5, 20, 4) and mask.shape == (5, 4)
    assert mask.sum(1).tolist() == [1, 1, 2, 3, 4]
    assert torch.all(caps[~mask] == 0) and torch.all(weights[~real] == 0)
    assert torch.all(weights.transpose(1, 2)[~mask] == 0)  # no behaviour routes to a closed interest
    assert torch.allclose(weights.sum(2)[real], torch.ones(int(real.sum())))  # each real behaviour splits itself fully
    assert torch.all(caps.norm(dim=2) < 1)


def test_padded_behaviours_change_nothing():
    torch.manual_seed(0)
    routing = CapsuleRouting(8, 3, 30).eval()
    x = torch.randn(2, 30, 8)
    real = torch.arange(30).unsqueeze(0) < torch.tensor([[12], [7]])
    noisy = torch.where(real.unsqueeze(2), x, torch.randn(2, 30, 8) * 100)  # garbage in the padded slots
    for a, b in zip(routing(x, real), routing(noisy, real)):
        assert torch.equal(a, b)
    # more padding: the first 12 slots route the same way (eval logits are a fixed draw per slot)
    short = routing(x[:, :12], real[:, :12])
    assert torch.allclose(short[0], routing(x, real)[0], atol=1e-6)
    # in training mode too, with the same noise
    routing.train()
    torch.manual_seed(1)
    a = routing(x, real)[0]
    torch.manual_seed(1)
    assert torch.equal(a, routing(noisy, real)[0])


def test_routing_logits_are_random_draws_not_parameters():
    routing = CapsuleRouting(8, 3, 10)
    assert [name for name, _ in routing.named_parameters()] == ["bilinear.weight"]
    assert "serve_logits" in dict(routing.named_buffers())
    x, real = torch.randn(1, 10, 8), torch.ones(1, 10, dtype=torch.bool)
    routing.train()
    assert not torch.equal(routing(x, real)[1], routing(x, real)[1]), "training draws new logits on every call"
    routing.eval()
    assert torch.equal(routing(x, real)[1], routing(x, real)[1]), "serving uses one fixed draw"
    model = MINDModel(n_items=20, side_codes=np.zeros((20, 0), np.int64), side_sizes=[], profile_sizes=[2, 3, 2, 2],
                      dim=8, interests=3, max_len=10)
    assert not any("logit" in name for name, _ in model.named_parameters())


def test_label_aware_attention_and_sampled_softmax():
    interests = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    mask = torch.tensor([[True, True, False]])
    target = torch.tensor([[2.0, 0.0]])
    hard = label_aware_attention(interests, mask, target, power=50.0)
    assert torch.allclose(hard, torch.tensor([[1.0, 0.0]]), atol=1e-6)  # the closed third interest is ignored
    assert torch.allclose(label_aware_attention(interests, mask, target, power=0.0), torch.tensor([[0.5, 0.5]]))
    user, tgt = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    negatives, neg_ids = torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([7, 3])
    zeros = torch.zeros(2)
    loss = sampled_softmax_loss(user, tgt, torch.tensor([3]), torch.zeros(1), negatives, neg_ids, zeros)
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-1)))  # the accidental hit (id 3) is removed


def test_sequences_fold_repeats_and_match_serving():
    events = [(1, 5, "pv", t(0, 1)), (1, 5, "click", t(0, 1.1)), (1, 6, "pv", t(0, 2)), (1, 7, "pv", t(0, 3)),
              (1, 8, "cart", t(0, 4)), (2, 9, "pv", t(0, 5)), (2, 5, "pv", t(0, 6))]
    ds = dataset_from(events, n_items=10)
    seqs = build_sequences(ds.events, max_len=2)
    behaviors, targets, users = seqs.batch(np.arange(len(seqs)))
    assert targets.tolist() == [6, 7, 8, 5] and users.tolist() == [1, 1, 1, 2]
    assert behaviors.tolist() == [[0, 5], [5, 6], [6, 7], [0, 9]]
    assert len(build_sequences(ds.events, max_len=2, max_samples_per_user=1)) == 2
    only_pv = build_sequences(ds.events, max_len=3, behaviors=("pv",))
    assert only_pv.batch(np.arange(len(only_pv)))[1].tolist() == [6, 7, 5]
    state = states_at(ds.events, ds.users, t(1))[0]
    assert state_behaviors(state, max_len=4).tolist() == [5, 6, 7, 8]
    assert state_behaviors(state, max_len=6).tolist() == [0, 0, 5, 6, 7, 8]


def test_negative_samplers():
    counts = np.array([100, 50, 0, 10, 5])
    gen = torch.Generator().manual_seed(0)
    for kind in ("log_uniform", "unigram"):
        s = NegativeSampler(counts, kind=kind)
        draws = s.draw(20_000, gen)
        assert draws.min() >= 1 and s.p[0] == 0  # never the unknown item
        freq = np.bincount(draws.numpy(), minlength=5) / draws.numel()
        np.testing.assert_allclose(freq, s.p, atol=0.01)
        assert s.p[1] > s.p[3] > s.p[4]
    assert NegativeSampler(counts, kind="unigram").p[2] == 0
    with pytest.raises(ValueError, match="valid samplers"):
        NegativeSampler(counts, kind="uniform")


def test_profile_codes_agree_offline_and_online():
    users = pl.DataFrame({"user_id": [1, 2, 3], "gender": ["F", None, "M"], "age": [23, None, 61], "city": ["a", "b", None]})
    vocab = ProfileVocab.fit(users)
    codes = vocab.encode_users(users, 5)
    for uid, row in zip([1, 2, 3], users.drop("user_id").iter_rows(named=True)):
        np.testing.assert_array_equal(codes[uid], vocab.encode(row))
    assert codes[2, :2].tolist() == [0, 0] and codes[4].tolist() == [0, 0, 0, 0]
    assert vocab.encode({"gender": "X", "city": "a"}).tolist() == [0, 0, 1, 0]
    assert ProfileVocab.from_json(vocab.to_json()) == vocab


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    codes = np.stack([np.arange(30) % 4, np.arange(30) % 3], 1)
    model = MINDModel(n_items=30, side_codes=codes, side_sizes=[4, 3], profile_sizes=[3, 4, 2, 2], dim=8,
                      interests=3, max_len=12, hidden=(16,))
    return model.eval()


def test_export_equality(small_model, tmp_path):
    behaviors, profile = example_inputs(small_model.user, [3, 4, 2, 2], n=6)
    assert (behaviors > 0).sum(1).tolist() == sorted((behaviors > 0).sum(1).tolist())  # 0..L real slots
    path = export_torchscript(small_model.user, behaviors, profile, tmp_path / "tower.pt")
    loaded = load_torchscript(path)
    other_b, other_p = example_inputs(small_model.user, [3, 4, 2, 2], n=3, seed=5)  # another batch size
    eager, exported = small_model.user(other_b, other_p), loaded(other_b, other_p)
    assert torch.allclose(eager[0], exported[0], atol=1e-5)
    assert torch.equal(eager[1], exported[1]) and torch.equal(eager[2], exported[2])
    assert torch.all((eager[2] == 0) | (eager[2].unsqueeze(2) == other_b.unsqueeze(1)).any(2))  # triggers are behaviours
    pytest.importorskip("onnxruntime")
    export_onnx(small_model.user, behaviors, profile, tmp_path / "tower.onnx")
    assert check_onnx(small_model.user, tmp_path / "tower.onnx", other_b, other_p) < 1e-4
    with torch.no_grad():
        small_model.user.mlp[-1].bias.add_(1.0)  # a different tower no longer matches the file
    with pytest.raises(ExportMismatch, match="exceeds"):
        check_onnx(small_model.user, tmp_path / "tower.onnx", behaviors, profile)
    with torch.no_grad():
        small_model.user.mlp[-1].bias.sub_(1.0)


def test_category_diversity():
    cats = np.array([0, 1, 1, 2, 3])
    lists = np.array([[1, 2, 3], [4, 3, -1], [-1, -1, -1]])
    assert category_diversity(lists, cats) == pytest.approx((2 + 2) / 2)


class TestMINDContract(RecallerContract):
    def make(self):
        return fast(MIND)

    def make_keeping_bought(self):
        return fast(MIND, keep_bought=True)


class TestMIND1Contract(RecallerContract):
    def make(self):
        return fast(MIND1)

    def make_keeping_bought(self):
        return fast(MIND1, keep_bought=True)


def test_channels_are_registered_and_settings_checked():
    assert CHANNELS["mind"] is MIND and CHANNELS["mind1"] is MIND1
    assert make_channel("mind").settings.model.interests == 4
    assert make_channel("mind1", model={"dim": 8}).settings.model.interests == 1  # K = 1 survives other model keys
    with pytest.raises(ValueError, match="interest"):
        MINDSettings(model={"interest": 3})
    with pytest.raises(ValueError, match="valid behaviours"):
        MINDSettings(model={"behaviors": ["view"]})
    with pytest.raises(RuntimeError, match="not fitted"):
        MIND().recall(UserState(user_id=1, now=0), 5)


@pytest.fixture(scope="module")
def fitted_tiny():
    return fast(MIND).fit(tiny_dataset())


def test_interests_triggers_and_save_load(fitted_tiny, tmp_path):
    rec, ds = fitted_tiny, tiny_dataset()
    states = states_at(ds.events, ds.users, ds.split.valid_end)
    for s in states:
        vectors, triggers = rec.interests(s)
        n = int((state_behaviors(s, max_len=10) > 0).sum())
        assert vectors.shape == (max(1, min(4, int(math.log2(max(n, 1))) - rec.served_shift())), 16)
        assert np.isin(triggers, s.items).all()  # the reason is one of the user's behaviours
        rows, interest = rec.recall_with_interests(s, 8)
        assert interest.shape == (len(rows),) and interest.max(initial=0) < len(vectors)
        np.testing.assert_array_equal(rows.triggers, triggers[interest])
        assert np.all(np.diff(rows.scores) <= 0)  # served best first
        raw = rec.vectors_[rows.items] @ vectors.T
        for j in np.unique(interest):  # the quota merge interleaves each interest's own list in its own order
            own = raw[interest == j, j]
            assert np.all(np.diff(own) <= 1e-5), (j, own)
    by_max = MIND.__new__(MIND)
    by_max.__dict__.update(rec.__dict__)
    by_max.settings = rec.settings.model_copy(update={"serve": rec.settings.serve.model_copy(update={"interest_merge": "max"})})
    for s in states:  # merged on raw scores, each item scores its best interest's inner product
        vectors, _ = by_max.interests(s)
        rows, _ = by_max.recall_with_interests(s, 8)
        np.testing.assert_allclose(rows.scores, (by_max.vectors_[rows.items] @ vectors.T).max(1), rtol=1e-4, atol=1e-5)
    cold = rec.recall(UserState(user_id=0, now=ds.split.valid_end, profile={"gender": "F"}), 5)
    assert len(cold) == 5 and np.all(cold.triggers == -1)
    rec.save(tmp_path / "mind")
    written = {p.name for p in (tmp_path / "mind").iterdir()}
    assert {"settings.json", "meta.json", "model.npz", "vectors.npz", "index", "user_tower.pt"} <= written
    back = MIND.load(tmp_path / "mind")
    assert back.settings == rec.settings and back.profiles_ == rec.profiles_
    for s in states:
        a, b = rec.recall(s, 8), back.recall(s, 8)
        np.testing.assert_array_equal(a.items, b.items)
        np.testing.assert_array_equal(a.scores, b.scores)
    tower = load_torchscript(tmp_path / "mind" / "user_tower.pt")
    inputs = rec.inputs(states[0])
    with torch.no_grad():
        assert torch.allclose(tower(*inputs)[0], rec.model_.user(*inputs)[0], atol=1e-5)
    with pytest.raises(FileNotFoundError, match="model.npz"):
        MIND.load(tmp_path / "nothing")


def test_history_modes(fitted_tiny):
    ds = tiny_dataset()
    drop, first, score, recent = (fitted_tiny.with_serve(history=m) for m in ("drop", "first", "score", "recent"))
    assert drop.settings.serve.history == "drop" and fitted_tiny.settings.serve.history == "auto"
    tried = 0
    for s in states_at(ds.events, ds.users, ds.split.valid_end):
        seen = np.setdiff1d(np.unique(s.items), s.recent(behaviors=("buy",)))
        assert not np.isin(drop.recall(s, 12).items, s.items).any()
        got = first.recall(s, 12)
        head = got.items[:min(12, seen.size)]
        assert set(head.tolist()) <= set(seen.tolist()) and len(set(head.tolist())) == head.size
        assert np.all(np.diff(got.scores) <= 0)  # still ordered by score
        if seen.size and len(drop.recall(s, 12)):
            tried += 1
            vectors, _ = first.interests(s)
            best = (first.vectors_[head] @ vectors.T).max(1)
            assert np.all(np.diff(best) <= 1e-6)  # the history ordered by its best interest score
            if seen.size < 12:  # then the rest of the list: the dropped list's head
                np.testing.assert_array_equal(got.items[seen.size:], drop.recall(s, 12).items[:12 - seen.size])
        assert np.isin(score.recall(s, 12).items, s.recent(behaviors=("buy",))).sum() == 0
        newest = [i for i in dict.fromkeys(s.items[::-1].tolist()) if i in set(seen.tolist())][:12]
        assert recent.recall(s, 12).items[:len(newest)].tolist() == newest  # the history, the newest first
    assert tried > 0


def test_history_mode_is_picked_on_validation(fitted_tiny, tmp_path):
    from homefeed.recall.mind.history import MODES, pick

    scores = {"score": 0.2, "drop": 0.5, "first": 0.5, "recent": 0.4}
    assert pick(scores.get) == ("drop", scores)
    assert pick(lambda m: 0.0)[0] == "score"  # ties: the paper's way
    rec = fitted_tiny
    assert set(rec.history_scores_) == set(MODES) and rec.history_ == pick(rec.history_scores_.get)[0]
    check = Validation.of(tiny_dataset(), max_users=2000, k=50)
    for mode, value in rec.history_scores_.items():
        assert check.score(rec.with_serve(history=mode), tie_break=True) == pytest.approx(value, abs=1e-9)
        assert check.score(rec.with_serve(history=mode)) == pytest.approx(value, abs=1.01e-6)  # HR@50 + 1e-6 HR@10
    rec.save(tmp_path / "m")
    assert MIND.load(tmp_path / "m").history_ == rec.history_


def test_training_reports_progress_and_restores_threads(caplog):
    before = torch.get_num_threads()
    seen = []
    with caplog.at_level("INFO", logger="homefeed.recall.mind"):
        rec = MIND(settings=MINDSettings(**{**FAST, "train": {**FAST["train"], "epochs": 2, "threads": 1}}))
        rec.fit(tiny_dataset(), progress=lambda step, done, total: seen.append((step, done, total)))
    assert torch.get_num_threads() == before
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["mind epoch 1/2", "mind epoch 2/2", "mind"]
    assert caplog.records[-1].getMessage().startswith(f"mind: history mode {rec.history_} (validation HitRate@50")
    assert seen and seen[0][0] == "mind epoch 1/2" and seen[-1][0] == "mind epoch 2/2" and seen[-1][2] == 2
    assert len(rec.log_["epoch_loss"]) == 2 and rec.log_["samples"] == 2 * len(build_sequences(
        tiny_dataset().events_in("train"), max_len=10, max_samples_per_user=30))


def test_attended_scores_score_each_candidate_by_its_own_interest():
    torch.manual_seed(0)
    interests, candidates = torch.randn(3, 4, 8), torch.randn(5, 8)
    mask = torch.tensor([[True, True, False, False], [True] * 4, [True, False, False, False]])
    for power in (0.0, 2.0):
        got = attended_scores(interests, mask, candidates, power)  # (3, 5)
        for c in range(5):  # one candidate at a time, as the target is attended
            user = label_aware_attention(interests, mask, candidates[c].expand(3, 8), power)
            assert torch.allclose(got[:, c], (user * candidates[c]).sum(1), atol=1e-5)
    hard = attended_scores(interests, mask, candidates, 200.0)
    best = torch.einsum("bkd,cd->bkc", interests, candidates).masked_fill(~mask.unsqueeze(2), -1e9).max(1).values
    assert torch.allclose(hard, best, atol=1e-3)  # large p: each candidate's best open interest, as served


def test_attending_negatives_changes_k_gt_1_only():
    torch.manual_seed(0)
    args = dict(n_items=40, side_codes=np.zeros((40, 0), np.int64), side_sizes=[], profile_sizes=[2], dim=8, max_len=10)
    behaviors, profile = torch.randint(1, 40, (6, 10)), torch.zeros(6, 1, dtype=torch.int64)
    targets, negatives, logq = torch.randint(1, 40, (6,)), torch.randint(1, 40, (20,)), torch.zeros(20)
    losses = {}
    for k in (1, 3):
        for attend in (True, False):
            torch.manual_seed(1)
            model = MINDModel(interests=k, attend_negatives=attend, power=5.0, **args).eval()  # eval: one routing draw
            with torch.no_grad():
                model.items.ids.weight.mul_(40)  # scores far from 0: the attention no longer averages the interests
                losses[k, attend] = float(model.loss(behaviors, profile, targets, logq[:6], negatives, logq))
    assert losses[1, True] == pytest.approx(losses[1, False], rel=1e-6)
    assert losses[3, True] != pytest.approx(losses[3, False], rel=1e-3)


def _tiny_training(ds):
    seqs = build_sequences(ds.events_in("train"), max_len=10)
    model = MINDModel(n_items=ds.n_items, side_codes=np.zeros((ds.n_items, 0), np.int64), side_sizes=[],
                      profile_sizes=[1], dim=8, interests=2, max_len=10, hidden=(8,))
    return model, seqs, np.zeros((ds.n_users, 1), np.int64), NegativeSampler(seqs.counts(ds.n_items))


def test_early_stopping_keeps_the_best_checked_epoch():
    model, seqs, profiles, sampler = _tiny_training(tiny_dataset())
    scores, seen = iter([0.1, 0.3, 0.2, 0.25, 0.2, 0.9]), []

    def validate():
        assert not model.training  # scored as served
        seen.append(model.items.ids.weight.detach().clone())
        return next(scores)

    log = train_mind(model, seqs, profiles, sampler, settings=TrainSettings(epochs=10, patience=3, check_steps=1, threads=1),
                     validate=validate)
    assert log["valid_epochs"] == [1, 2, 3, 4, 5] and log["best_epoch"] == 2  # 3 checks without a better score
    assert len(log["epoch_loss"]) == 5 and torch.equal(model.items.ids.weight, seen[1])
    assert not torch.equal(seen[1], seen[4])


def test_small_logs_are_checked_every_few_epochs():
    model, seqs, profiles, sampler = _tiny_training(tiny_dataset())
    steps = -(-len(seqs) // 512)
    log = train_mind(model, seqs, profiles, sampler, validate=lambda: 0.5,
                     settings=TrainSettings(epochs=7, patience=5, check_steps=2 * steps + 1, threads=1))
    assert log["valid_epochs"] == [3, 6, 7] and log["best_epoch"] == 3  # every 3rd epoch, and the last


def test_validation_scores_the_channel_on_users_with_a_history():
    ds = tiny_dataset()
    check = Validation.of(ds, max_users=100, k=3)
    users, _ = (ds.events_in("valid")["user_id"].unique().sort().to_numpy(), None)
    history = set(ds.events_in("train")["user_id"].to_list())
    assert [s.user_id for s in check.states] == [u for u in users if u in history]
    assert all(s.now == ds.split.train_end and s.items.size for s in check.states)
    pop = Popular().fit(ds)
    expected = np.mean([np.isin(rel, pop.recall(s, 3).items).any() for s, rel in zip(check.states, check.relevant)])
    assert check.score(pop) == pytest.approx(expected)
    assert len(Validation.of(ds, max_users=1, k=3).states) == 1
    nothing = dataset_from([(1, 1, "pv", t(0)), (1, 2, "pv", t(0, 1))], n_items=3)  # no valid events
    assert Validation.of(nothing, max_users=10, k=3) is None


def test_holdout_split_moves_the_last_training_events_to_validation():
    ds = tiny_dataset()
    inner = holdout_split(ds, 0.25)
    train = ds.events_in("train")["ts"].to_numpy()
    assert inner.split.valid_end == ds.split.train_end and inner.events is ds.events
    assert inner.events_in("valid").height == pytest.approx(0.25 * train.size, abs=2)
    assert inner.events_in("train")["ts"].max() < inner.events_in("valid")["ts"].min()
    assert holdout_split(ds, 0.0) is None


def test_fit_without_validation_days_picks_epochs_on_a_holdout_and_refits():
    rng = np.random.default_rng(0)
    rows = [(u, int(i), "pv", T0 + d * DAY + h * 600) for u in range(1, 41) for d in range(4)
            for h, i in enumerate(rng.integers(1, 30, 3))]
    ds = dataset_from(rows, n_items=30, train_end=T0 + 4 * DAY, valid_end=T0 + 4 * DAY)  # everything is training
    rec = MIND(settings=MINDSettings(**{**FAST, "train": {**FAST["train"], "epochs": 4, "check_steps": 1}})).fit(ds)
    inner = rec.log_["holdout"]
    assert inner["valid_epochs"] and 1 <= inner["best_epoch"] <= 4
    assert len(rec.log_["epoch_loss"]) == inner["best_epoch"] and rec.log_["valid"] == []  # refit: that many epochs
    assert rec.log_["samples"] > inner["samples"] / max(len(inner["epoch_loss"]), 1) * inner["best_epoch"] - 1


def test_constant_side_fields_are_dropped():
    codes = np.array([[0, 0, 0], [3, 1, 0], [4, 1, 2], [3, 1, 0]])  # field 1: one placeholder for all; field 2 tells 2 apart
    side = informative_sides(SideInfo(codes, [5, 2, 3], ["leaf", "brand", "shop"]))
    assert side.names == ["leaf"] and side.sizes == [5] and side.codes.tolist() == [[0], [3], [4], [3]]


def test_interest_merges():
    vectors = np.array([[0, 0], [10, 0], [9, 0], [8, 0], [0, 1], [0, 0.9]], np.float32)
    index = AnnIndex.build(vectors[1:], ids=np.arange(1, 6), spec="Flat")
    queries = np.array([[1, 0], [0, 1]], np.float32)  # a strong interest (scores 8-10) and a weak one (about 1)
    best = merge_interests(index, queries, 3, channel="mind", exclude=None, how="max")
    assert best.items.tolist() == [1, 2, 3]  # the long vector fills the list
    ranked = merge_interests(index, queries, 4, channel="mind", exclude=np.array([1]), how="rank")
    assert ranked.items.tolist() == [2, 4, 3, 5]  # interleaved: each interest's first, then each one's second
    unit = merge_interests(index, queries * np.array([[1], [20]], np.float32), 3, channel="mind", exclude=None, how="unit")
    assert unit.items.tolist() == [1, 2, 3]  # the length of a query no longer decides
    quota = merge_interests(index, queries, 4, channel="mind", exclude=None, how="quota", weights=np.array([3.0, 1.0]))
    assert quota.items.tolist() == [1, 2, 4, 3]  # 3:1 quota: the main interest's 1st and 2nd, the minor one's 1st, then 3rd
    even = merge_interests(index, queries, 4, channel="mind", exclude=np.array([1]), how="quota")
    assert even.items.tolist() == ranked.items.tolist()  # equal weights: the round robin
    with pytest.raises(ValueError, match="quota weights"):
        merge_interests(index, queries, 3, channel="mind", exclude=None, how="quota", weights=np.array([1.0]))
    with pytest.raises(ValueError, match="valid: max, unit, rank"):
        merge_interests(index, queries, 3, channel="mind", exclude=None, how="mean")


def test_pooled_interest_is_the_one_interest_capsule_beside_the_routed_ones():
    torch.manual_seed(0)
    x, real = torch.randn(3, 12, 8), torch.arange(12).unsqueeze(0) < torch.tensor([[0], [3], [12]])
    routed = CapsuleRouting(8, 3, 12).eval()
    pooled = CapsuleRouting(8, 3, 12, pooled=True).eval()
    single = CapsuleRouting(8, 1, 12).eval()
    pooled.load_state_dict(routed.state_dict())
    single.bilinear.load_state_dict(routed.bilinear.state_dict())
    caps, weights, mask = pooled(x, real)
    assert caps.shape == (3, 4, 8) and weights.shape == (3, 12, 4) and mask[:, 0].all()
    assert torch.allclose(caps[:, 0], single(x, real)[0][:, 0], atol=1e-6)  # the K = 1 capsule
    base = routed(x, real)
    assert torch.equal(caps[:, 1:], base[0]) and torch.equal(mask[:, 1:], base[2])
    assert torch.all(weights[:, :, 0][~real] == 0) and torch.allclose(weights[1:, :, 0].sum(1), torch.ones(2))
    v, m, triggers = MINDModel(n_items=20, side_codes=np.zeros((20, 0), np.int64), side_sizes=[], profile_sizes=[1],
                               dim=8, interests=3, max_len=12, pooled=True).eval().user(
        torch.tensor([[0] * 9 + [4, 5, 6]]), torch.zeros(1, 1, dtype=torch.int64))
    assert v.shape == (1, 4, 8) and m.tolist() == [[True, True, False, False]] and triggers[0, 0] in (4, 5, 6)
