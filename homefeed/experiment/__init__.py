"""Closed-loop A/B experiments on the synthetic shop, served by the real pipeline (`homefeed experiment`).

    arms.py      arm files (config overrides, or a prebuilt bundle) and the stable user -> arm hash
    bundles.py   each arm's bundle: built from the world's log, rebuilt nightly from the arm's own log
    visits.py    the seeded population and each day's homepage requests
    arm_run.py   one arm: Pipeline.homepage -> Simulator -> Pipeline.ingest, and its logs
    run.py       the loop over days and batches, the results
    metrics.py   CTR, purchases, GMV, categories, coverage, repeat exposure, just-bought pages
    stats.py     bootstrap intervals over users, differences against a control
    report.py    the HTML report with its figures
    cli.py       the `experiment` command
"""
