"""`homefeed evaluate recall|graph|rank|mechanism`: offline evaluation on the time split, a table or one JSON object."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from homefeed.cli_support import (ConfigOpt, EngineOpt, JsonOpt, SetOpt, SparkMasterOpt, channel_fitter, fail, get_config, stdout_console, steps, DatasetArg)

evaluate_app = typer.Typer(help="Offline evaluation on the time split; a table, or JSON with --json.", no_args_is_help=True)
console = Console(stderr=True)


@evaluate_app.command("recall")
def evaluate_recall_cmd(
    dataset: DatasetArg,
    channels: Annotated[Optional[str], typer.Option(help="Comma-separated channels (default: recall.channels).")] = None,
    part: Annotated[str, typer.Option(help="Split part to score: test or valid.")] = "test",
    ks: Annotated[str, typer.Option(help="Cut-offs K for HitRate/Recall/NDCG@K, comma-separated.")] = "20,50,200",
    max_users: Annotated[Optional[int], typer.Option(help="Score a seeded sample of this many users (default: all).")] = None,
    engine: EngineOpt = "local",
    spark_master: SparkMasterOpt = None,
    json_: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Fit every recall channel on the training days and score each, and their merge, on the later days
    (`--engine spark`: the tables on Spark, the same figures)."""
    from homefeed.data.dataset import Dataset
    from homefeed.evaluate.report import print_json
    from homefeed.recall import Merger, MergeSettings
    from homefeed.recall.evaluate import evaluate_recall, fit_channels, format_recall_table

    cfg = get_config(config, set_)
    names = channels.split(",") if channels else cfg.recall.channels
    cut_offs = tuple(int(k) for k in ks.split(","))
    ds = Dataset.load(dataset)
    try:
        with steps(console, "recall") as progress, channel_fitter(engine, cfg, spark_master) as fitter:
            progress("fitting " + ", ".join(names) + ("" if fitter is None else " (tables on Spark)"))
            fitted = (fitter or fit_channels)(ds, names, cfg.recall.channel_settings)
            merger = Merger(settings=MergeSettings(**cfg.recall.merge)).fit(ds)
            progress("scoring")
            result = evaluate_recall(ds, fitted, merger, ks=cut_offs, part=part, max_users=max_users,
                                     behaviors=tuple(cfg.recall.relevant_behaviors))
    except ValueError as e:
        fail(str(e))
    if json_:
        print_json(result)
    else:
        stdout_console().print(format_recall_table(result))


@evaluate_app.command("graph")
def evaluate_graph_cmd(
    dataset: DatasetArg,
    methods: Annotated[str, typer.Option(help="Comma-separated graph embeddings: deepwalk, ges, eges.")] = "deepwalk,ges,eges",
    k: Annotated[int, typer.Option(help="Cut-off K for the cold-start HitRate/Recall@K.")] = 50,
    part: Annotated[str, typer.Option(help="Split part to score cold-start recall on: test or valid.")] = "test",
    max_users: Annotated[Optional[int], typer.Option(help="Score a seeded sample of this many cold-start users (default: all).")] = None,
    keep: Annotated[str, typer.Option(help="Held-out edges: connected (their ends stay connected in training) or endpoints (each end keeps an edge).")] = "connected",
    negatives: Annotated[str, typer.Option(help="Negative pairs: degree (ends of held-out edges) or uniform (any node with a training edge).")] = "degree",
    directed: Annotated[bool, typer.Option(help="Train link prediction on the one-way graph, as the channel walks it (default: both ways).")] = False,
    cold_start: Annotated[bool, typer.Option(help="Also fit the channels and score cold-start recall.")] = True,
    json_: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Link-prediction AUC of DeepWalk, GES and EGES (up to a third of the edges held out), and cold-start HitRate@K
    against Item-CF and Swing. Graph settings: recall.channel_settings.eges."""
    from homefeed.data.dataset import Dataset
    from homefeed.evaluate.report import print_json
    from homefeed.recall.graph_evaluate import LinkProtocol, evaluate_graph_dataset, format_graph_table

    cfg = get_config(config, set_)
    names = tuple(m.strip() for m in methods.split(",") if m.strip())
    ds = Dataset.load(dataset)
    try:
        protocol = LinkProtocol(keep=keep, negatives=negatives, undirected=not directed)
        with steps(console, "graph") as progress:
            progress("link prediction" + (" + channels" if cold_start else "") + ": " + ", ".join(names))
            result = evaluate_graph_dataset(ds, cfg.recall.channel_settings, methods=names, k=k, part=part,
                                            max_users=max_users, protocol=protocol, cold_start=cold_start)
    except ValueError as e:  # pydantic.ValidationError (a bad --keep or --negatives) is one too
        fail(str(e))
    if json_:
        print_json(result)
    else:
        stdout_console().print(format_graph_table(result))


@evaluate_app.command("rank")
def evaluate_rank_cmd(
    dataset: DatasetArg,
    models: Annotated[str, typer.Option(help="Comma-separated presets: lr, wdl, deepfm, pnn, nfm, dcn, dcnv2, deepresnet, din, bst.")] = "lr,wdl,deepfm,dcn,din,bst",
    json_: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Train each ranking preset on the same samples (train days), early-stop on valid, and score on test beside
    the constant-predictor and LR baselines; a warning line for each preset worse than them."""
    from homefeed.data.dataset import Dataset
    from homefeed.evaluate.report import print_json
    from homefeed.rank.evaluate import evaluate_rank, rank_table
    from homefeed.rank.part import RankPartSettings

    cfg = get_config(config, set_)
    presets = [m.strip() for m in models.split(",") if m.strip()]
    try:
        with steps(console, "rank") as progress:
            progress("samples + " + ", ".join(presets))
            results = evaluate_rank(Dataset.load(dataset), presets, RankPartSettings.from_section(cfg.rank).rank_settings(),
                                    progress=progress)
    except (ValueError, KeyError) as e:
        fail(str(e))
    if json_:
        print_json({"rows": dict(results), "protocol": results.meta["protocol"], "warnings": results.meta["warnings"]})
        return
    out = stdout_console()
    out.print(rank_table(results))
    out.print(f"protocol: {results.meta['protocol']}  {results.meta.get('why') or ''}", highlight=False)
    for line in results.meta["warnings"]:
        out.print(line, style="bold yellow", highlight=False)


@evaluate_app.command("mechanism")
def evaluate_mechanism_cmd(
    world: Annotated[Path, typer.Argument(help="A folder written by `homefeed generate` (its truth/ scores each part).")],
    requests: Annotated[int, typer.Option(help="Homepage requests replayed for the on/off page figures.")] = 1000,
    json_: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Score standard categories, image groups and blocking periods against the shop's truth; replay pages on and off."""
    from homefeed.evaluate.report import metrics_table, print_json
    from homefeed.mechanism.evaluate import evaluate_mechanism
    from homefeed.mechanism.part import MechanismSettings

    cfg = get_config(config, set_)  # checks every setting, [mechanism] included
    mech = MechanismSettings.from_section(cfg.mechanism)
    with steps(console, "mechanism") as progress:
        progress("categories, images, periods, replay")
        result = evaluate_mechanism(world, config=mech.config, n_requests=requests, overrides=mech.category_overrides)
    if json_:
        print_json(result)
        return
    flat = {k: v for k, v in result.items() if not isinstance(v, dict)}
    out = stdout_console()
    out.print(metrics_table({"truth scores": flat}, title="mechanism against the truth", name_header=""))
    pages = {k: v for k, v in result.items() if isinstance(v, dict) and k in ("on", "off")}
    if pages:
        out.print(metrics_table(pages, title="replayed pages, mechanism on / off", name_header="mechanism"))
