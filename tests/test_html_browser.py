"""The HTML page in a real browser: Debian's headless Chromium driven by Selenium (chromedriver).

The page is opened from file:// with the network off (DevTools offline emulation, a resolver
that resolves nothing and a proxy that refuses): no request may leave it, its counts must be
the report's, filtering must show exactly the matching hosts, untrusted text must stay text,
and nothing may land on the console. Screenshots at 1280x800 and at a phone's width must show
something; with FLEETSCAN_SCREENSHOTS=DIR they are kept there.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageStat

from scanner.cli import main
from scanner.findings import ScanReport
from scanner.report import html, page
from tests.htmlfleet import (
    HOSTILE_EVIDENCE,
    HOSTILE_NAME,
    HOSTILE_REASON,
    blocking_candidate,
    mixed_fleet,
    trees,
)

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

DESKTOP = (1280, 800)
PHONE = (390, 844)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("needs chromium: Debian's chromium and chromium-driver (scripts/setup --test)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI; the page is our own file
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
        # Network off: nothing resolves, and any connection would go to a refusing proxy.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=http://127.0.0.1:9",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd(
            "Network.emulateNetworkConditions",
            {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0},
        )
        yield driver
    finally:
        driver.quit()


def open_page(driver: WebDriver, path: Path) -> str:
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get_log("performance")
    viewport(driver, DESKTOP)
    url = path.resolve().as_uri()
    driver.get(url)
    assert driver.execute_script("return document.readyState") == "complete"
    return url


def viewport(driver: WebDriver, size: tuple[int, int]) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": size == PHONE},
    )


def requests_made(driver: WebDriver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


def assert_no_alert(driver: WebDriver) -> None:
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018 - the property raises when no alert is open


def shoot(driver: WebDriver, size: tuple[int, int], name: str, keep: Path) -> Image.Image:
    """A screenshot at `size` that is not blank: several colours, real variation, text drawn."""
    viewport(driver, size)
    driver.execute_script("window.scrollTo(0, 0)")
    png = driver.get_screenshot_as_png()
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size == size
    colours = image.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 20, f"{name}: nearly uniform"
    assert max(ImageStat.Stat(image).stddev) > 20, f"{name}: no contrast"
    keep.mkdir(parents=True, exist_ok=True)
    (keep / f"{name}.png").write_bytes(png)
    saved = os.environ.get("FLEETSCAN_SCREENSHOTS")
    if saved:
        Path(saved).mkdir(parents=True, exist_ok=True)
        (Path(saved) / f"{name}.png").write_bytes(png)
    return image


def open_details(driver: WebDriver, host: Any) -> list[Any]:
    """Open a host's findings; lazy ones are built on the toggle event, which comes a moment later."""
    host.find_element(By.CSS_SELECTOR, "details.findings > summary").click()
    WebDriverWait(driver, 10).until(lambda _: host.find_elements(By.CSS_SELECTOR, ".finding"))
    return list(host.find_elements(By.CSS_SELECTOR, ".finding"))


def visible_hosts(driver: WebDriver) -> list[str]:
    """Hosts whose rows the browser lays out (one script call, not one round trip per row)."""
    hosts: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll('#host-table tbody.host'))"
        ".filter(function (t) { return t.getClientRects().length > 0; })"
        ".map(function (t) { return t.getAttribute('data-host'); });"
    )
    return hosts


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> ScanReport:
    return mixed_fleet(tmp_path_factory.mktemp("fleet"))


def test_mixed_fleet_page_offline(browser: WebDriver, fleet: ScanReport, tmp_path: Path) -> None:
    path = tmp_path / "fleet.html"
    path.write_text(html.render(fleet))
    url = open_page(browser, path)
    # Only the page itself was requested.
    assert requests_made(browser) == [url]
    # The counts shown are the report's summary.
    shown = {
        e.get_attribute("data-verdict"): int(e.text)
        for e in browser.find_elements(By.CSS_SELECTOR, "#summary .count")
    }
    summary = fleet.summary.model_dump(by_alias=True)
    assert shown == {k: v for k, v in summary.items() if k != "hosts"}
    assert int(browser.find_element(By.ID, "total").text) == fleet.summary.hosts
    # Paging shows the first 100; every host is one row.
    assert len(visible_hosts(browser)) == fleet.summary.hosts
    # Filtering to affected shows exactly the affected hosts.
    Select(browser.find_element(By.ID, "filter-verdict")).select_by_value("affected")
    affected = sorted(h.host for h in fleet.hosts if h.verdict.value == "affected")
    assert sorted(visible_hosts(browser)) == affected
    assert "showing 1\N{EN DASH}2 of 2 host(s)" in browser.find_element(By.ID, "shown").text
    Select(browser.find_element(By.ID, "filter-verdict")).select_by_value("unknown")
    assert sorted(visible_hosts(browser)) == sorted(
        h.host for h in fleet.hosts if h.verdict.value == "unknown"
    )
    # Text search narrows within the verdict.
    box = browser.find_element(By.ID, "filter-text")
    box.send_keys("db-0")
    assert sorted(visible_hosts(browser)) == ["db-07", "db-08"]
    # clear() fires no input event: empty the box as a user's deletion would.
    browser.execute_script(
        "var b = document.getElementById('filter-text'); b.value = '';"
        "b.dispatchEvent(new Event('input'));"
    )
    Select(browser.find_element(By.ID, "filter-verdict")).select_by_value("")
    assert len(visible_hosts(browser)) == fleet.summary.hosts
    # Sorting by host name, then reversed.
    header = browser.find_element(By.CSS_SELECTOR, 'th[data-key="host"]')
    header.click()
    ascending = visible_hosts(browser)
    header.click()
    assert visible_hosts(browser) == list(reversed(ascending))
    assert sorted(ascending) == sorted(h.host for h in fleet.hosts)
    assert_no_alert(browser)
    assert console_errors(browser) == []
    keep = tmp_path / "shots"
    shoot(browser, DESKTOP, "mixed-fleet-1280x800", keep)
    shoot(browser, PHONE, "mixed-fleet-phone-390", keep)
    assert requests_made(browser) == []


def test_hostile_text_is_text_inline_and_lazy(
    browser: WebDriver, fleet: ScanReport, tmp_path: Path
) -> None:
    built = page.build(fleet)
    for inline in (len(built.hosts), 0):  # every host's details in the page, then none
        path = tmp_path / f"hostile-{inline}.html"
        path.write_text(html.render_page(built, inline=inline))
        open_page(browser, path)
        assert_no_alert(browser)
        assert browser.find_elements(By.TAG_NAME, "img") == []
        assert browser.find_elements(By.TAG_NAME, "b") == []
        assert len(browser.find_elements(By.TAG_NAME, "script")) == 2
        host = next(
            t
            for t in browser.find_elements(By.CSS_SELECTOR, "tbody.host")
            if t.get_attribute("data-host") == HOSTILE_NAME
        )
        assert host.find_element(By.CSS_SELECTOR, "th.name").text == HOSTILE_NAME
        findings = open_details(browser, host)
        assert len(findings) == len(fleet.rules.ids if fleet.rules else [])
        values = [e.text for e in host.find_elements(By.CSS_SELECTOR, "td.value")]
        assert HOSTILE_EVIDENCE in values
        reasons = [e.text for e in host.find_elements(By.CSS_SELECTOR, "p.reason")]
        assert HOSTILE_REASON in reasons
        assert_no_alert(browser)
        # A lazily opened host shows the same findings as the inline page.
        rows = host.find_elements(By.CSS_SELECTOR, "table.evidence tbody tr")
        assert len(rows) == sum(len(f.evidence) for f in built.hosts[0].source.findings)
        assert console_errors(browser) == []


def test_blocked_gate_page(browser: WebDriver, tmp_path: Path) -> None:
    saved = tmp_path / "now.json"
    roots = [a for p in trees(tmp_path / "t") for a in ("--root", str(p))]
    assert (
        main(["evaluate", *roots, "--output", str(saved), "--fail-on", "never", "--no-history"])
        == 0
    )
    path = tmp_path / "gate.html"
    argv = ["gate", "--kernel", str(blocking_candidate(tmp_path)), "--facts", str(saved)]
    assert main([*argv, "--html", str(path), "--no-history"]) == 1
    url = open_page(browser, path)
    assert requests_made(browser) == [url]
    assert browser.find_element(By.ID, "gate-decision").text == "BLOCKED"
    broken = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#gate a")]
    assert sorted(broken) == ["genoa-510-5level", "genoa-510-debian11", "genoa-61"]
    # A link to a host that paging hid shows it.
    browser.find_elements(By.CSS_SELECTOR, "#gate a")[0].click()
    assert broken[0] in visible_hosts(browser)
    assert console_errors(browser) == []
    keep = tmp_path / "shots"
    shoot(browser, DESKTOP, "blocked-gate-1280x800", keep)
    shoot(browser, PHONE, "blocked-gate-phone-390", keep)


def test_large_fleet_pages_and_opens_details_on_demand(
    browser: WebDriver, fleet: ScanReport, tmp_path: Path
) -> None:
    # 1,200 hosts: copies of the mixed fleet's real hosts under new names.
    hosts = []
    for index in range(1200):
        source = fleet.hosts[index % len(fleet.hosts)]
        if source.host == HOSTILE_NAME:
            source = fleet.hosts[0]
        hosts.append(source.model_copy(update={"host": f"node-{index:04d}"}))
    large = ScanReport.of(hosts)
    path = tmp_path / "large.html"
    path.write_text(html.render(large))
    open_page(browser, path)
    assert len(visible_hosts(browser)) == 100
    browser.find_element(By.ID, "next").click()
    second = visible_hosts(browser)
    assert (
        len(second) == 100
        and "showing 101\N{EN DASH}200 of 1200" in browser.find_element(By.ID, "shown").text
    )
    Select(browser.find_element(By.ID, "page-size")).select_by_value("0")
    assert len(visible_hosts(browser)) == 1200
    last = browser.find_elements(By.CSS_SELECTOR, "tbody.host")[-1]
    assert "lazy" in (last.find_element(By.CSS_SELECTOR, "details").get_attribute("class") or "")
    browser.execute_script("arguments[0].scrollIntoView()", last)
    assert len(open_details(browser, last)) == len(large.hosts[-1].findings)
    assert console_errors(browser) == []
    # Without JavaScript (rows after the first page start hidden) every host is shown.
    browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    try:
        browser.get(path.resolve().as_uri())
        # On a loaded machine the 1,200 rows may still be laying out when get() returns (once
        # seen in CI: 15 rows); give the page a few seconds to settle before counting.
        WebDriverWait(browser, 15).until(lambda b: len(visible_hosts(b)) == 1200)
        assert len(visible_hosts(browser)) == 1200
    finally:
        browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})
