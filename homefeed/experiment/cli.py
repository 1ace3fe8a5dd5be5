"""`homefeed experiment WORLD --arms a,b --days N`: the command line over `run_experiment`.

`experiment` is a plain typer command function, registered in `homefeed/cli.py`; `app` runs it
alone (`python -m homefeed.experiment.cli WORLD --arms ...`). It prints a table per metric family,
or one JSON object with `--json`, and writes the HTML report with `--report`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from homefeed.config import ConfigError
from homefeed.experiment.report import fmt


def print_tables(result: dict, console: Console) -> None:
    """Metrics with intervals per arm; each arm against the control (* = the interval excludes 0); speed."""
    metrics = list(next(iter(result["metrics"].values())))
    t = Table(title=f"metrics over {result['days']} day(s), 95% bootstrap interval over users")
    t.add_column("arm", style="bold")
    for m in metrics:
        t.add_column(m, justify="right")
    for arm, vals in result["metrics"].items():
        t.add_row(arm, *[f"{fmt(vals[m]['value'])} [{fmt(vals[m]['low'])}, {fmt(vals[m]['high'])}]" for m in metrics])
    console.print(t)
    for title, rows in ((f"relative difference against {result['control']}", result["vs_control"]),
                        ("relative difference between compared arms", result.get("pairs", {}))):
        if not rows:
            continue
        t = Table(title=f"{title} (* = the interval excludes 0)")
        t.add_column("arm", style="bold")
        for m in metrics:
            t.add_column(m, justify="right")
        for arm, d in rows.items():
            t.add_row(arm, *[f"{'*' if d[m]['significant'] else ''}{fmt(d[m]['value'], True)} "
                             f"[{fmt(d[m]['low'], True)}, {fmt(d[m]['high'], True)}]" for m in metrics])
        console.print(t)
    t = Table(title="traffic and speed (in process)")
    for c in ("arm", "users", "visits", "pages", "visits/s", "serve s", "simulate s", "events s", "p50 total ms", "p99 total ms"):
        t.add_column(c, justify="right" if c != "arm" else "left")
    for arm, a in result["arms"].items():
        lat = result["latency_ms"][arm].get("total", {})
        t.add_row(arm, str(a["users"]), str(a["visits"]), str(a["pages"]), f"{a['visits_per_s']:.1f}",
                  *[f"{a['seconds'][k]:.1f}" for k in ("serve", "simulate", "events")],
                  f"{lat.get('p50', float('nan')):.1f}", f"{lat.get('p99', float('nan')):.1f}")
    console.print(t)
    console.print(result["note"], style="yellow")


def without_values(result: dict) -> dict:
    """The result for --json: latency percentiles without every single timing."""
    lat = {arm: {s: {k: v for k, v in d.items() if k != "values"} for s, d in stages.items()}
           for arm, stages in result["latency_ms"].items()}
    return {**result, "latency_ms": lat}


def experiment(
    world: Annotated[Path, typer.Argument(help="A shop folder written by `homefeed generate` (with its truth/).")],
    arms: Annotated[str, typer.Option(help="Comma-separated arm files or names in experiments/, e.g. itemcf,full.")],
    days: Annotated[int, typer.Option(help="Simulated days.")] = 1,
    users: Annotated[Optional[int], typer.Option(help="Users drawn from the shop's population (default: all).")] = None,
    retrain: Annotated[str, typer.Option(help="never | daily: rebuild each arm's bundle nightly from its own log.")] = "never",
    seed: Annotated[int, typer.Option(help="Seed of the population, visits, simulator and bootstrap.")] = 0,
    control: Annotated[Optional[str], typer.Option(help="The arm others are compared with (default: the first).")] = None,
    work: Annotated[Path, typer.Option(help="Folder for the dataset, bundles and state stores (reused across runs).")] = Path("out/experiment"),
    compare: Annotated[Optional[list[str]], typer.Option(help="Also compare two arms, ARM:OTHER, e.g. full:full_no_mechanism (repeatable).")] = None,
    boot: Annotated[int, typer.Option(help="Bootstrap replicates.")] = 1000,
    report: Annotated[Optional[Path], typer.Option(help="Write the HTML report here.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML settings applied to every arm under its own file.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="A setting for every arm, under its own file (repeatable).")] = None,
):
    """A/B test arms on the synthetic shop in closed loop: the real pipeline serves, the simulator clicks and buys."""
    from homefeed.experiment.arms import flatten, load_arm
    from homefeed.experiment.report import write_report
    from homefeed.experiment.run import run_experiment

    err = Console(stderr=True)
    if not (world / "truth" / "world.json").exists():
        err.print(f"[red]error:[/] {world} is not a generated shop with its truth (run `homefeed generate --out {world}`)")
        raise typer.Exit(2)
    base = list(set_ or [])
    pairs = [tuple(c.split(":", 1)) for c in compare or []]
    if any(len(p) != 2 for p in pairs):
        err.print(f"[red]error:[/] --compare takes ARM:OTHER, got {compare}")
        raise typer.Exit(2)
    try:
        if config is not None:
            import tomllib

            base = flatten(tomllib.loads(config.read_text())) + base
        loaded = [load_arm(a.strip(), base=base) for a in arms.split(",") if a.strip()]
    except (ConfigError, FileNotFoundError) as e:
        err.print(f"[red]error:[/] {e}")
        raise typer.Exit(2)
    columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err, disable=not err.is_terminal) as bar:
        task = bar.add_task("experiment", total=None)

        def progress(step: str, done: int = 0, total: int = 0) -> None:
            bar.update(task, description=step, completed=done, total=total or None)
            if not err.is_terminal and (not total or done == total):
                err.print(f"  experiment: {step}" + (f" {done}/{total}" if total else ""), highlight=False)

        try:
            result = run_experiment(world, loaded, days=days, work=work, n_users=users, retrain=retrain, seed=seed,
                                    control=control, n_boot=boot, pairs=pairs, progress=progress)
        except ValueError as e:
            err.print(f"[red]error:[/] {e}")
            raise typer.Exit(2)
    if report is not None:
        write_report(result, report, world=world)
        err.print(f"[green]wrote[/] {report}")
    if json_:
        sys.stdout.write(json.dumps(without_values(result), default=float) + "\n")
    else:
        print_tables(result, Console(file=sys.stdout, width=None if sys.stdout.isatty() else 240))


app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)
app.command()(experiment)

if __name__ == "__main__":
    app()
