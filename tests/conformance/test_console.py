"""The web console (issue 13, item 2) in a real browser against a real 3-broker cluster.

Headless Chromium (Debian's ``chromium`` and ``chromium-driver``, which scripts/_env.sh installs;
skipped without them, failing when ``CI`` is set) driven by selenium loads every page of the
console from the one broker that owns none of the test's topic's partitions, so that what it
shows of the topic and of the group comes from the other brokers (their partition states and
readiness, the coordinator's DescribeGroups, every broker's rates):

- the cluster page lists the three brokers, each ready, with the HTTP address its registration
  advertises (the one its log names), and who owns each partition of the topic as etcd says;
- the topic list and the topic's page show its partition count, each partition's leader (the
  owner key's broker), its high watermark (the records produced to it) and its configs;
- the group's page, while its consumer runs, shows it Stable with the member and its
  assignment; after the consumer committed and stopped and more records came, the group list
  and the group's page show it Empty with lag = records produced - committed offset, for each
  partition and in all. The group's name has HTML in it: it must show as text;
- the charts page draws the six charts with a line per broker, the produce spike included.

Each page is saved as a PNG in the test's tmp dir (and, when ``KAFSCALE_CONSOLE_SCREENSHOTS``
names a directory, there too: docs/console.png is one of them). The cluster is the module's
(tests/conformance/three_brokers.py); the browser is killed on the way out.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import confluent_kafka
import confluent_kafka.admin
import pytest

from kafscale.broker.cluster import _ranked, placement
from tests.conformance import three_brokers
from tests.faults.cluster import Cluster

cluster = three_brokers.cluster
checked = three_brokers.checked

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4
FIRST = {0: 5, 1: 3, 2: 0, 3: 7}
"""Records produced to each partition before the consumer reads them all and commits."""
MORE = {0: 2, 3: 4}
"""Records produced after the consumer stopped: the group's lag."""
WAIT_S = 20.0
"""How long a page may take to show what it must (it refreshes every 5 s)."""
TIMEOUT_S = 30.0


def require_chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver; skip when absent, fail when ``CI`` is set."""
    found = (shutil.which("chromium"), shutil.which("chromedriver"))
    if None in found:
        reason = (
            "chromium and chromium-driver are not installed (scripts/_env.sh installs them: "
            "apt-get install chromium chromium-driver)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI: {reason}")
        pytest.skip(reason)
    return found[0] or "", found[1] or ""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Chromium under chromedriver (both our children; quit on the way out)."""
    chromium, chromedriver = require_chromium()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI: selenium is not installed (the test extra has it)")
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI: Chromium's sandbox refuses to run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,860",
        "--force-device-scale-factor=1",
        "--lang=en-US",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(arg)
    # The driver is given: selenium looks for nothing on the network.
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        driver.set_page_load_timeout(TIMEOUT_S)
        yield driver
    finally:
        driver.quit()


def http_addresses(cluster: Cluster) -> dict[int, str]:
    """Each broker's HTTP ``host:port`` as its registration in etcd advertises it."""
    prefix = f"/{cluster.namespace}/brokers/"
    return {
        int(key[len(prefix) :]): str(json.loads(value)["http"])
        for key, value in cluster.etcd_range(prefix).items()
    }


def get_json(address: str, path: str) -> Any:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as response:
        return json.loads(response.read())


class Console:
    """The console of one broker in the browser: open a page, wait for content, screenshot."""

    def __init__(self, driver: Any, address: str, shots: list[Path]) -> None:
        self.driver = driver
        self.base = f"http://{address}/"
        self.shots = shots
        self._loads = itertools.count()

    def open(self, route: str, ready: str) -> None:
        """Load the console afresh at ``#/route`` (a new query string: a new document, not a
        hash change) and wait until the CSS selector ``ready`` matches."""
        self.driver.get(f"{self.base}?load={next(self._loads)}#/{route}")
        self.wait(lambda: self.count(ready), f"{ready!r} on #/{route}")

    def wait(self, check: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                status = self.text("#status")
                pytest.fail(f"console: no {what} after {timeout}s (status: {status!r})")
            time.sleep(0.1)

    # Everything is read by one script call each, never through element handles: the page
    # replaces its content on every refresh (the charts' every second), and a handle to the
    # replaced content would be stale.

    def count(self, css: str) -> int:
        return int(
            self.driver.execute_script("return document.querySelectorAll(arguments[0]).length", css)
        )

    def text(self, css: str) -> str:
        """The shown text of the first match ("" when none)."""
        script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''"
        return str(self.driver.execute_script(script, css)).strip()

    def texts(self, css: str) -> list[str]:
        """The text content of every match (SVG text too, which has no innerText)."""
        script = "return [...document.querySelectorAll(arguments[0])].map((e) => e.textContent)"
        return [str(t) for t in self.driver.execute_script(script, css)]

    def rows(self, table: str) -> list[dict[str, str]]:
        """The rows of a table of the page: column key (``data-col``) -> shown text, read in
        one script call (a refresh cannot swap the table half-way through)."""
        script = """
            return [...document.querySelectorAll(arguments[0] + ' tbody tr')].map((tr) =>
              Object.fromEntries([...tr.cells].map((td) =>
                [td.getAttribute('data-col'), td.innerText.trim()])));
        """
        return list(self.driver.execute_script(script, f"#{table}"))

    def screenshot(self, path: Path) -> None:
        # The whole page, not only the window (the tallest pages are cut otherwise), and not
        # more (measured in a short window: the page is at least as tall as the window).
        self.driver.set_window_size(1280, 400)
        height, chrome = self.driver.execute_script(
            "return [document.documentElement.scrollHeight, outerHeight - innerHeight]"
        )
        self.driver.set_window_size(1280, min(int(height) + int(chrome), 3000))
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(1280, 860)
        self.shots.append(path)


def topic_leaving_out_a_broker(brokers: list[int]) -> tuple[str, int]:
    """A fresh topic name whose partitions the placement puts on all brokers but one, and
    that one (the console is read from it)."""
    for _ in range(1000):
        name = f"console-{uuid.uuid4().hex[:8]}"
        spare = set(brokers) - set(placement(name, PARTITIONS, brokers))
        if spare:
            return name, min(spare)
    raise AssertionError("no topic name found")


def group_named_elsewhere(viewer: int, brokers: list[int]) -> str:
    """A group name with HTML in it whose coordinator-to-be is not the ``viewer`` (so the
    console asks another broker's DescribeGroups)."""
    for i in range(1000):
        name = f'console <b class="x">group</b> & "{i}"'
        if _ranked(name, brokers)[0] != viewer:
            return name
    raise AssertionError("no group name found")


def produce(bootstrap: str, topic: str, counts: dict[int, int], start: dict[int, int]) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    failures: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    for partition, n in counts.items():
        for i in range(n):
            value = f"record {start.get(partition, 0) + i} of partition {partition}".encode()
            producer.produce(topic, value, partition=partition, on_delivery=delivered)
    assert producer.flush(TIMEOUT_S) == 0 and not failures, failures


def test_console_pages(browser: Any, checked: Cluster, tmp_path: Path) -> None:
    cluster = checked
    ids = [b.id for b in cluster.brokers]
    http = http_addresses(cluster)
    assert sorted(http) == ids, http
    for b in cluster.brokers:  # the registration advertises the port the broker bound
        assert f"HTTP on {http[b.id]} " in b.text(), (b.id, http[b.id])

    topic, viewer = topic_leaving_out_a_broker(ids)
    group = group_named_elsewhere(viewer, ids)
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": cluster.bootstrap})
    new = confluent_kafka.admin.NewTopic(
        topic, PARTITIONS, 1, config={"retention.ms": "3600000", "cleanup.policy": "delete"}
    )
    admin.create_topics([new])[topic].result(TIMEOUT_S)
    owners = three_brokers.wait_owned(cluster, topic, PARTITIONS)
    leaders = {p: broker for p, (broker, _) in owners.items()}
    assert viewer not in leaders.values(), (viewer, leaders)
    produce(cluster.bootstrap, topic, FIRST, {})

    shots: list[Path] = []
    console = Console(browser, http[viewer], shots)

    # --- the cluster -----------------------------------------------------------------------
    console.open("cluster", "#brokers tbody tr")

    def brokers_ready() -> list[dict[str, str]] | None:
        rows = console.rows("brokers")
        return rows if len(rows) == 3 and all("ready" == r["ready"] for r in rows) else None

    rows = console.wait(brokers_ready, "three ready brokers")
    assert [r["id"] for r in rows] == [str(i) for i in ids]
    assert [r["http"] for r in rows] == [http[i] for i in ids]
    assert [r["address"] for r in rows] == [b.address for b in cluster.brokers]
    assert "this page" in rows[viewer]["notes"]
    [owned] = [r for r in console.rows("ownership") if r["topic"] == topic]
    assert owned["partitions"] == str(PARTITIONS) and owned["unowned"] == "0"
    for i in ids:
        mine = sorted(p for p, b in leaders.items() if b == i)
        want = f"{len(mine)} ({', '.join(map(str, mine))})" if mine else "\u2013"  # an en dash
        assert owned[f"b{i}"] == want, (i, owned)
    console.screenshot(tmp_path / "console-cluster.png")

    # --- topics ----------------------------------------------------------------------------
    console.open("topics", f'#topics tr[data-topic="{topic}"]')
    [row] = [r for r in console.rows("topics") if r["name"] == topic]
    assert row["partitions"] == str(PARTITIONS)
    assert row["records"] == str(sum(FIRST.values()))
    for i in set(leaders.values()):
        assert f"broker {i} \u00d7 {list(leaders.values()).count(i)}" in row["leaders"], row
    assert row["configs"] == "cleanup.policy, retention.ms"
    console.screenshot(tmp_path / "console-topics.png")

    console.open(f"topics/{topic}", "#partitions tbody tr")
    assert console.text("#topic-name") == topic
    partitions = console.rows("partitions")
    assert [r["partition"] for r in partitions] == [str(p) for p in range(PARTITIONS)]
    for p, r in enumerate(partitions):
        assert r["leader"] == f"broker {leaders[p]}", (p, r)
        assert r["epoch"] == str(owners[p][1]), (p, r)
        assert (r["log_start"], r["hw"]) == ("0", str(FIRST[p])), (p, r)
        assert (r["size"] == "0 B") == (FIRST[p] == 0), (p, r)
    configs = {r["key"]: r["value"] for r in console.rows("configs")}
    assert configs == {"cleanup.policy": "delete", "retention.ms": "3600000"}
    console.screenshot(tmp_path / "console-topic.png")

    # --- a consumer group: running, then stopped with lag ----------------------------------
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "group.id": group,
            "client.id": "console-test",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    try:
        consumer.subscribe([topic])
        got = 0
        deadline = time.monotonic() + TIMEOUT_S
        while got < sum(FIRST.values()):
            assert time.monotonic() < deadline, f"consumed {got} of {sum(FIRST.values())}"
            msg = consumer.poll(0.5)
            if msg is not None:
                assert msg.error() is None, msg.error()
                got += 1
        consumer.commit(asynchronous=False)  # what it read: FIRST, partition by partition
        route = f"groups/{_quote(group)}"
        console.open(route, "#group-name")
        console.wait(lambda: "Stable" in console.text("#group-state"), "group Stable")
        console.wait(lambda: len(console.rows("members")) == 1, "one member")
        [member] = console.rows("members")
        assert member["client"] == "console-test"
        want = ", ".join(str(p) for p in range(PARTITIONS))
        assert member["assignment"] == f"{topic}: {want}", member
        console.screenshot(tmp_path / "console-group-running.png")
    finally:
        consumer.close()
    produce(cluster.bootstrap, topic, MORE, FIRST)
    produced = {p: FIRST.get(p, 0) + MORE.get(p, 0) for p in range(PARTITIONS)}
    committed = {p: n for p, n in FIRST.items() if n}  # nothing read: nothing committed
    lag = {p: produced[p] - committed[p] for p in committed}
    total_lag = sum(produced[p] for p in committed) - sum(committed.values())
    assert total_lag == sum(MORE.values())  # the test's own arithmetic

    console.open("groups", "#groups tbody tr")

    def group_row() -> dict[str, str] | None:
        found = [r for r in console.rows("groups") if r["group"] == group]
        return found[0] if found and found[0]["lag"] == str(total_lag) else None

    row = console.wait(group_row, f"the group with lag {total_lag}")
    assert row["state"] == "Empty" and row["members"] == "0" and row["topics"] == topic, row
    assert row["coordinator"] == f"broker {three_brokers.group_owner(cluster, group)}", row
    assert not console.count("#view b.x"), "the group's name was inserted as HTML"
    console.screenshot(tmp_path / "console-groups.png")

    console.open(f"groups/{_quote(group)}", "#group-partitions tbody tr")
    assert console.text("#group-name") == group
    assert not console.count("#view b.x"), "the group's name was inserted as HTML"
    console.wait(lambda: console.text("#group-lag") == str(total_lag), "the total lag")
    assert "Empty" in console.text("#group-state")
    assert console.count("#members.empty"), "a stopped consumer is still a member"
    rows = console.rows("group-partitions")
    assert {int(r["partition"]): int(r["committed"]) for r in rows} == committed
    assert {int(r["partition"]): int(r["hw"]) for r in rows} == {p: produced[p] for p in lag}
    assert {int(r["partition"]): int(r["lag"]) for r in rows} == lag
    assert {r["topic"] for r in rows} == {topic}
    console.screenshot(tmp_path / "console-group.png")

    # --- charts ----------------------------------------------------------------------------
    charts = [
        "produce-bytes",
        "fetch-bytes",
        "produce-records",
        "fetch-records",
        "flush-avg",
        "flush-max",
    ]
    console.open("charts", "#chart-flush-max svg")
    for name in charts:
        legend = console.text(f"#chart-{name} .legend")
        assert [int(i) for i in re.findall(r"broker (\d+):", legend)] == ids, (name, legend)
        assert console.count(f"#chart-{name} path.line") == 3, name

    # The y axis' top label is the scale: "1" only when nothing was produced in the window.
    # The grid labels come first (0, ..., the top), then the time axis' (-5m, ..., now).
    def produce_drawn() -> bool:
        labels = console.texts("#chart-produce-records svg text")
        return labels[labels.index("-5m") - 1] != "1"

    console.wait(produce_drawn, "the records produced on the produce chart")
    console.wait(lambda: console.count("#chart-flush-max circle"), "a flush on the flush chart")
    console.screenshot(tmp_path / "console-charts.png")

    shots_dir = os.environ.get("KAFSCALE_CONSOLE_SCREENSHOTS")
    if shots_dir:
        Path(shots_dir).mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy(shot, Path(shots_dir) / shot.name)


def _quote(name: str) -> str:
    """A name as the console's links put it in the route (encodeURIComponent)."""
    return quote(name, safe="-_.!~*'()")


def test_console_files(checked: Cluster) -> None:
    """The console's files: served with their types and a strict content security policy
    (no inline script), nothing outside the console's directory; and all of them are package
    data, so that an installed wheel serves them too."""
    address = http_addresses(checked)[checked.brokers[0].id]
    with urllib.request.urlopen(f"http://{address}/", timeout=10) as response:
        page = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/html")
        csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp, csp
    assert re.search(r'<script src="/console/console\.js"', page)
    assert "<script>" not in page  # no inline script: the policy would refuse it
    for name, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
        with urllib.request.urlopen(f"http://{address}/console/{name}", timeout=10) as response:
            assert response.headers["Content-Type"].startswith(kind), name
    for bad in ("..%2Fhttp.py", "%2E%2E%2Fhttp.py", ".hidden.js", "nope.js", "console.py"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://{address}/console/{bad}", timeout=10)
        assert e.value.code == 404, bad
    console = REPO / "kafscale" / "broker" / "console"
    shipped = sorted(p.name for p in console.iterdir())
    assert shipped == ["console.css", "console.js", "index.html"], shipped
    pyproject = (REPO / "pyproject.toml").read_text()
    for suffix in ("html", "css", "js"):
        assert f'"broker/console/*.{suffix}"' in pyproject, suffix
    cluster_answer = get_json(address, "/api/cluster")
    assert [b["ready"] for b in cluster_answer["brokers"]] == [True, True, True], cluster_answer
    rates = get_json(address, "/api/cluster/rates?seconds=5")
    assert [b["broker_id"] for b in rates["brokers"]] == [b.id for b in checked.brokers]
    assert all(len(b["samples"]) <= 5 and "error" not in b for b in rates["brokers"]), rates
