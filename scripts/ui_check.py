"""`make ui-check`: an evaluation as a person sees it in MLflow's UI, checked in a real browser.

    python scripts/ui_check.py [--suite configs/eval/tiny.toml] [--out outputs/ui-check] [--reuse]

1. Runs `cosmos-evaluate --suite SUITE` (the embedded model: offline, a couple of minutes on a CPU) into a
   fresh SQLite store under OUT (`--reuse`: keep the store of an earlier check and skip this step).
2. Starts `mlflow server` on that store (127.0.0.1, a free port).
3. Opens the UI in headless Chromium: the system's `/usr/bin/chromium` (`apt-get install -y chromium`),
   driven by Playwright, which downloads nothing.
4. Saves a screenshot per view and exits 1, naming what is missing, unless every view showed its fact:
   - `runs.png`: the evaluation experiment's runs, the parent expanded: every child's name names its variant;
   - `parent.png`: the parent run's page, opening with which variant wins on which figure;
   - `grid.png`: the parent's key-frame grids (chart view, section `comparison`), every image loaded;
   - `video.png`: a side-by-side video playing: at least 720 px wide, 3 s long, `currentTime` advancing.
MLflow's UI is a React app: every step waits for what it needs to see (selectors), never for a time.
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EXPERIMENT = "cosmos-evaluate"
VIEWPORT = {"width": 1920, "height": 1080}  # the run page shows its description first from 1920 px on
TIMEOUT_MS = 60_000  # the UI's first load compiles a large bundle; a loaded CPU makes it slow
MIN_VIDEO_WIDTH, MIN_VIDEO_SECONDS = 720, 3.0


class Missing(Exception):
    """A view did not show what it must."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def evaluate(suite: str, out: Path, env: dict[str, str]) -> None:
    """A fresh evaluation into OUT's store (the previous one removed)."""
    for name in ("mlflow.db", "mlartifacts", "outputs"):
        path = out / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    command = [str(Path(sys.executable).with_name("cosmos-evaluate")), "--suite", suite]
    print(f"ui-check: {' '.join(command)}", flush=True)
    with open(out / "evaluate.log", "w") as log:
        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"ui-check: cosmos-evaluate failed ({done.returncode}); see {out / 'evaluate.log'}")


@contextlib.contextmanager
def mlflow_server(store: str, out: Path) -> Iterator[str]:
    """`mlflow server` on `store` at a free loopback port, stopped on exit; yields its address."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    with open(out / "mlflow-server.log", "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{base}/health", timeout=2).status == 200:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"ui-check: mlflow server did not start; see {out / 'mlflow-server.log'}")
            time.sleep(0.5)
        yield base
    finally:  # the server and the workers it started (uvicorn, job runners): its whole process group
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def api(base: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=data,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def evaluation(base: str) -> dict[str, Any]:
    """The latest evaluation: experiment id, parent run id and name, children's names, comparison videos."""
    experiment = api(base, f"experiments/get-by-name?experiment_name={EXPERIMENT}")["experiment"][
        "experiment_id"
    ]
    runs = api(base, "runs/search", {"experiment_ids": [experiment], "max_results": 1000})["runs"]

    def tags(run: dict[str, Any]) -> dict[str, str]:
        return {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}

    parents = [run for run in runs if tags(run).get("mode") == "evaluation"]
    if not parents:
        raise SystemExit(f"ui-check: no evaluation run in experiment {EXPERIMENT} at {base}")
    parent = max(parents, key=lambda run: run["info"]["start_time"])
    parent_id = parent["info"]["run_id"]
    children = [run for run in runs if tags(run).get("mlflow.parentRunId") == parent_id]
    listed = api(base, f"artifacts/list?run_id={parent_id}&path=comparison")
    videos = [item["path"].removeprefix("comparison/") for item in listed.get("files", [])
              if item["path"].endswith(".mp4")]  # fmt: skip
    return {
        "experiment": experiment,
        "parent": parent_id,
        "parent_name": parent["info"]["run_name"],
        "children": {run["info"]["run_name"]: tags(run).get("variant", "") for run in children},
        "videos": videos,
    }


def shown(page, selector: str, what: str, **options: Any) -> None:
    """Wait for `selector`; Missing (naming `what`) if the page does not show it within TIMEOUT_MS."""
    from playwright.sync_api import TimeoutError

    try:
        page.wait_for_selector(selector, timeout=TIMEOUT_MS, **options)
    except TimeoutError:
        raise Missing(f"{what}: not shown within {TIMEOUT_MS // 1000} s") from None


def reached(page, condition: str, what: str, arg: Any = None) -> None:
    """Wait for a JavaScript `condition`; Missing (naming `what`) if it does not hold within TIMEOUT_MS."""
    from playwright.sync_api import TimeoutError

    try:
        page.wait_for_function(condition, arg=arg, timeout=TIMEOUT_MS)
    except TimeoutError:
        raise Missing(f"{what}: not within {TIMEOUT_MS // 1000} s") from None


def open_page(page, url: str, wait_for: str, what: str) -> None:
    """Go to `url`, wait for `wait_for` (a selector), and close MLflow's assistant panel if it opened."""
    page.goto(url)
    shown(page, wait_for, what)
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count() and close.first.is_visible():
        close.first.click()


def check_runs(page, base: str, facts: dict[str, Any], shots: Path) -> None:
    """The runs table, the parent expanded: every child's name shows its variant."""
    table = f"{base}/#/experiments/{facts['experiment']}/runs?workflowType=machine_learning"
    open_page(page, table, f"text={facts['parent_name']}", "the parent run's row")
    page.locator('button[data-component-id*="runnamecellrenderer"]').first.click()
    for name in facts["children"]:
        shown(page, f'a:has-text("{name}")', f"child run {name!r}", state="attached")
    page.screenshot(path=shots / "runs.png")
    if not facts["children"]:
        raise Missing("runs table: the parent has no child runs")
    for name, variant in facts["children"].items():
        text = page.locator(f'a:has-text("{name}")').first.inner_text()
        if not variant or not text.startswith(variant):
            raise Missing(f"runs table: child run {text!r} does not start with its variant {variant!r}")


def check_parent(page, base: str, facts: dict[str, Any], shots: Path) -> None:
    """The parent's page opens with the verdict and the winner table (its description)."""
    run = f"{base}/#/experiments/{facts['experiment']}/runs/{facts['parent']}?workflowType=machine_learning"
    open_page(page, run, "text=(baseline)", "the verdict at the top of the parent's description")
    more = page.get_by_text("Show more", exact=True)
    if more.count():
        more.first.click()
    shown(page, "table:has-text('winner')", "the winner-per-figure table")
    for name in facts["children"]:  # "About this run" lists them once loaded
        shown(page, f'a:has-text("{name}")', f"child run {name!r} on the parent's page")
    page.screenshot(path=shots / "parent.png")


def check_grid(page, base: str, facts: dict[str, Any], shots: Path) -> None:
    """The experiment's chart view, children collapsed: the parent's key-frame grids, every image loaded."""
    view = (
        f"{base}/#/experiments/{facts['experiment']}/runs?workflowType=machine_learning&compareRunsMode=CHART"
    )
    header = "[data-testid='experiment-view-compare-runs-section-header']"
    open_page(page, view, f"{header}:has-text('comparison')", "the chart view's section 'comparison'")
    page.locator(header).filter(has_text="comparison").first.scroll_into_view_if_needed()
    titles = [
        f"comparison/{name.removesuffix('.mp4').replace('-seed', ' seed ')}" for name in facts["videos"]
    ]
    for title in titles:
        shown(page, f"h4[title='{title}']", f"key-frame grid {title!r}")
    loaded = """count => [...document.querySelectorAll('img')].filter(img =>
                    img.src.includes('comparison') && img.complete && img.naturalWidth > 0).length >= count"""
    reached(page, loaded, f"{len(titles)} key-frame grid image(s) loaded", arg=len(titles))
    page.screenshot(path=shots / "grid.png")


def check_video(page, base: str, facts: dict[str, Any], shots: Path) -> None:
    """A comparison video in the artifact view: wide and long enough, and playing."""
    if not facts["videos"]:
        raise Missing("comparison videos: none logged on the parent run")
    video = facts["videos"][0]
    url = (f"{base}/#/experiments/{facts['experiment']}/runs/{facts['parent']}/artifacts/comparison/{video}"
           "?workflowType=machine_learning")  # fmt: skip
    open_page(page, url, "video", f"the player of comparison/{video}")
    reached(page, "() => document.querySelector('video').readyState >= 1", f"comparison/{video} loaded")
    size = page.evaluate(
        """() => { const v = document.querySelector('video');
                   return {width: v.videoWidth, height: v.videoHeight, duration: v.duration}; }"""
    )
    if size["width"] < MIN_VIDEO_WIDTH or size["duration"] < MIN_VIDEO_SECONDS:
        raise Missing(f"comparison/{video} is {size}: wanted >= {MIN_VIDEO_WIDTH} px wide, >= 3 s long")
    page.evaluate("() => { const v = document.querySelector('video'); v.muted = true; v.play(); }")
    reached(page, "() => document.querySelector('video').currentTime > 1", f"comparison/{video} playing")
    page.screenshot(path=shots / "video.png")


def browse(base: str, shots: Path) -> list[str]:
    """Every view checked; returns what was missing (one line per view)."""
    from playwright.sync_api import Error, sync_playwright

    facts = evaluation(base)
    missing = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for check in (check_runs, check_parent, check_grid, check_video):
                page = browser.new_page(viewport=VIEWPORT)
                try:
                    check(page, base, facts, shots)
                    print(f"ui-check: {check.__name__.removeprefix('check_')}: ok", flush=True)
                except (Missing, Error) as error:
                    page.screenshot(path=shots / f"{check.__name__.removeprefix('check_')}-failed.png")
                    missing.append(f"{check.__name__.removeprefix('check_')}: {str(error).splitlines()[0]}")
                finally:
                    page.close()
        finally:
            browser.close()
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ui_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="configs/eval/tiny.toml")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "ui-check")
    parser.add_argument("--reuse", action="store_true", help="browse the store of an earlier check")
    args = parser.parse_args(argv)
    if not CHROMIUM.is_file():
        print(f"ui-check: {CHROMIUM} not found: apt-get install -y chromium", file=sys.stderr)
        return 2
    out = args.out.resolve()
    shots = out / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.png"):
        old.unlink()
    shots.mkdir(exist_ok=True)
    store = f"sqlite:///{out / 'mlflow.db'}"
    env = {**os.environ, "COSMOS_TRACKING_URI": store, "COSMOS_ARTIFACT_ROOT": str(out / "mlartifacts"),
           "COSMOS_OUTPUT_DIR": str(out / "outputs"), "COSMOS_EVAL_EXPERIMENT": EXPERIMENT}  # fmt: skip
    started = time.monotonic()
    if not (args.reuse and (out / "mlflow.db").is_file()):
        evaluate(args.suite, out, env)
    print(f"ui-check: evaluation ready in {time.monotonic() - started:.0f} s", flush=True)
    with mlflow_server(store, out) as base:
        missing = browse(base, shots)
    print(f"ui-check: screenshots in {shots} ({time.monotonic() - started:.0f} s in all)")
    for line in missing:
        print(f"ui-check: MISSING {line}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
