"""The `homefeed` command: one typer app over every offline job and the server.

    homefeed generate --size small --out out/world
    homefeed ingest out/world --out out/dataset
    homefeed evaluate recall out/dataset --json

Every command takes `--config FILE` and repeated `--set section.key=value`; every `evaluate`
command prints a table, or one JSON object with `--json`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from homefeed.cli_support import (VECTOR_CHANNELS, ConfigOpt, DatasetArg, EngineOpt, JsonOpt, SetOpt, SparkMasterOpt, channel_fitter, fail,
                                  get_config, print_report, serve_env, stdout_console, steps, train_vector_channel)
from homefeed.cli_evaluate import evaluate_app
from homefeed.config import ConfigError

app = typer.Typer(help="homefeed: an end-to-end recommender for an e-commerce homepage feed.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)
app.add_typer(evaluate_app, name="evaluate")
console = Console(stderr=True)


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Folder to write the synthetic shop into (created).")],
    size: Annotated[str, typer.Option(help="tiny (seconds, tests) | small (~1M events, the demo) | large (>= 20M events).")] = "tiny",
    seed: Annotated[Optional[int], typer.Option(help="Random seed; the same seed gives byte-identical files. Default: world.seed.")] = None,
    taobao_csv: Annotated[bool, typer.Option(help="Also write the event log as Taobao UserBehavior CSV (events.csv).")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Generate the built-in synthetic shop: catalogue, users, events, exposures, images and its hidden truth."""
    from homefeed.world import WorldSpec, generate as generate_world, write_taobao_csv

    cfg = get_config(config, set_)
    if size not in ("tiny", "small", "large"):
        fail(f"--size {size!r}: valid sizes are tiny, small, large")
    spec = WorldSpec.preset(size, seed=cfg.world.seed if seed is None else seed, tz_offset_hours=cfg.world.tz_offset_hours)
    with steps(console, f"generating the {size} shop") as progress:
        generate_world(spec, out, progress=progress)
    if taobao_csv:
        write_taobao_csv(out / "events.parquet", out / "events.csv")
    info = json.loads((out / "world.json").read_text()) if (out / "world.json").exists() else {}
    console.print(f"[green]wrote[/] {out}  " + "  ".join(f"{k}={v}" for k, v in info.get("counts", {}).items()))


@app.command()
def ingest(
    src: Annotated[Path, typer.Argument(help="A log file or folder: a `generate` folder, Taobao UserBehavior CSV, "
                                             "an Alibaba display-ad folder (raw_sample.csv, ad_feature.csv, user_profile.csv), "
                                             "a SASRec/S3-Rec sequence file, RecBole atomic files (a folder or its .inter file), "
                                             "a session log (DIGINETICA item views), or generic files.")],
    out: Annotated[Path, typer.Option(help="Dataset folder to write (Parquet tables, vocabularies, split, report.json, quarantine.parquet).")],
    format: Annotated[Optional[str], typer.Option(help="world | taobao | alimama | sequences | recbole | sessions | generic. Detected when omitted.")] = None,
    mapping: Annotated[Optional[Path], typer.Option(help="JSON mapping. generic: "
                                                         '{"paths": {"events": "log.csv"}, "columns": {"events": {"user_id": "uid", ...}}, "behaviors": {"view": "pv"}}; '
                                                         'sessions: {"session_id": "sid", "user_id": "uid", "item_id": "sku", "ts": "time"} (default: the DIGINETICA header); '
                                                         'recbole: {"user_id": "field", "leaf_category": "genre", "leaf_token": "last"}.')] = None,
    attributes: Annotated[Optional[Path], typer.Option(help="--format sequences: item2attributes JSON {item: [attribute, ...]}; "
                                                            "leaf category = the most specific attribute (shared by the fewest items).")] = None,
    attribute_map: Annotated[Optional[Path], typer.Option(help="--format sequences: JSON roles of the attributes, e.g. "
                                                               '{"brand": "first", "leaf": "fewest_items"} (S3-Rec lists the brand first).')] = None,
    split: Annotated[Optional[str], typer.Option(help="time (the last days are test) | leave_one_out (each user's last event "
                                                      "test, the one before valid) | auto (default: leave_one_out when the log has no clock).")] = None,
    behavior: Annotated[Optional[str], typer.Option(help="What every row is, for formats that record none: sequences and recbole "
                                                         "default to click (reviews are no purchase funnel), sessions to pv.")] = None,
    policy: Annotated[Optional[str], typer.Option(help="quarantine (default): bad rows go to quarantine.parquet with a reason; strict: stop at the first problem.")] = None,
    json_: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Validate, clean, encode, sessionise and split raw logs into a dataset folder, with a report of every row."""
    from homefeed.data.ingest import ingest as run_ingest

    overrides = list(set_ or []) + ([f"ingest.policy={policy}"] if policy else []) + ([f"ingest.split={split}"] if split else [])
    cfg = get_config(config, overrides)
    if attribute_map and format not in (None, "sequences"):
        fail("--attribute-map is for --format sequences")
    try:
        docs = {p: json.loads(p.read_text()) for p in (mapping, attribute_map) if p}
    except (OSError, json.JSONDecodeError) as e:
        fail(f"cannot read the mapping: {e}")
    try:
        with steps(console, "ingesting") as progress:
            _, report = run_ingest(src, out, cfg, fmt=format, mapping=docs.get(mapping) or docs.get(attribute_map),
                                   attributes=attributes, behavior=behavior, progress=lambda s: progress(s, 0, 0))
    except ValueError as e:  # DataError, IngestError, a bad option or mapping: a message, no traceback
        fail(str(e))
    if json_:
        print(json.dumps(report))
    else:
        print_report(console, report)


@app.command()
def train(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option(help="Folder for the trained model, its encoders and TorchScript export.")],
    model: Annotated[Optional[str], typer.Option(help="Ranking preset to train (default: rank.preset), or a vector recall "
                                                      "channel: eges, deepwalk, mind, mind1 (its recall.channel_settings).")] = None,
    nproc: Annotated[int, typer.Option(help="Train data-parallel with this many torch DDP processes (torchrun, gloo on "
                                            "CPU); rank 0 writes the same artefact as one process.", min=1)] = 1,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Train one ranking preset, report test metrics beside the constant and LR baselines, export TorchScript
    (+ int8): the bundle's rank part alone. `--model eges|deepwalk|mind|mind1` trains that recall channel's vectors
    instead and saves the channel folder. `--nproc N`: under torch DDP, rank 0 writing (docs/scale-out.md)."""
    from homefeed.data.dataset import Dataset
    from homefeed.rank.evaluate import RankResults, baseline_rows, check_baselines, rank_table
    from homefeed.rank.part import RankPart, RankPartSettings
    from homefeed.rank.samples import build_all

    if model in VECTOR_CHANNELS:
        train_vector_channel(console, dataset, out, model, nproc, get_config(config, set_))
        return
    overrides = list(set_ or []) + ([f'rank.preset="{model}"'] if model else [])
    cfg = get_config(config, overrides)
    ds = Dataset.load(dataset)
    try:
        settings = RankPartSettings.from_section(cfg.rank)
        with steps(console, f"training {cfg.rank.preset}") as progress:
            progress("samples, training, export" + (f" ({nproc} DDP processes)" if nproc > 1 else ""))
            if nproc > 1:
                from homefeed.distributed.launch import train_distributed

                metrics = train_distributed(dataset, out, settings, nproc)
            else:
                part = RankPart().fit(ds, settings)
                part.save(out)
                metrics = part.metrics
            baselines = metrics.get("baselines")
            if baselines is None:  # a part that did not score them: the same samples again, LR on them
                progress("baselines: constant, lr")
                rank = settings.rank_settings()
                baselines = baseline_rows(build_all(ds, rank.samples), rank, progress=progress)
    except (ValueError, KeyError, RuntimeError) as e:
        fail(str(e))
    rows = dict(baselines) | {cfg.rank.preset: {k: v for k, v in metrics.items() if k == "start" or not isinstance(v, (str, dict))}}
    results = RankResults(rows, {"protocol": metrics["protocol"], "warnings": check_baselines(rows)})
    stdout = stdout_console()
    stdout.print(rank_table(results, title=f"test metrics ({metrics['protocol']} protocol), served {metrics['served']}"))
    for line in results.meta["warnings"]:
        stdout.print(line, style="bold yellow", highlight=False)


BundleArg = Annotated[Path, typer.Argument(help="A bundle folder written by `homefeed build`.")]


@app.command()
def build(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option(help="Bundle folder to write (created; other parts kept when --parts is given).")],
    parts: Annotated[str, typer.Option(help="Comma-separated parts to (re)build: mechanism, data, recall, rank.")] = "mechanism,data,recall,rank",
    engine: EngineOpt = "local",
    spark_master: SparkMasterOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Run every offline job into one bundle: mechanism tables, data, recall channels, the ranking model
    (`--engine spark`: the recall tables on Spark, equal to local; every other part as always)."""
    from homefeed.bundle import build_bundle
    from homefeed.bundle.manifest import BundleError

    cfg = get_config(config, set_)
    names = tuple(p.strip() for p in parts.split(","))
    try:
        with steps(console, "building") as progress, channel_fitter(engine if "recall" in names else "local", cfg,
                                                                    spark_master if "recall" in names else None) as fitter:
            manifest = build_bundle(dataset, out, cfg, parts=names, progress=lambda s: progress(s), fitter=fitter)
    except (ValueError, BundleError) as e:  # BundleError: an unusable bundle.key_file
        fail(str(e))
    out_console = stdout_console()
    for name, part in manifest["parts"].items():
        size = sum(f["bytes"] for f in part["files"].values())
        metrics = part["metrics"].get("merged", part["metrics"]) if name == "recall" else part["metrics"]
        shown = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
        out_console.print(f"[bold]{name}[/] {len(part['files'])} files, {size / 1e6:.1f} MB  " +
                          "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(shown.items())[:8]))
    out_console.print(f"[green]bundle[/] {out}")


@app.command()
def serve(
    bundle: BundleArg,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    state: Annotated[Optional[str], typer.Option(help="User-state store: sqlite:PATH or redis://HOST:PORT/DB (default: serve.state).")] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes (use a redis:// state store for more than 1).")] = 1,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Serve homepage requests over HTTP (FastAPI + uvicorn): /v1/homepage, /v1/events, /metrics, ..."""
    import os

    import uvicorn

    get_config(config, set_)  # fail early on a bad config
    os.environ.update(serve_env(bundle, config, set_, state))
    from homefeed.serve.body_timeout import head_timeout_protocol

    # the protocol answers 408 to a request head still unfinished after 10 s (uvicorn alone waits for ever)
    uvicorn.run("homefeed.serve.api:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level="warning", http=head_timeout_protocol())


@app.command()
def recommend(
    bundle: BundleArg,
    user: Annotated[str, typer.Option(help="The shop's user id (unknown users get crowd and popular items).")],
    scene: Annotated[str, typer.Option(help="homepage | promotion")] = "homepage",
    state: Annotated[Optional[str], typer.Option(help="User-state store (default: serve.state).")] = None,
    now: Annotated[Optional[int], typer.Option(help="Request time, unix s (default: now).")] = None,
    json_: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Answer one homepage request in the terminal, exactly as the server would."""
    from rich.table import Table

    from homefeed.serve.artefacts import ServingBundle
    from homefeed.bundle import BundleError
    from homefeed.serve.pipeline import Pipeline
    from homefeed.serve.schemas import HomepageRequest
    from homefeed.serve.state import open_store

    cfg = get_config(config, set_)
    try:
        pipeline = Pipeline(ServingBundle.load(bundle), open_store(state or cfg.serve.state, max_events=cfg.serve.history_len,
                                                                idle_s=int(cfg.serve.state_idle_days * 86_400)), cfg)
    except (BundleError, FileNotFoundError) as e:
        fail(str(e))
    pipeline.warm_up()  # compile and load once, so the timings are those of a running server
    page = pipeline.homepage(HomepageRequest(user_id=user, scene=scene, now=now))
    pipeline.close()
    if json_:
        print(page.model_dump_json())
        return
    out = stdout_console()
    for slot, items in page.slots.items():
        t = Table(title=f"{slot} (user {user}, template {page.template_index})")
        for col in ("#", "item", "score", "channel", "reason"):
            t.add_column(col)
        for i, it in enumerate(items):
            t.add_row(str(i + 1), it.item_id, f"{it.score:.4f}", it.channel, it.reason)
        out.print(t)
    out.print("timings ms: " + ", ".join(f"{k} {v:.1f}" for k, v in page.timings_ms.items()) +
              (f"   degraded: {', '.join(page.degraded)}" if page.degraded else ""))


def _register_experiment() -> None:
    """`homefeed experiment`: closed-loop A/B on the simulator (homefeed/experiment/cli.py)."""
    from homefeed.experiment.cli import experiment

    app.command("experiment")(experiment)


_register_experiment()


def main() -> None:
    try:
        app()
    except ConfigError as e:
        console.print(f"[red]config error:[/] {e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
