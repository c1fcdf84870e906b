"""The web UI nimbus serves, driven in a real browser against a real cluster.

Headless Chromium (Debian's ``chromium`` and ``chromium-driver``; .ci/run installs them)
opens the pages of a cluster that runs with an API token, and each test saves a
screenshot of every page it looked at under ``build/screenshots/<test>/`` for a person
to look at."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from cluster import ROOT, Cluster, wait_for
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from streamflow import webui

CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = ROOT / "build" / "screenshots"
TOKEN = "ui-s3cret"
NAME = "flow"

# Endless, at a rate two cores keep up with beside a browser, with a bolt that fails now
# and then and a slow sink, so that the error views and the capacity warning show.
TOPOLOGY = '''
import asyncio
import itertools

from streamflow import AsyncBasicBolt, AsyncSpout, BasicBolt, TopologyBuilder

WORDS = "the quick brown fox jumps over the lazy dog".split()


class Sentences(AsyncSpout):
    outputs = ["sentence"]

    async def open(self, config, context):
        self.numbers = itertools.count()

    async def next_tuple(self):
        await asyncio.sleep(0.02)
        for n in itertools.islice(self.numbers, 10):
            self.emit((" ".join(WORDS[n % 9:] + WORDS[:n % 9]),), msg_id=n)


class Split(BasicBolt):
    outputs = ["word"]

    def process(self, tup):
        for word in tup.values[0].split():
            self.emit((word,))


class Count(BasicBolt):
    outputs = ["word", "count"]

    def prepare(self, config, context):
        self.counts = {}

    def process(self, tup):
        word = tup.values[0]
        n = self.counts[word] = self.counts.get(word, 0) + 1
        if word == "fox" and n % 1000 == 0:
            raise ValueError(f"<b>fox</b> seen {n} times")  # markup the page must show as text
        self.emit((word, n))


class Totals(AsyncBasicBolt):
    """A slow sink, busy all the time: its capacity shows red."""

    async def process(self, tup):
        await asyncio.sleep(0.001)


def build(config):
    b = TopologyBuilder("flow")
    b.set_spout("sentences", Sentences())
    b.set_bolt("split", Split(), 2).shuffle_grouping("sentences")
    b.set_bolt("count", Count(), 2).fields_grouping("split", ["word"])
    b.set_bolt("totals", Totals()).global_grouping("count")
    return b.build()
'''
needs_browser = pytest.mark.skipif(not CHROMEDRIVER.exists(), reason=f"no {CHROMEDRIVER}: install Debian's "
                                   "chromium and chromium-driver (.ci/run does)")
EDGES = {"sentences->split": "shuffle", "split->count": "fields(word)", "count->totals": "global"}


def test_page_serves_the_pages_and_their_files_only() -> None:
    html = "text/html; charset=utf-8"
    cluster_page, topology_page = webui.page("/"), webui.page("/topology/wc-1.x?refresh=1")
    assert cluster_page is not None and cluster_page[0] == html and b"/static/cluster.js" in cluster_page[1]
    assert topology_page is not None and topology_page[0] == html and b"/static/topology.js" in topology_page[1]
    assert webui.page("/static/style.css") == ("text/css; charset=utf-8",
                                               (Path(webui.__file__).parent / "static" / "style.css").read_bytes())
    # Every file a page or a script refers to is served, as the type the browser needs.
    for path in ("/", "/topology/wc"):
        for asset in re.findall(rb'"(/static/[^"]+)"', webui.page(path)[1]):  # type: ignore[index]
            assert webui.page(asset.decode()) is not None, asset
    for script in (Path(webui.__file__).parent / "static").glob("*.js"):
        for module in re.findall(r'from "\./([^"]+)"', script.read_text()):
            assert webui.page(f"/static/{module}")[0] == "text/javascript; charset=utf-8"  # type: ignore[index]
    for path in ("/nope", "/topology/", "/topology/a/b", "/static/missing.js", "/static/__init__.py",
                 "/static/../__init__.py", "/static/%2e%2e/__init__.py", "/static//etc/passwd",
                 "/static/sub/style.css", "/api/v1/cluster"):
        assert webui.page(path) is None, path


class Browser:
    """Headless Chromium on one nimbus, saving screenshots into ``shots``."""

    def __init__(self, url: str, shots: Path) -> None:
        options = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console: CSP violations
        # A driver path given: selenium-manager never looks for (or downloads) one.
        self.driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        self.url, self.shots = url, shots

    def open(self, path: str) -> None:
        self.driver.get(self.url + path)

    def save_token(self, token: str) -> None:
        """Enter the token as a user does: in the header's field, then Save."""
        field = self.find("#token")
        field.clear()
        field.send_keys(token)
        self.click("#token-form button")

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def click(self, css: str) -> None:
        """Click the element, found again if a refresh redrew it between finding and clicking."""
        def clicked() -> bool:
            self.find(css).click()
            return True

        self.until(clicked, f"a click on {css}")

    def texts(self, css: str, key: str = "") -> dict[str, str]:
        """The text of every element matching ``css``, by its attribute ``key`` (else by
        position), read in one script: the page redraws every 2 s, so an element found by
        one WebDriver call may be gone by the next."""
        return self.driver.execute_script(  # type: ignore[no-any-return]
            "return Object.fromEntries(Array.from(document.querySelectorAll(arguments[0]),"
            " (e, i) => [arguments[1] ? e.getAttribute(arguments[1]) : i, e.innerText ?? e.textContent]))",
            css, key)

    def text(self, css: str) -> str:
        """The text of the first element matching ``css``, or "" while there is none."""
        return next(iter(self.texts(css).values()), "")

    def until(self, condition: Callable[[], Any], what: str, timeout: float = 20) -> Any:
        """Wait for ``condition`` as the page refreshes; fail naming ``what``."""
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1,
                                 ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                                 ).until(lambda _: condition())
        except TimeoutException:
            # What the page said, to tell a slow cluster from a refused call.
            raise AssertionError(f"waited {timeout:g} s for {what}; the page's banner: "
                                 f"{self.text('#problem')!r}, updated: {self.text('#updated')!r}") from None

    def screenshot(self, name: str) -> None:
        """The whole page, not just the window: grow the window (page plus browser frame) first."""
        height = self.driver.execute_script(
            "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight")
        self.driver.set_window_size(1400, max(1000, height))
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        print(f"screenshot: {path}")


@pytest.fixture(scope="module")
def ui_cluster(zookeeper: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """2 nimbus (leader and standby) with an API token, 2 supervisors, and the endless
    ``flow`` topology running on 2 workers."""
    workdir = tmp_path_factory.mktemp("webui")
    c = Cluster(zookeeper.hosts, f"/streamflow-webui-{os.getpid()}", workdir / "cluster", token=TOKEN)
    c.start()
    try:
        (workdir / "flow").mkdir()
        (workdir / "flow" / "flow.py").write_text(TOPOLOGY)
        result = c.cli("submit", str(workdir / "flow" / "flow.py"), "--name", NAME, "--workers", "2")
        assert result.returncode == 0, result.stderr
        wait_for(lambda: c.status(NAME)["components"]["sentences"]["emitted"] > 0, 60, "the spout emitting")
        yield c
    finally:
        c.stop()


@pytest.fixture
def browser(ui_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Browser]:
    """A fresh browser (empty localStorage, so no token) and an empty screenshot folder."""
    shots = SCREENSHOTS / request.node.name
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    b = Browser(ui_cluster.url, shots)
    yield b
    b.driver.quit()


def emitted(browser: Browser) -> int:
    """The spout's emitted count since start, as the topology page shows it (0 before it shows one)."""
    text = browser.text('article[data-component="sentences"] tr[data-window="total"] td[data-field="emitted"]')
    return int(text.replace(",", "")) if text[:1].isdigit() else 0


@needs_browser
def test_cluster_page_lists_supervisors_and_the_topology(ui_cluster: Cluster, browser: Browser) -> None:
    browser.open("/")
    browser.save_token(TOKEN)
    browser.until(lambda: browser.text('tr[data-topology="flow"]'), "the topology's row")
    rows = browser.texts("tr[data-supervisor]", "data-supervisor")
    assert set(rows) == set(ui_cluster.supervisors)
    assert all("127.0.0.1" in text for text in rows.values())
    assert "active" in browser.text('tr[data-topology="flow"]')
    roles = [text.split()[-1] for text in browser.texts("tr[data-nimbus]").values()]
    assert sorted(roles) == ["leader", "standby"]
    browser.screenshot("cluster")

    browser.click('tr[data-topology="flow"] a')
    browser.until(lambda: browser.text("#name") == NAME, "the topology page after the link")
    assert browser.driver.current_url == f"{ui_cluster.url}/topology/{NAME}"


@needs_browser
def test_topology_page_draws_the_dag_and_its_counters_move(ui_cluster: Cluster, browser: Browser) -> None:
    browser.open("/")
    browser.save_token(TOKEN)
    browser.open(f"/topology/{NAME}")
    browser.until(lambda: len(browser.texts("svg.dag g.node")) == 4, "the graph's four nodes")
    nodes = set(browser.texts("svg.dag g.node", "data-component"))
    assert nodes == {"sentences", "split", "count", "totals"}  # the acker is left out
    edges = browser.texts("svg.dag g.edge", "data-edge")
    assert edges == EDGES
    cards = set(browser.texts("article.component", "data-component"))
    assert cards == set(ui_cluster.status(NAME)["components"])
    assert len(browser.texts("#workers tbody tr")) == 2
    browser.until(lambda: browser.texts("svg.dag g.node.hot", "data-component").keys() == {"totals"}
                  and browser.texts("article.component.hot", "data-component").keys() == {"totals"},
                  "the slow sink, and only it, marked as over capacity")

    browser.until(lambda: "<b>fox</b> seen 1000 times" in browser.text("#errors"), "the bolt's error as text")
    assert not browser.texts("#errors b, .last-error b")

    first = browser.until(lambda: emitted(browser), "the spout's emitted count")
    browser.until(lambda: emitted(browser) > first, f"emitted to grow past {first} on a refresh")
    browser.screenshot("topology")


@needs_browser
def test_deactivate_activate_and_rebalance_with_the_token(ui_cluster: Cluster, browser: Browser) -> None:
    browser.open("/")
    browser.save_token(TOKEN)
    browser.open(f"/topology/{NAME}")
    browser.until(lambda: browser.text("#status") == "active", "the status 'active'")

    browser.click("#deactivate")
    wait_for(lambda: ui_cluster.api("status", NAME)["status"] == "inactive", 10, "'inactive' in the API")
    browser.until(lambda: browser.text("#status") == "inactive", "the status 'inactive' on the page")
    assert browser.find("#activate").is_enabled() and not browser.find("#deactivate").is_enabled()
    browser.screenshot("topology-inactive")

    browser.click("#activate")
    wait_for(lambda: ui_cluster.api("status", NAME)["status"] == "active", 10, "'active' in the API again")
    browser.until(lambda: browser.text("#status") == "active", "the status 'active' on the page again")

    browser.click("#rebalance summary")
    browser.find('#rebalance-parallelism input[data-component="totals"]').send_keys("2")
    browser.click("#rebalance-form button")
    wait_for(lambda: ui_cluster.api("status", NAME)["components"]["totals"]["tasks"] == 2, 10,
             "2 tasks of totals in the API")
    browser.until(lambda: "2 tasks" in browser.text('svg.dag g.node[data-component="totals"]'),
                  "2 tasks of totals in the graph")


@needs_browser
def test_without_the_token_the_pages_say_401_and_change_nothing(ui_cluster: Cluster, browser: Browser) -> None:
    browser.open("/")
    browser.until(lambda: "401" in browser.text("#problem"), "the 401 message on the cluster page")
    assert "token" in browser.text("#problem") and not browser.texts("tr[data-topology]")
    browser.screenshot("cluster")

    browser.open(f"/topology/{NAME}")
    browser.until(lambda: "401" in browser.text("#problem"), "the 401 message on the topology page")
    browser.click("#deactivate")
    browser.until(lambda: "401" in browser.text("#action-result"), "the refused deactivation")
    assert ui_cluster.api("status", NAME)["status"] == "active"
    browser.screenshot("topology")


@needs_browser
def test_the_pages_run_under_their_content_security_policy(ui_cluster: Cluster, browser: Browser) -> None:
    """Nimbus serves every page with a Content-Security-Policy that refuses inline scripts
    and styles: the pages draw everything without one violation (the browser's console
    names each), the supervisors' usage bars included."""
    browser.open("/")
    browser.save_token(TOKEN)
    browser.until(lambda: browser.text('tr[data-topology="flow"]'), "the cluster page drawn")
    widths = browser.driver.execute_script(
        "return Array.from(document.querySelectorAll('tr[data-supervisor] .fill'), (e) => e.style.width)")
    assert widths and all(width.endswith("%") for width in widths), widths
    browser.open(f"/topology/{NAME}")
    browser.until(lambda: emitted(browser) > 0, "the topology page drawn")
    console = [entry["message"] for entry in browser.driver.get_log("browser")]
    assert not [line for line in console if "Content Security Policy" in line], console


@needs_browser
def test_kill_button_asks_first(ui_cluster: Cluster, browser: Browser, tmp_path: Path) -> None:
    (tmp_path / "doomed.py").write_text(TOPOLOGY)
    result = ui_cluster.cli("submit", str(tmp_path / "doomed.py"), "--name", "doomed", "--workers", "1")
    assert result.returncode == 0, result.stderr
    browser.open("/")
    browser.save_token(TOKEN)
    browser.open("/topology/doomed")
    browser.until(lambda: browser.text("#status") == "active", "the status 'active'")
    browser.find("#kill-wait").send_keys("0")

    browser.click("#kill")
    assert "Kill topology doomed?" in browser.driver.switch_to.alert.text
    browser.driver.switch_to.alert.dismiss()
    assert ui_cluster.api("status", "doomed")["status"] == "active"

    browser.click("#kill")
    browser.driver.switch_to.alert.accept()
    browser.until(lambda: "Killed" in browser.text("#action-result"), "the kill acknowledged")
    wait_for(lambda: all(t["name"] != "doomed" for t in ui_cluster.api("list")["topologies"]), 20,
             "the killed topology gone")
    browser.until(lambda: "no topology named 'doomed'" in browser.text("#problem"), "the page saying it is gone")
    browser.screenshot("topology-killed")
