"""Standard categories on hand-made leaves: names, behaviour, overrides, expansion; ARI by hand."""
import numpy as np
import polars as pl
import pytest

from homefeed.mechanism import categories as c
from homefeed.mechanism.evaluate import adjusted_rand_index, pair_f1, pair_precision_recall


def shop():
    """Six leaves: three dresses, three coffees (paths messy: parents differ), two items each."""
    paths = ["Women>Dress>Lace Dress", "Apparel>mini-dress", "Dress>Dress Set",
             "Food>Drinks>Instant Coffee", "Coffee>Coffee Beans", "Grocery>Premium Coffee"]
    items = pl.DataFrame({"item_id": np.arange(1, 13), "leaf_category": np.repeat(np.arange(10, 16), 2),
                          "category_path": np.repeat(paths, 2)})
    # sessions: users browse dresses together and coffees together
    rows, ts = [], 0
    for user in range(40):
        group = [1, 3, 5] if user % 2 else [7, 9, 11]
        for item in group:
            rows.append((user, item, "pv", ts))
            ts += 60
        ts += 7200  # a new session
    events = pl.DataFrame(rows, schema=["user_id", "item_id", "behavior", "ts"], orient="row")
    return items, events


def test_char_ngrams_pad_words_and_drop_punctuation():
    assert c.char_ngrams("Mini-Dress", 3, 3) == [" mi", "min", "ini", "ni ", " dr", "dre", "res", "ess", "ss "]


def test_name_similarity_prefers_shared_words():
    sim = c.name_similarity(["Lace Dress", "mini-dress", "Instant Coffee"])
    assert sim[0, 1] > 0.3 > sim[0, 2] and np.allclose(np.diag(sim), 1.0)


@pytest.mark.parametrize("signals", [("name",), ("behavior",), ("name", "path", "behavior")])
def test_each_signal_recovers_the_two_groups(signals):
    items, events = shop()
    cats = c.fit_standard_categories(items, events, signals=signals, config=c.CategoryConfig(min_sessions=5))
    labels = cats.standard_of(np.arange(10, 16))
    assert adjusted_rand_index(labels, np.array([0, 0, 0, 1, 1, 1])) == 1.0, cats.table


def test_behaviour_similarity_by_hand():
    # leaves 0 and 1 always together in 3 sessions; leaf 2 alone in 2 sessions
    m = c.sp.csr_matrix(np.array([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 1]], np.float32))
    sim, support = c.behavior_similarity(m, dim=2)
    assert support.tolist() == [3, 3, 2]
    assert sim[0, 1] == pytest.approx(1.0, abs=1e-5) and sim[0, 2] == pytest.approx(0.0, abs=1e-5)


def test_overrides_win_and_bad_files_name_the_problem(tmp_path):
    items, events = shop()
    f = tmp_path / "map.csv"
    f.write_text("leaf_category,standard\n13,Dress\n10,Dress\n")
    cats = c.fit_standard_categories(items, events, overrides=f)
    s = cats.standard_of(np.array([10, 11, 13, 14]))
    assert s[0] == s[2] != s[3] and s[1] != s[0]  # leaf 13 moved to "Dress" with leaf 10; leaf 11 keeps its cluster
    assert cats.table.filter(pl.col("leaf_category") == 13)["source"].item() == "override"
    assert cats.table.filter(pl.col("leaf_category") == 13)["standard_name"].item() == "Dress"
    (tmp_path / "bad.csv").write_text("leaf,standard\n1,x\n")
    with pytest.raises(ValueError, match="bad.csv: missing columns \\['leaf_category'\\]"):
        c.fit_standard_categories(items, events, overrides=tmp_path / "bad.csv")


def test_expansion_and_lookup(tmp_path):
    items, events = shop()
    cats = c.fit_standard_categories(items, events)
    dress = cats.standard_of(np.array([10]))[0]
    assert cats.expand(np.array([10, 11, 12, 10, 99])).tolist() == [dress]  # unknown leaf 99 ignored
    assert cats.leaves_of(np.array([dress])).tolist() == [10, 11, 12]
    assert cats.standard_of(np.array([99])).tolist() == [c.UNKNOWN]
    back = c.StandardCategories.load(cats.save(tmp_path / "std.parquet"))
    assert back.table.equals(cats.table)
    assert cats.add_column(items)["standard_category"].null_count() == 0


def test_no_signal_is_an_error():
    items = pl.DataFrame({"item_id": [1], "leaf_category": [1]})
    with pytest.raises(ValueError, match="no signal"):
        c.fit_standard_categories(items, None)
    with pytest.raises(ValueError, match="unknown signals \\['colour'\\]"):
        c.fit_standard_categories(items, None, signals=("colour",))


def test_pair_metrics_by_hand():
    pred, truth = np.array([0, 0, 1, 1, 1]), np.array([0, 0, 0, 1, 1])
    # pred pairs: (0,1), (2,3), (2,4), (3,4) = 4; truth pairs: (0,1), (0,2), (1,2), (3,4) = 4; shared: (0,1), (3,4)
    assert pair_precision_recall(pred, truth) == (0.5, 0.5)
    assert pair_f1(pred, truth) == 0.5
    # ARI: tp=2, pp=tt=4, total=10, expected=1.6 -> (2-1.6)/(4-1.6)
    assert adjusted_rand_index(pred, truth) == pytest.approx(0.4 / 2.4)
    assert adjusted_rand_index(np.array([5, 5, 7]), np.array([1, 1, 2])) == 1.0
