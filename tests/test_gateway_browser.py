"""The gateway's page in a real browser: Debian's chromium, headless, driven by selenium, against
`conveyor local` (the loop, the embedded S3 server and the gateway on 127.0.0.1) as a real process.

What a person does: log in, pick the model, upload samples/dog.jpg, watch the job change state
without reloading the page, open the annotated image, download the JSON, log out; then another
person logs in and cannot see that job. Every step leaves a screenshot in the test's temporary
folder (its path is printed), and each screenshot is checked to be a rendered page, not a blank one.

The page is driven through its DOM contract (notes: gateway-design.md): form#login, #whoami,
select#model, input#file, button#upload, table#jobs with tr.job[data-job-id][data-status],
#job-detail, img.output-image, a.download, button#logout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.local.runner import SAMPLES_DIR
from tests.support.requirements import import_or_missing, missing, requirement

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DARKNET_CFG = Path("/usr/share/darknet/cfg/yolov3-tiny.cfg")
CONVEYOR = [str(Path(sys.executable).parent / "conveyor")]
ALICE = ("alice", "alice-secret-1")
BOB = ("bob", "bob-secret-2")
FINAL = ("SUCCEEDED", "FAILED")
ORDER = ("PENDING", "RUNNING", "SUCCEEDED")


def browser_missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"needs Debian's {package} ({path}): apt-get install chromium chromium-driver"
    return None


pytestmark = [pytest.mark.heavy, requirement(browser_missing())]

# Records every state each job row shows, as the page renders it (attribute changes and new rows
# alike), so a state shown for a moment between two of the test's looks is not missed.
WATCH_ROWS = """
window.__conveyorStates = [];
window.__conveyorNotReloaded = true;
const seen = (row) => {
  if (row && row.matches && row.matches('tr.job')) {
    window.__conveyorStates.push([row.dataset.jobId, row.dataset.status]);
  }
};
new MutationObserver((changes) => {
  for (const change of changes) {
    if (change.type === 'attributes') { seen(change.target); continue; }
    for (const node of change.addedNodes) {
      seen(node);
      if (node.querySelectorAll) { node.querySelectorAll('tr.job').forEach(seen); }
    }
  }
}).observe(document.body, {subtree: true, childList: true, attributes: true, attributeFilter: ['data-status']});
document.querySelectorAll('tr.job').forEach(seen);
"""

FETCH = """
const [url, done] = arguments;
fetch(url, {credentials: 'same-origin'})
  .then((r) => r.text().then((text) => done([r.status, r.headers.get('content-disposition'), text])))
  .catch((e) => done([0, null, String(e)]));
"""

# The slow model: says it has started, then waits for the test's go-ahead (at most 60 s).
WAITING_SCRIPT = """#!/bin/sh
touch "$MARKERS/started"
i=0
while [ ! -e "$MARKERS/go" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i + 1)); done
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"
"""


# -- helpers -----------------------------------------------------------------------------------------


def until(predicate: Callable[[], Any], what: str, timeout: float = 60, poll: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except Exception as exc:  # a stale element while the page re-renders: look again
            last = exc
        time.sleep(poll)
    pytest.fail(f"timed out waiting for {what}" + (f" (last error: {last!r})" if last else ""))


class Local:
    """`conveyor local` without --once: the loop and the gateway, until stop()."""

    def __init__(self, root: Path, *args: str) -> None:
        self.root = root
        self.err = root.parent / f"{root.name}-stderr.txt"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "CONVEYOR_PLATFORM", "DOCKER_")) and k not in ("EVENT", "FUNCTION_CONFIG")}
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.err, "wb") as fh:
            self.proc = subprocess.Popen(
                [*CONVEYOR, "local", "--dir", str(root), "--no-samples", "--workers", "1",
                 "--user", ":".join(ALICE), "--user", ":".join(BOB), *args],
                stdout=subprocess.DEVNULL, stderr=fh, env=env, cwd=root.parent)
        banner = until(self._banner, "conveyor local to start", timeout=300, poll=0.1)
        [line] = [line for line in banner.splitlines() if line.startswith("  gateway ")]
        self.url = line.split()[1]

    def _banner(self) -> str | None:
        text = self.err.read_text(errors="replace")
        if self.proc.poll() is not None:
            pytest.fail(f"conveyor local exited ({self.proc.returncode}):\n{text}")
        return text if "Ctrl-C stops" in text else None

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.err.read_text(errors="replace")


class Page:
    """The gateway's page in headless chromium, with the steps a person takes."""

    def __init__(self, driver: Any, url: str, shots: Path) -> None:
        from selenium.webdriver.common.by import By

        self.driver, self.url, self.shots, self.By = driver, url, shots, By
        self.screenshots: list[Path] = []

    def find(self, css: str) -> Any:
        return self.driver.find_element(self.By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[Any]:
        return self.driver.find_elements(self.By.CSS_SELECTOR, css)

    def shown(self, css: str) -> Any:
        return until(lambda: next((e for e in self.all(css) if e.is_displayed()), None), f"{css} to be shown")

    def login(self, user: tuple[str, str]) -> None:
        self.shown("form#login")
        name, password = self.find("#username"), self.find("#password")
        name.clear()
        name.send_keys(user[0])
        password.clear()
        password.send_keys(user[1])
        self.find("#login-submit").click()
        until(lambda: self.find("#whoami").is_displayed() and user[0] in self.find("#whoami").text,
              f"#whoami to show {user[0]}")

    def choose(self, model: str) -> None:
        from selenium.webdriver.support.select import Select

        def chosen() -> bool:  # the page may draw the list again meanwhile (a stale option): choose again
            select = Select(self.find("select#model"))
            select.select_by_value(model)
            return select.first_selected_option.get_attribute("value") == model

        until(chosen, f"the model {model} chosen in select#model")

    def upload(self, path: Path) -> None:
        self.find("input#file").send_keys(str(path))
        self.find("button#upload").click()

    def rows(self) -> dict[str, str]:
        return {row.get_attribute("data-job-id"): row.get_attribute("data-status") for row in self.all("tr.job")}

    def watch(self) -> None:
        self.driver.execute_script(WATCH_ROWS)

    def states(self, job: str) -> list[str]:
        """The distinct states the job's row showed, in order."""
        seen: list[str] = []
        for row_job, status in self.driver.execute_script("return window.__conveyorStates"):
            if row_job == job and (not seen or seen[-1] != status):
                seen.append(status)
        return seen

    def not_reloaded(self) -> bool:
        return bool(self.driver.execute_script("return window.__conveyorNotReloaded === true"))

    def fetch(self, url: str) -> tuple[int, str | None, str]:
        """GET `url` from the page, with its session cookie: (status, Content-Disposition, body)."""
        status, disposition, text = self.driver.execute_async_script(FETCH, url)
        return int(status), disposition, text

    def screenshot(self, name: str) -> Path:
        path = self.shots / f"{len(self.screenshots) + 1:02d}-{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        self.screenshots.append(path)
        assert_rendered(path)
        return path

    def console_errors(self) -> list[str]:
        try:
            entries = self.driver.get_log("browser")
        except Exception:  # a driver without the log endpoint
            return []
        return [e["message"] for e in entries if e.get("level") == "SEVERE" and "Uncaught" in e.get("message", "")]


def assert_rendered(path: Path) -> None:
    """A screenshot of a page, not of a blank (or single-colour error) one."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
        assert rgb.size[0] >= 800 and rgb.size[1] >= 600, rgb.size
        colours = rgb.getcolors(maxcolors=rgb.size[0] * rgb.size[1])  # (count, colour) of every colour
    assert len(colours) > 16, f"{path}: only {len(colours)} colours: a blank page?"
    dominant = max(count for count, _ in colours) / (rgb.size[0] * rgb.size[1])
    assert dominant < 0.98, f"{path}: one colour covers {dominant:.0%} of the page"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless chromium (Debian's), through Debian's chromedriver; no network beyond loopback."""
    webdriver = import_or_missing("selenium.webdriver", "needs selenium (the test extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--no-proxy-server", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    try:
        driver = webdriver.Chrome(service=service, options=options)
    except Exception as exc:
        missing(f"chromium would not start under chromedriver: {type(exc).__name__}: {exc}")
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = tmp_path / "screenshots"
    folder.mkdir()
    print(f"screenshots in {folder}")
    return folder


# -- the tests ---------------------------------------------------------------------------------------


@requirement(None if DARKNET_CFG.exists() else "needs Debian's darknet package (cfg and names)")
def test_a_person_uploads_a_photo_to_yolo_and_sees_the_result(tmp_path: Path, browser: Any, shots: Path) -> None:
    local = Local(tmp_path / "run", "--model", "darknet")
    page = Page(browser, local.url, shots)
    try:
        browser.get(local.url)
        page.screenshot("login")
        page.login(ALICE)
        page.choose("darknet")
        assert page.find("#model-description").text.strip()
        page.watch()
        page.upload(SAMPLES_DIR / "dog.jpg")
        job = until(lambda: next(iter(page.rows()), None), "the uploaded file's row in table#jobs")
        page.screenshot("uploaded")
        assert page.find("table#jobs").is_displayed()
        until(lambda: page.rows().get(job) in FINAL, "the job to finish", timeout=300)
        states = page.states(job)
        print(f"states the page showed for {job}: {' -> '.join(states)}")
        assert states[-1] == "SUCCEEDED", states
        assert states == [s for s in ORDER if s in states], f"states out of order: {states}"
        assert page.not_reloaded(), "the page was reloaded"
        row = page.find(f"tr.job[data-job-id='{job}']")
        assert row.find_element(page.By.CSS_SELECTOR, "td.file").text == "dog.jpg"
        assert row.find_element(page.By.CSS_SELECTOR, "td.status").text.strip().upper() == "SUCCEEDED"
        page.screenshot("succeeded")

        # the result: the annotated image, the JSON shown and downloaded
        links = row.find_elements(page.By.CSS_SELECTOR, "a.open")
        (links[0] if links else row).click()
        until(lambda: page.find("#job-detail").get_attribute("data-job-id") == job, "the job's detail")
        image = page.shown("#job-detail img.output-image")
        until(lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image),
              "the annotated image to load")
        assert browser.execute_script("return arguments[0].naturalWidth", image) > 100
        pretty = until(lambda: [p.text for p in page.all("#job-detail pre.output-json") if "dog" in p.text],
                       "the JSON shown, naming dog")
        assert pretty
        json_link = until(lambda: [a for a in page.all("#job-detail a.download")
                                   if ".json" in (a.get_attribute("href") or "")], "the JSON's download link")[0]
        status, disposition, text = page.fetch(json_link.get_attribute("href"))
        assert status == 200, text
        assert disposition and "attachment" in disposition
        detections = json.loads(text)
        assert "dog" in {d["class"] for d in detections}, detections
        page.screenshot("detail")
        assert not page.console_errors()

        # another person: nothing of alice's is theirs
        page.find("button#logout").click()
        page.shown("form#login")
        page.login(BOB)
        page.choose("darknet")
        status, _, listing = page.fetch("/api/jobs?model=darknet")
        assert status == 200 and json.loads(listing)["jobs"] == [], listing
        assert job not in page.rows()
        assert page.fetch(f"/api/jobs/{job}")[0] == 404
        page.screenshot("other-user")
        assert not page.all("tr.job")
    finally:
        stderr = local.stop()
        print(f"screenshots: {', '.join(str(p) for p in page.screenshots)}")
    assert local.proc.returncode == 0, stderr


def test_a_slow_job_is_shown_running_until_it_finishes(tmp_path: Path, browser: Any, shots: Path) -> None:
    """RUNNING comes from the start record: a model that waits for the test's go-ahead stays
    RUNNING on the page (no reload) until it is let go, then turns SUCCEEDED."""
    markers = tmp_path / "markers"
    markers.mkdir()
    config = tmp_path / "slow.yaml"
    config.write_text(yaml.safe_dump({
        "name": "slow-copy",
        "init_script": WAITING_SCRIPT,
        "environment": {"variables": {"MARKERS": str(markers)}},
        "conveyor": {"handler": "script"},
    }))
    local = Local(tmp_path / "run", "--config", str(config))
    page = Page(browser, local.url, shots)
    try:
        browser.get(local.url)
        page.login(ALICE)
        page.choose("slow-copy")
        page.watch()
        sample = tmp_path / "notes.txt"
        sample.write_text("a small text file\n")
        page.upload(sample)
        job = until(lambda: next(iter(page.rows()), None), "the uploaded file's row")
        until(lambda: (markers / "started").exists(), "the model to start", timeout=120)
        until(lambda: page.rows().get(job) == "RUNNING", "the row to show RUNNING", timeout=30)
        running = page.screenshot("running")
        (markers / "go").touch()
        until(lambda: page.rows().get(job) in FINAL, "the job to finish", timeout=120)
        states = page.states(job)
        print(f"states the page showed for {job}: {' -> '.join(states)}")
        assert states[-1] == "SUCCEEDED" and "RUNNING" in states, states
        assert states == [s for s in ORDER if s in states], f"states out of order: {states}"
        assert page.not_reloaded(), "the page was reloaded"
        page.screenshot("finished")
        assert running.exists()
    finally:
        (markers / "go").touch()
        stderr = local.stop()
        print(f"screenshots: {', '.join(str(p) for p in page.screenshots)}")
    assert local.proc.returncode == 0, stderr


def test_the_next_person_sees_nothing_of_the_last_ones_session(tmp_path: Path, browser: Any, shots: Path) -> None:
    """Logging out leaves nothing of the session on the page: the next person to log in is not
    greeted with the last one's upload message (the screenshots once showed bob alice's)."""
    local = Local(tmp_path / "run", "--model", "script")
    page = Page(browser, local.url, shots)
    try:
        browser.get(local.url)
        page.login(ALICE)
        page.choose("script")
        page.upload(SAMPLES_DIR / "eagle.jpg")
        job = until(lambda: next(iter(page.rows()), None), "the uploaded file's row")
        until(lambda: page.rows().get(job) in FINAL, "the job to finish", timeout=120)
        assert page.find("#upload-message").text.strip()
        page.find("button#logout").click()
        page.shown("form#login")
        page.login(BOB)
        page.screenshot("next-person")
        assert not page.all("tr.job")
        assert page.find("#upload-message").text.strip() == "", page.find("#upload-message").text
    finally:
        local.stop()


def test_the_screenshot_check_refuses_a_blank_page(tmp_path: Path) -> None:
    """assert_rendered is what tells a page from a blank one: it must refuse a blank screenshot."""
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.new("RGB", (1280, 1000), "white").save(blank)
    with pytest.raises(AssertionError, match="colours"):
        assert_rendered(blank)
    noisy = tmp_path / "noisy.png"
    Image.frombytes("RGB", (1280, 1000), os.urandom(1280 * 1000 * 3)).save(noisy)
    assert_rendered(noisy)

