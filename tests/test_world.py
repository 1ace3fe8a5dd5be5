"""The synthetic shop: determinism, table contracts, truth consistency, simulator behaviour, Taobao CSV."""
import hashlib
import json

import numpy as np
import polars as pl
import pytest

from homefeed.world import Simulator, WorldSpec, generate, load_truth, write_taobao_csv
from homefeed.world.sampling import Grouping
from homefeed.world.spec import CHANNELS, POOLS

TZ = 8 * 3600


def mini(seed: int) -> WorldSpec:
    return WorldSpec.preset("tiny", seed=seed, n_users=300, n_items=300, n_standard=6, n_days=4)


def digests(folder) -> dict[str, str]:
    """sha256 of every file; the two world.json files compared without their timing."""
    out = {}
    for p in sorted(folder.rglob("*")):
        name = str(p.relative_to(folder))
        if p.is_file() and p.name != "world.json":
            out[name] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_file():
            world = json.loads(p.read_text())
            assert world.pop("timing_s")["total"] > 0
            out[name] = json.dumps(world, sort_keys=True)
    return out


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    steps = []
    paths = generate(WorldSpec.preset("tiny", seed=7), out, progress=lambda s, d, t: steps.append(s))
    assert steps[-1] == "write"
    assert set(paths) == {"events", "exposures", "items", "users", "images", "world", "truth"}
    tables = {name: pl.read_parquet(out / f"{name}.parquet") for name in ("events", "exposures", "items", "users")}
    return out, tables, load_truth(out)


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    a, b, c = (generate(mini(s), tmp_path / name)["truth"].parent for s, name in ((3, "a"), (3, "b"), (4, "c")))
    da, db, dc = digests(a), digests(b), digests(c)
    assert len(da) == 15 and da == db
    assert da["events.parquet"] != dc["events.parquet"] and da["items.parquet"] != dc["items.parquet"]


def test_thread_count_and_batches_leave_the_files_byte_identical(tmp_path):
    # the generator runs user batches and image slices on threads; the bytes must not depend on that
    one = generate(mini(3), tmp_path / "one", threads=1)["truth"].parent
    many = generate(mini(3).model_copy(update={"chunk_users": 100}), tmp_path / "many", threads=3)["truth"].parent
    d1, dn = digests(one), digests(many)
    for name in ("world.json", "truth/world.json"):  # the spec differs in chunk_users only
        d1.pop(name), dn.pop(name)
    assert len(d1) == 13 and d1 == dn


def test_tables_have_the_contract_columns_and_dtypes(shop):
    out, t, truth = shop
    S, I64, I32 = pl.String, pl.Int64, pl.Int32
    assert t["events"].schema == {"user_id": I64, "item_id": I64, "behavior": S, "ts": I64, "scene": S}
    assert t["exposures"].schema == {"request_id": I64, "user_id": I64, "item_id": I64, "ts": I64, "position": I32,
                                     "page": I32, "channel": S, "trigger_item": I64, "clicked": pl.Int8}
    assert t["items"].schema == {"item_id": I64, "leaf_category": I64, "category_path": S, "brand": I64, "shop": I64,
                                 "price": pl.Float64, "venue": I64, "image": S, "title": S, "pools": pl.List(S)}
    assert t["users"].schema == {"user_id": I64, "gender": S, "age": I32, "city": S, "purchase_power": I32}
    items, users = t["items"], t["users"]
    assert items["item_id"].to_list() == list(range(1, items.height + 1))
    assert users["user_id"].to_list() == list(range(1, users.height + 1))
    assert items["pools"].list.len().min() >= 1
    assert set(items["pools"].explode().unique().to_list()) <= set(POOLS)
    assert 0 < items["venue"].null_count() < items.height
    assert items["category_path"].str.contains(">").all() and (items["price"] > 0).all()
    assert set(users["gender"].unique()) == {"F", "M"} and users["purchase_power"].is_between(1, 5).all()
    images = np.load(out / "images.npy")
    assert images.shape == (items.height, 32, 32, 3) and images.dtype == np.uint8
    assert items["image"][4] == "npy:4"


def test_events_are_sorted_with_valid_behaviours_and_scenes(shop):
    _, t, _ = shop
    ev = t["events"]
    assert ev.select((pl.col("ts").diff() >= 0).all()).item()
    assert set(ev["behavior"].unique()) == {"pv", "click", "fav", "cart", "buy"}
    assert set(ev["scene"].unique()) == {"homepage", "search", "browse"}
    assert ev.filter((pl.col("scene") == "homepage") != (pl.col("behavior") == "click")).height == 0
    assert 50_000 <= ev.height <= 120_000 and 0.5 < t["exposures"].height / ev.height < 2


def test_every_click_exposure_has_its_click_event(shop):
    _, t, _ = shop
    clicks = t["exposures"].filter(pl.col("clicked") == 1).select("user_id", "item_id", "ts")
    events = t["events"].filter(pl.col("behavior") == "click").select("user_id", "item_id", "ts")
    assert clicks.height > 1000 and clicks.height == events.height
    assert clicks.join(events, on=["user_id", "item_id", "ts"], how="anti").height == 0


def test_requests_are_pages_of_one_user_with_known_channels(shop):
    _, t, _ = shop
    ex = t["exposures"]
    per = ex.group_by("request_id").agg(pl.len().alias("n"), pl.col("user_id").n_unique().alias("users"),
                                        pl.col("ts").n_unique().alias("times"), pl.col("position").n_unique().alias("pos"),
                                        pl.col("item_id").n_unique().alias("items"))
    assert (per["n"] == 12).all() and (per["users"] == 1).all() and (per["times"] == 1).all()
    assert (per["pos"] == 12).all() and (per["items"] == 12).all()
    assert ex["page"].is_between(0, 2).all() and set(ex["channel"].unique()) == set(CHANNELS)
    with_trigger = ex.filter(pl.col("trigger_item").is_not_null())["channel"].unique().to_list()
    assert with_trigger == ["itemcf_like"]


def test_ctr_is_in_range_and_falls_with_position(shop):
    _, t, truth = shop
    ex = t["exposures"]
    ctr = ex["clicked"].mean()
    assert 0.03 <= ctr <= 0.08 and truth.world["ctr"] == pytest.approx(ctr, abs=1e-6)
    by_pos = ex.group_by("position").agg(pl.col("clicked").mean()).sort("position")["clicked"]
    assert by_pos[0] > 1.5 * by_pos[11]


def item_standard(t, truth) -> pl.DataFrame:
    return t["items"].select("item_id", "leaf_category").join(truth.leaf_to_standard, on="leaf_category")


def test_recent_category_lifts_ctr_beyond_static_interest(shop):
    # the sequence effect a DIN/BST ranker can learn: within equal static interest, an item of the
    # category the user just saw is clicked far more often
    _, t, truth = shop
    std = item_standard(t, truth).select("item_id", "standard_category")
    seen = (t["events"].filter(pl.col("behavior").is_in(["pv", "click"])).join(std, on="item_id")
            .select("user_id", "ts", pl.col("standard_category").alias("last")).sort("ts"))
    ex = t["exposures"].join(std, on="item_id").sort("ts")
    ex = ex.join_asof(seen, on="ts", by="user_id", allow_exact_matches=False, check_sortedness=False)
    ex = ex.join(truth.user_interests, on=["user_id", "standard_category"], how="left").with_columns(
        strong=pl.col("weight").fill_null(0) > 0.3, recent=(pl.col("last") == pl.col("standard_category")).fill_null(False))
    rates = {(a, b): c for a, b, c in ex.group_by("strong", "recent").agg(pl.col("clicked").mean()).iter_rows()}
    assert rates[(True, True)] > 2 * rates[(True, False)] and rates[(False, True)] > 2 * rates[(False, False)]


def test_genuine_buys_respect_repurchase_cycles(shop):
    _, t, truth = shop
    std = item_standard(t, truth).select("item_id", "standard_category")
    noise = pl.concat([truth.fake_orders.select("user_id", "item_id", "ts"),
                       truth.spike_events.select("user_id", "item_id", "ts")])
    ev = t["events"].join(noise, on=["user_id", "item_id", "ts"], how="anti").join(std, on="item_id")

    def repeat_share(behavior: str) -> float:
        rows = ev.filter(pl.col("behavior") == behavior).sort("user_id", "standard_category", "ts")
        return rows.select(pl.col("ts").shift().over("user_id", "standard_category").is_not_null().mean()).item()

    # users keep carting within their categories, but rarely buy one again inside its cycle
    assert repeat_share("cart") > 0.3 and repeat_share("buy") < 0.08


def test_truth_tables_are_consistent(shop):
    _, t, truth = shop
    l2s = truth.leaf_to_standard
    assert l2s["leaf_category"].is_unique().all()
    assert set(t["items"]["leaf_category"].unique()) <= set(l2s["leaf_category"])
    # leaf names are variants of their standard name: "Dress>Lace Dress"
    std_name = t["items"]["category_path"].str.split(">").list.first()
    leaf_name = t["items"]["category_path"].str.split(">").list.last()
    share = pl.DataFrame({"s": std_name, "l": leaf_name}).select(
        pl.col("l").str.to_lowercase().str.contains(pl.col("s").str.to_lowercase(), literal=True).mean()).item()
    assert share > 0.95
    users = set(t["users"]["user_id"])
    assert truth.crawler_users.height >= 10 and set(truth.crawler_users["user_id"]) <= users
    interests = truth.user_interests.group_by("user_id").agg(pl.col("weight").sum(), pl.len())
    assert np.allclose(interests["weight"], 1.0) and interests["len"].is_between(2, 5).all()
    cycles = truth.repurchase
    assert cycles.filter(pl.col("kind") == "durable")["cycle_days"].is_between(60, 365).all()
    assert cycles.filter(pl.col("kind") == "consumable")["cycle_days"].is_between(3, 30).all()
    assert truth.arrays["item_vec"].shape == (t["items"].height + 1, 16)
    assert truth.arrays["user_vec"].shape == (t["users"].height + 1, 16)


def test_fake_orders_are_buys_without_an_earlier_view(shop):
    _, t, truth = shop
    fake, ev = truth.fake_orders, t["events"]
    buys = ev.filter(pl.col("behavior") == "buy")
    assert 0.01 <= fake.height / buys.height <= 0.03
    assert fake.join(buys, on=["user_id", "item_id", "ts"]).height == fake.height
    viewed = ev.filter(pl.col("behavior") != "buy").select("user_id", "item_id", pl.col("ts").alias("seen"))
    assert fake.join(viewed, on=["user_id", "item_id"]).filter(pl.col("seen") <= pl.col("ts")).height == 0
    genuine = buys.join(fake, on=["user_id", "item_id", "ts"], how="anti")
    first_view = viewed.group_by("user_id", "item_id").agg(pl.col("seen").min())
    assert genuine.join(first_view, on=["user_id", "item_id"], how="left").filter(
        pl.col("seen").is_null() | (pl.col("seen") > pl.col("ts"))).height == 0


def test_crawlers_are_fast_or_pv_only_and_shoppers_are_not(shop):
    _, t, truth = shop
    ev = t["events"].join(truth.crawler_users, on="user_id", how="left")
    per_min = ev.filter(pl.col("behavior") == "pv").group_by("user_id", "kind", pl.col("ts") // 60).len()
    peak = per_min.group_by("user_id", "kind").agg(pl.col("len").max())
    assert peak.filter(pl.col("kind") == "burst")["len"].min() > 30
    assert peak.filter(pl.col("kind").is_null())["len"].max() <= 20
    slow = ev.filter(pl.col("kind") == "slow")
    assert slow.height == 0 or (slow["behavior"] == "pv").all()


def test_spike_events_fall_in_the_local_midnight_window(shop):
    _, t, truth = shop
    spike = truth.spike_events
    assert spike.height > 20 and set(spike["behavior"].unique()) <= {"cart", "buy"}
    local = (spike["ts"] + TZ) % 86400
    assert (local < 600).all()
    assert spike.join(t["events"], on=["user_id", "item_id", "ts", "behavior"]).height == spike.height


def test_near_duplicate_images_are_closer_than_siblings(shop):
    out, t, truth = shop
    images = np.load(out / "images.npy").reshape(t["items"].height, -1).astype(np.float32)
    groups = truth.image_groups.join(t["items"].select("item_id", "leaf_category"), on="item_id")
    big = groups.filter(pl.len().over("image_group") > 1).sort("image_group", "item_id")
    pairs = big.group_by("image_group").agg(pl.col("item_id").first().alias("a"), pl.col("item_id").last().alias("b"),
                                            pl.col("leaf_category").n_unique().alias("leaves"))
    assert pairs.height > 30 and (pairs["leaves"] == 1).all()
    dup = np.abs(images[pairs["a"] - 1] - images[pairs["b"] - 1]).mean(axis=1)
    sib = groups.filter(pl.len().over("image_group") == 1).group_by("leaf_category").agg(
        pl.col("item_id").first().alias("a"), pl.col("item_id").last().alias("b")).filter(pl.col("a") != pl.col("b"))
    other = np.abs(images[sib["a"] - 1] - images[sib["b"] - 1]).mean(axis=1)
    assert np.median(dup) < 0.5 * np.median(other)


def forced(truth, seed=0):
    """A simulator whose users always click and, unless blocked by a repurchase cycle, always buy."""
    truth.arrays = dict(truth.arrays, click_theta=truth.arrays["click_theta"].copy(),
                        funnel_phi=truth.arrays["funnel_phi"].copy())
    truth.arrays["click_theta"][0] = 50.0
    truth.arrays["funnel_phi"][4:6] = 1.0  # buy after cart / direct buy
    return Simulator(truth, seed=seed)


def test_simulator_blocks_repurchase_inside_the_cycle(shop):
    out, _, _ = shop
    truth = load_truth(out)
    sim = forced(truth)
    std = truth.arrays["item_standard"]
    s = int(truth.repurchase.sort("cycle_days")["standard_category"][0])  # shortest cycle
    cycle = int(truth.repurchase.filter(pl.col("standard_category") == s)["cycle_days"].item())
    a, b = np.flatnonzero(std == s)[:2]
    users = np.arange(1, 401)
    t0 = truth.world["end_ts"]
    first = sim.respond_many(users[:200], np.full((200, 1), a), t0)
    assert first["bought"].mean() == 1.0
    again = sim.respond_many(users, np.full((400, 1), b), t0 + 86400)  # same category, a day later
    assert again["bought"][:200].mean() < 0.15 and again["bought"][200:].mean() == 1.0
    later = sim.respond_many(users[:200], np.full((200, 1), b), t0 + (cycle + 2) * 86400)
    assert later["bought"].mean() == 1.0


def test_simulator_ctr_rises_with_affinity_and_falls_with_fatigue(shop):
    out, _, truth = shop
    users = np.flatnonzero(truth.arrays["user_role"] == 0)[1:301]
    aff = truth.arrays["user_vec"][users] @ truth.arrays["item_vec"][1:].T
    top, bottom = np.argsort(-aff, axis=1)[:, :10] + 1, np.argsort(aff, axis=1)[:, :10] + 1
    ts = truth.world["end_ts"]
    high = Simulator.load(out, seed=1).respond_many(users, top, ts)["clicked"].mean()
    low = Simulator.load(out, seed=1).respond_many(users, bottom, ts)["clicked"].mean()
    assert high > 0.05 and high > 10 * low
    sim = Simulator.load(out, seed=1)
    first = sim.respond_many(users, top, ts)
    second = sim.respond_many(users, top, ts + 60)
    # users who clicked nothing changed only by fatigue: every item is now less likely to be clicked
    calm = first.group_by("request").agg(pl.col("clicked").sum()).filter(pl.col("clicked") == 0)["request"]
    assert len(calm) > 30
    p1, p2 = (df.filter(pl.col("request").is_in(calm.implode()))["p_click"].to_numpy() for df in (first, second))
    assert (p2 < p1).all()


def test_simulator_is_deterministic_and_handles_unknown_ids(shop):
    out, t, _ = shop
    a = Simulator.load(out, seed=5).respond(3, [1, 2, 3, 4], 1_512_000_000)
    b = Simulator.load(out, seed=5).respond(3, [1, 2, 3, 4], 1_512_000_000)
    assert a.equals(b) and a.columns == ["position", "item_id", "p_click", "clicked", "bought"]
    assert a["position"].to_list() == [0, 1, 2, 3]
    stranger = Simulator.load(out).respond(10**9, [1, 2], 1_512_000_000)
    assert stranger["p_click"].is_between(0, 1).all()
    with pytest.raises(ValueError, match=r"unknown item ids \[999999\]"):
        Simulator.load(out).respond(3, [1, 999_999], 1_512_000_000)


def test_taobao_csv_round_trips(shop, tmp_path):
    out, t, _ = shop
    path = tmp_path / "UserBehavior.csv"
    n = write_taobao_csv(out / "events.parquet", path)
    back = pl.read_csv(path, has_header=False, new_columns=["user_id", "item_id", "category_id", "behavior", "ts"])
    assert n == back.height == t["events"].height
    assert back["user_id"].dtype == pl.Int64 and set(back["behavior"].unique()) == {"pv", "fav", "cart", "buy"}
    assert back["ts"].to_list() == t["events"]["ts"].to_list()
    leaf = t["items"].select("item_id", "leaf_category")
    assert back.join(leaf, on="item_id").filter(pl.col("category_id") != pl.col("leaf_category")).height == 0


def test_spec_rejects_unknown_presets_and_keys():
    with pytest.raises(ValueError, match="valid sizes: tiny, small, large"):
        WorldSpec.preset("huge")
    with pytest.raises(ValueError, match="n_user"):
        WorldSpec.preset("tiny", n_user=5)
    assert WorldSpec.preset("small", seed=3).n_users == 25_000


def test_grouping_draws_by_weight_inside_groups():
    g = Grouping.build(np.array([1, 0, 1, 1]), np.array([1.0, 5.0, 1.0, 2.0]), n_groups=3)
    assert g.ptr.tolist() == [0, 1, 4, 4] and g.members.tolist() == [1, 0, 2, 3]
    assert g.cum.tolist() == [1.0, 0.25, 0.5, 1.0]
    assert g.choose(np.array([1, 1, 1, 0]), np.array([0.1, 0.3, 0.9, 0.5])).tolist() == [0, 2, 3, 1]
    with pytest.raises(ValueError, match="empty groups"):
        g.choose(np.array([2]), np.array([0.5]))

