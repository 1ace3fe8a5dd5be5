"""MIND-K against MIND-1 and the other channels: the shared recall evaluation plus the category diversity of each list.

The metrics (HitRate/Recall/NDCG@K, coverage, the merged list) come from
`homefeed.recall.evaluate.evaluate_recall`, the one evaluation path of every channel. What MIND
adds is one number that path does not compute: how many interests a list covers, measured as the
mean number of distinct leaf categories among each user's top `diversity_k` candidates
(`category_diversity`). A single-vector user gets a list from one neighbourhood of the item space;
several interest vectors should spread it.

    python -m homefeed.recall.mind.evaluate DATASET --channels mind,mind1,itemcf,eges --ks 10,50,100 --json

    >>> result = compare(ds, ["mind", "mind1", "itemcf"], ks=(10, 50, 100))       # doctest: +SKIP
    >>> result["channels"]["mind"]["hitrate@50"], result["channels"]["mind"]["categories@50"]   # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from homefeed.data.dataset import Dataset
from homefeed.data.user_state import states_at
from homefeed.evaluate.report import print_json
from homefeed.recall.evaluate import as_matrix, evaluate_recall, fit_channels, format_recall_table, relevant_items
from homefeed.recall.merge import Merger


def category_diversity(recommended: np.ndarray, categories: np.ndarray) -> float:
    """Mean number of distinct categories per row of (n, k) item codes (-1 = empty slot); rows with no item are skipped.

    Args:
        categories: (n_items,) category code per item code.
    """
    rows = recommended[(recommended >= 0).any(1)]
    if rows.size == 0:
        return 0.0
    cats = np.where(rows >= 0, categories[np.maximum(rows, 0)], -1)
    cats.sort(axis=1)
    distinct = (cats[:, :1] >= 0).astype(np.int64).ravel() + ((np.diff(cats, axis=1) != 0) & (cats[:, 1:] >= 0)).sum(1)
    return float(distinct.mean())


def item_categories(dataset: Dataset) -> np.ndarray:
    """(n_items,) leaf category code per item code (0 = unknown)."""
    out = np.zeros(dataset.n_items, np.int64)
    ids = dataset.items["item_id"].to_numpy()
    out[ids] = dataset.items["leaf_category"].fill_null(0).to_numpy()
    return out


def compare(dataset: Dataset, names: list[str], *, ks: tuple[int, ...] = (10, 50, 100), part: str = "test",
            settings: dict[str, dict] | None = None, diversity_k: int = 50, max_users: int | None = None,
            merge: bool = True, seed: int = 0) -> dict:
    """`evaluate_recall` of the named channels (fitted here) plus `categories@{diversity_k}` and fit seconds per channel."""
    fitted, fit_seconds = {}, {}
    for name in names:
        t0 = time.process_time()
        fitted.update(fit_channels(dataset, [name], settings))
        fit_seconds[name] = time.process_time() - t0
    merger = Merger().fit(dataset) if merge else None
    result = evaluate_recall(dataset, fitted, merger, ks=ks, part=part, max_users=max_users, seed=seed)
    users, _ = relevant_items(dataset, part)
    if max_users is not None and users.size > max_users:
        users = np.sort(users[np.random.default_rng(seed).choice(users.size, max_users, replace=False)])
    states = states_at(dataset.events, dataset.users, dataset.split.bounds(part)[0], user_ids=users)
    cats = item_categories(dataset)
    for name, channel in fitted.items():
        lists = as_matrix(channel.recall_batch(states, diversity_k), diversity_k)
        result["channels"][name][f"categories@{diversity_k}"] = category_diversity(lists, cats)
        result["channels"][name]["fit_cpu_s"] = fit_seconds[name]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("--channels", default="mind,mind1,itemcf,eges")
    parser.add_argument("--ks", default="10,50,100")
    parser.add_argument("--max-users", type=int, default=None)
    parser.add_argument("--no-merge", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = compare(Dataset.load(args.dataset), args.channels.split(","), ks=tuple(int(k) for k in args.ks.split(",")),
                     max_users=args.max_users, merge=not args.no_merge)
    if args.json:
        print_json(result)
    else:
        from rich.console import Console
        Console(width=250).print(format_recall_table(result))
        for name, row in result["channels"].items():
            print(f"{name}: categories@50 {row.get('categories@50', float('nan')):.2f}  fit {row['fit_cpu_s']:.0f} CPU s")


if __name__ == "__main__":
    main()
