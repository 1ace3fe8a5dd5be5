"""Screenshot of an experiment report for the README: `homefeed experiment ... --report R.html`, then

    python docs/experiment_screenshot.py R.html                 # writes docs/experiment_report.png

The report is one self-contained HTML file (PNG figures inline), so a headless Chromium opens it from disk.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from console_screenshots import DOCS, _small_png, browser, images_loaded  # noqa: E402


def shoot(report: Path, out: Path, *, width: int = 1280, height: int = 1500) -> int:
    """Open `report` in headless Chromium, wait for its figures, save the top of the page; returns figures loaded."""
    driver = browser(width, height)
    try:
        driver.get(report.resolve().as_uri())
        loaded = images_loaded(driver)
        _small_png(driver.get_screenshot_as_png(), out)
    finally:
        driver.quit()
    return loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="an HTML report written by `homefeed experiment --report`")
    parser.add_argument("--out", type=Path, default=DOCS / "experiment_report.png")
    args = parser.parse_args()
    if not args.report.is_file():
        parser.error(f"{args.report}: no such report file")
    figures = shoot(args.report, args.out)
    print(f"{args.out}: {figures} figures loaded")


if __name__ == "__main__":
    main()
