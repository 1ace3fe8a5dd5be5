"""Pieces every CLI command shares: the config options, progress display, errors and report tables."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from homefeed.config import Config, ConfigError, load_config

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="TOML settings file (see homefeed/default.toml for every key).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override one setting, e.g. --set ingest.session_gap_s=600 (repeatable).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
EngineOpt = Annotated[str, typer.Option("--engine", help="local: one process (polars + numba, the fastest on one machine) | "
                                                         "spark: the Item-CF, Swing, Ranki2i, crowd and popularity tables on "
                                                         "Apache Spark ([spark] settings; equal to local).")]
SparkMasterOpt = Annotated[Optional[str], typer.Option("--spark-master", help="--engine spark: the master URL, e.g. local[4], "
                                                                               "yarn, k8s://https://host:443, spark://host:7077 (default: spark.master).")]
DatasetArg = Annotated[Path, typer.Argument(help="A dataset folder written by `homefeed ingest`.")]


def stdout_console() -> Console:
    """Console for tables on stdout: terminal width on a terminal, wide enough for every column in a pipe or file."""
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 240)


def fail(message: str, code: int = 2) -> None:
    Console(stderr=True).print(f"[red]error:[/] {message}")
    raise typer.Exit(code)


def get_config(path: Path | None, overrides: list[str] | None) -> Config:
    """Load and check every setting (each stage's knob tables too) before any work starts."""
    from homefeed.bundle.settings import check_config

    try:
        cfg = load_config(path, overrides or [])
        check_config(cfg)
        return cfg
    except ConfigError as e:
        fail(f"config: {e}")


@contextlib.contextmanager
def channel_fitter(engine: str, cfg: Config, master: str | None = None):
    """Yields what fits the recall channels for `--engine`: None (the local `fit_channels`) or the Spark engine's
    drop-in, bound to a session made from `cfg.spark` (`--spark-master` wins) and stopped after the block."""
    if engine not in ("local", "spark"):
        fail(f"--engine {engine!r}: valid engines are local, spark")
    if engine == "local":
        if master:
            fail("--spark-master needs --engine spark")
        yield None
        return
    try:
        import pyspark  # noqa: F401
    except ImportError:
        fail("--engine spark needs pyspark: pip install 'homefeed[spark]' (and a Java 17 runtime)")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        fail("--engine spark needs a Java 17 runtime on PATH or in JAVA_HOME (e.g. apt-get install openjdk-17-jre-headless)")
    from homefeed.distributed.build import spark_channel_fitter
    from homefeed.distributed.session import spark_engine

    settings = cfg.spark if master is None else cfg.spark.model_copy(update={"master": master})
    with spark_engine(settings) as spark:
        yield spark_channel_fitter(spark)


def serve_env(bundle: Path, config: Path | None, overrides: list[str] | None, state: str | None) -> dict[str, str]:
    """The environment `homefeed serve` hands its uvicorn workers (read back by `serve.api.app_from_env`);
    `--set` overrides travel as a JSON list, so a value may hold any character (';' included)."""
    env = {"HOMEFEED_BUNDLE": str(bundle), "HOMEFEED_CONFIG": str(config) if config else "",
           "HOMEFEED_SET": json.dumps(list(overrides or []))}
    return env | ({"HOMEFEED_STATE": state} if state else {})


@contextlib.contextmanager
def steps(console: Console, title: str):
    """A progress display; yields `progress(step, done, total)` (total 0 = indeterminate)."""
    columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[step]}"), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as bar:
        task = bar.add_task(title, total=None, step="")

        def progress(step: str, done: int = 0, total: int = 0) -> None:
            bar.update(task, step=step, completed=done, total=total or None)
            if not console.is_terminal:
                console.print(f"  {title}: {step}" + (f" {done}/{total}" if total else ""), highlight=False)

        yield progress


def print_report(console: Console, report: dict) -> None:
    """The ingest report: per table, where every input row went; then why rows were removed or quarantined."""
    out = stdout_console()
    table = Table(title=f"ingest {report['source']} ({report['format']}, policy {report['policy']})")
    for col in ("table", "input", "kept", "quarantined", "removed by cleaning"):
        table.add_column(col, justify="right" if col != "table" else "left")
    for name, t in report["tables"].items():
        table.add_row(name, f"{t['input_rows']:,}", f"{t['kept_rows']:,}", f"{t['quarantined_rows']:,}",
                      f"{sum(t['removed_by_cleaning'].values()):,}")
    table.add_row("total", f"{report['input_rows']:,}", f"{report['kept_rows']:,}", f"{report['quarantined_rows']:,}",
                  f"{sum(report['removed_by_cleaning'].values()):,}", style="bold")
    out.print(table)
    why = Table(title="why rows left")
    for col in ("table", "step", "reason", "rows"):
        why.add_column(col, justify="right" if col == "rows" else "left")
    for name, t in report["tables"].items():
        for reason, n in sorted(t["quarantined_by_reason"].items()):
            why.add_row(name, "quarantine", reason, f"{n:,}")
        for rule, n in t["removed_by_cleaning"].items():
            why.add_row(name, "cleaning", rule, f"{n:,}")
    if why.row_count:
        out.print(why)
    cleaning = report.get("cleaning", {})
    for stop in cleaning.get("skipped", []):  # a rule the guard stopped before it deleted real behaviour
        out.print(f"[yellow]cleaning rule {stop.get('rule')} stopped[/]: {stop.get('why', '')} "
                  f"(force it with {stop.get('force', 'cleaning.force')})")
    if cleaning.get("outliers"):
        out.print(f"[yellow]outlier rows kept out of the day range[/]: {cleaning['outliers']}")
    s = report["split"]
    out.print(f"users {report['users']:,}  items {report['items']:,}  sessions {report['sessions']:,}  "
              f"events train/valid/test {s['train']:,}/{s['valid']:,}/{s['test']:,}  split {s.get('method', 'time')}  "
              f"in {report['timings']['total_s']:.1f}s")


VECTOR_CHANNELS = ("eges", "deepwalk", "mind", "mind1")


def train_vector_channel(console: Console, dataset: Path, out: Path, name: str, nproc: int, cfg: Config) -> None:
    """`train --model eges|deepwalk|mind|mind1`: that channel's vectors and table, in one process or under DDP."""
    from homefeed.data.dataset import Dataset
    from homefeed.recall import CHANNELS
    from homefeed.recall.part import RecallSettings

    try:
        knobs = RecallSettings.from_section(cfg.recall).channel_settings
        settings = knobs.get(name) or CHANNELS[name].Settings()
        with steps(console, f"training the {name} channel") as progress:
            progress("walks/samples, training, table" + (f" ({nproc} DDP processes)" if nproc > 1 else ""))
            if nproc > 1 and name in ("eges", "deepwalk"):
                from homefeed.distributed.graph_train import fit_eges_distributed

                fit_eges_distributed(dataset, out, settings, nproc)
            elif nproc > 1:
                from homefeed.distributed.mind_train import fit_mind_distributed

                fit_mind_distributed(dataset, out, settings, nproc, channel=name)
            else:
                CHANNELS[name](settings=settings).fit(Dataset.load(dataset)).save(out)
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        fail(str(e))
    stdout_console().print(f"saved the {name} channel to {out}" + (f" (trained by {nproc} DDP processes)" if nproc > 1 else ""))
