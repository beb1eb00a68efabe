"""The web console in a real headless Chromium, against the live uvicorn server and the real worker.

One walk through what a reviewer does: sign in (a wrong key first), upload a model through the form (a bad
spec first), upload the three datasets, start a job (a bad parameter first), watch its progress bar move
and its charts fill over the event stream, download the cleansed weights and check their sha256, cancel
another job, compare ARGD with fine-tuning, page and filter the list, then see that a second tenant's key
sees none of it and that a key revoked while the page is open signs the tab out. The page's log must stay
clean apart from the refusals the test provokes. A second test runs the console under a path prefix and
checks that it cannot be framed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from argd.api.console import CONSOLE_CSP
from argd.client import ArgdClient
from argd.core.data import save_npz
from argd.core.weights import save_weights
from argd.persistence import keys
from argd.persistence.db import get_sessionmaker
from tests.api import backdoor
from tests.api.browser import Tab, browser, screenshot, tab  # noqa: F401  (fixtures)
from tests.api.test_live import CLEANSE_PARAMS, backdoored  # noqa: F401  (the fixture)
from tests.fixtures.proxy import prefix_proxy
from tests.fixtures.server import REPO_ROOT, LiveServer, ServerProcess
from tests.fixtures.worker import WorkerProcess

pytestmark = pytest.mark.service

#: Records the job page's progress bar and chart sizes at every change, from before the app's own script.
WATCH_JOB_PAGE = """
window.__seen = [];
new MutationObserver(() => {
  const bar = document.getElementById("job-progress");
  if (!bar) return;
  const points = (id) => Number(document.getElementById(id)?.dataset.points || 0);
  const now = [Number(bar.value), points("chart-teacher"), points("chart-distill")];
  const last = window.__seen[window.__seen.length - 1];
  if (!last || now.some((v, i) => v !== last[i])) window.__seen.push(now);
}).observe(document, { subtree: true, childList: true, attributes: true });
"""

#: The job the form starts: the calibrated toy cleanse of test_live, with more epochs to watch it move.
FORM_PARAMS = {k: v for k, v in CLEANSE_PARAMS.items() if k not in ("epochs", "teacher_epochs", "lr")}


def revoke(server: LiveServer, key: str) -> None:
    session = get_sessionmaker(server.settings)()
    try:
        assert keys.revoke_key(session, key[: len(keys.KEY_PREFIX) + 8]) == 1
        session.commit()
    finally:
        session.close()


def sign_in(page: Page, key: str) -> None:
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()


#: Every control with the name a screen reader would announce: its labels, aria-label, or its own text.
UNLABELLED_CONTROLS = """
() => [...document.querySelectorAll("input, select, textarea, button, a[href], progress")]
  .filter((el) => {
    const labels = el.labels ? [...el.labels].map((l) => l.textContent).join(" ") : "";
    const own = ["BUTTON", "A"].includes(el.tagName) ? el.textContent : "";
    const name = labels || el.getAttribute("aria-label") || el.getAttribute("aria-labelledby") || own;
    return !String(name).trim();
  })
  .map((el) => el.outerHTML.slice(0, 160))
"""


def assert_labelled(page: Page) -> None:
    """Accessibility basics: no control without a name on the page as it is now."""
    assert page.evaluate(UNLABELLED_CONTROLS) == []


def open_section(page: Page, summary: str) -> None:
    """Unfold a <details> section by its summary (it starts open when there is nothing to pick yet)."""
    section = page.locator("details", has=page.get_by_text(summary, exact=True))
    if section.get_attribute("open") is None:
        page.get_by_text(summary, exact=True).click()
    expect(section).to_have_attribute("open", "")


def message(page: Page) -> Any:
    return page.locator("#message")


def api_problem(server: LiveServer, key: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """The problem document the API itself answers, to compare with what the page shows."""
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}) as client:
        response = client.request(method, path, **kwargs)
    assert response.status_code >= 400, response.text
    return dict(response.json())


@pytest.fixture
def files(backdoored: backdoor.Backdoored, tmp_path: Path) -> dict[str, Path]:  # noqa: F811
    out = {"model": tmp_path / "backdoored.safetensors"}
    save_weights(backdoored.model.state_dict(), out["model"])
    for role in ("clean", "test", "poisoned"):
        out[role] = tmp_path / f"{role}.npz"
        save_npz(getattr(backdoored, role), out[role])
    return out


def test_console_end_to_end(
    api_server: LiveServer,
    worker: WorkerProcess,
    tab: Tab,  # noqa: F811
    files: dict[str, Path],
    tmp_path: Path,
) -> None:
    page, log = tab.page, tab.log
    tenant = f"console-{os.getpid()}-{id(tab)}"
    key, other_key = api_server.new_key(tenant), api_server.new_key(tenant + "-other")
    requests: list[tuple[str, dict[str, str]]] = []
    page.on("request", lambda request: requests.append((request.url, request.headers)))
    tab.context.add_init_script(WATCH_JOB_PAGE)
    url = api_server.base_url + "/console/"

    # Sign in: the strict CSP is on the page; a wrong key shows the API's own words.
    response = page.goto(url)
    assert response is not None and response.headers["content-security-policy"] == CONSOLE_CSP
    assert response.headers["x-frame-options"] == "DENY"
    sign_in(page, "argd_not-a-real-key")
    wrong = api_problem(api_server, "argd_not-a-real-key", "GET", "/v1/jobs")
    expect(message(page)).to_contain_text(wrong["detail"])
    expect(message(page)).to_contain_text("Unauthorized (401)")
    assert_labelled(page)
    # By keyboard alone: the key field has the focus, Enter signs in, Tab reaches the navigation.
    page.fill("#api-key", "")
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
    expect(page.locator("#jobs-table")).to_contain_text("No jobs yet")
    for _ in range(8):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "New job":
            break
    page.keyboard.press("Enter")
    expect(page.locator("#new-job #start-job")).to_be_visible()  # loaded, so leaving aborts nothing
    page.get_by_role("link", name="Jobs", exact=True).click()
    expect(page.locator("#jobs-table")).to_contain_text("No jobs yet")

    # A model through the form: a spec that does not fit (the API's 422 lists the keys), then one that does.
    page.get_by_role("link", name="New job", exact=True).click()
    open_section(page, "Upload a model")
    page.set_input_files("#model-file", files["model"])
    page.select_option("#architecture", "small-cnn")
    page.fill("#num-classes", "5")
    page.fill("#in-channels", "1")
    page.fill("#image-size", "16")
    page.fill("#mean", "0")
    page.fill("#std", "1")
    page.fill("#arch-kwargs", '{"width": 8}')
    spec = json.loads(page.locator("#spec-preview").inner_text())
    assert spec == {**backdoor.SPEC.model_dump(exclude={"feature_layers"}), "num_classes": 5}
    page.click("#upload-model")
    bad_spec = api_problem(
        api_server,
        key,
        "POST",
        "/v1/models",
        files={"file": ("m.safetensors", files["model"].read_bytes())},
        data={"spec": json.dumps(spec)},
    )
    expect(message(page)).to_contain_text(bad_spec["detail"])
    expect(message(page)).to_contain_text("mismatched: ")
    page.fill("#num-classes", "4")
    page.click("#upload-model")
    expect(page.locator("#model-result")).to_contain_text("Valid:")
    with ArgdClient(api_server.base_url, key) as client:
        models = client._json("GET", "/v1/models")["items"]
    assert len(models) == 1 and page.locator("#model-id").input_value() == models[0]["id"]

    # The three datasets, each uploaded into its role.
    open_section(page, "Upload a dataset")
    for role in ("clean", "test", "poisoned"):
        page.set_input_files("#dataset-file", files[role])
        page.select_option("#dataset-role", role)
        page.click("#upload-dataset")
        expect(page.locator("#dataset-result")).to_contain_text(f"as the {role} set")
        assert page.locator(f"#{role}-id").input_value()
    page.fill("#target-label", str(backdoor.TARGET))

    # Parameters: a bad learning rate comes back as the API's message beside the field.
    page.select_option("#method", "argd")
    screenshot(page, "console-new-job.png", tmp_path)
    page.fill("#param-epochs", "12")
    page.fill("#param-teacher_epochs", "8")
    page.fill("#param-batch_size", "16")
    page.fill("#param-lr", "-1")
    page.fill("#param-extra", json.dumps({**FORM_PARAMS, "val_fraction": 0.2}))
    assert_labelled(page)
    page.click("#start-job")
    expect(page.locator("#param-lr-error")).to_have_text("Input should be greater than 0")
    expect(message(page)).to_contain_text("Unprocessable Entity (422)")
    page.fill("#param-lr", "0.05")
    page.click("#start-job")

    # The job page follows the event stream: the bar moves, the charts fill, then it succeeds.
    page.wait_for_url("**/console/#/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("main")).to_have_attribute("data-status", "succeeded", timeout=180_000)
    seen = page.evaluate("window.__seen")
    moving = sorted({bar for bar, _, _ in seen if 0 < bar < 1})
    assert len(moving) >= 3, seen
    distill_points = [points for _, _, points in seen]
    assert distill_points == sorted(distill_points) and len(set(distill_points)) >= 3, seen
    assert seen[-1][0] == 1
    with ArgdClient(api_server.base_url, key) as client:
        job = client.get_job(job_id)
    assert job["status"] == "succeeded" and job["params"]["epochs"] == 12 and job["method"] == "argd"
    metrics = job["metrics"]
    assert metrics["after"]["asr"] < metrics["before"]["asr"] - 0.5
    expect(page.locator("#metric-after-asr .value")).to_have_text(f"{metrics['after']['asr'] * 100:.1f} %")
    expect(page.locator("#metric-der .value")).to_have_text(f"{metrics['der'] * 100:.1f} %")
    assert int(page.locator("#chart-distill").get_attribute("data-points") or 0) >= 12
    assert int(page.locator("#chart-validation").get_attribute("data-points") or 0) >= 20
    assert int(page.locator("#chart-metrics").get_attribute("data-bars") or 0) >= 6
    assert_labelled(page)
    # Greyscale: each series has its own dash pattern, each bar group its own fill pattern.
    dashes = page.eval_on_selector_all(
        "#chart-distill path[stroke-dasharray]",
        "(paths) => paths.map((p) => p.getAttribute('stroke-dasharray'))",
    )
    assert len(dashes) == int(page.locator("#chart-distill").get_attribute("data-series") or 0) >= 3
    assert len(set(dashes)) == len(dashes), dashes
    fills = page.eval_on_selector_all(
        "#chart-metrics rect[fill^='url(']", "(rects) => rects.map((r) => r.getAttribute('fill'))"
    )
    assert len(set(fills)) == 3, fills  # before, teacher, after
    screenshot(page, "console-job.png", tmp_path)
    open_section(page, "Full report")
    expect(page.locator("#job-report")).to_contain_text(job["result_sha256"])

    # Download: the bytes the browser saves are the ones the API announced.
    with page.expect_download() as download:
        page.click("#download-model")
    saved = download.value.path()
    assert hashlib.sha256(Path(saved).read_bytes()).hexdigest() == job["result_sha256"]

    # Another job, cancelled from its page while it runs; then fine-tuning, to compare with.
    with ArgdClient(api_server.base_url, key) as client:
        long_job = client.create_job(
            job["model_id"],
            job["clean_dataset_id"],
            params={"teacher_epochs": 1, "epochs": 1000, "batch_size": 16},
        )
        page.goto(f"{url}#/jobs/{long_job['id']}")
        expect(page.locator("main")).to_have_attribute("data-status", "running", timeout=60_000)
        page.click("#cancel-job")
        expect(page.locator("main")).to_have_attribute("data-status", "canceled", timeout=60_000)
        assert client.get_job(long_job["id"])["status"] == "canceled"
        finetune = client.create_job(
            job["model_id"],
            job["clean_dataset_id"],
            test_dataset_id=job["test_dataset_id"],
            poisoned_dataset_id=job["poisoned_dataset_id"],
            target_label=backdoor.TARGET,
            method="finetune",
            params={"epochs": 4, "batch_size": 16, "lr": 0.05, "flip": False},
        )
        assert client.wait(finetune["id"], timeout=120)["status"] == "succeeded"
        listed = [item["id"] for item in client.list_jobs()["items"]]
    assert listed == [finetune["id"], long_job["id"], job_id]

    # The list: newest first, filtered, paged; two jobs picked for the comparison.
    page.get_by_role("link", name="Jobs", exact=True).click()
    rows = page.locator("#jobs-table tbody tr")
    expect(rows).to_have_count(3)
    assert [rows.nth(i).get_attribute("data-job-id") for i in range(3)] == listed
    expect(rows.nth(1)).to_contain_text("canceled")
    assert_labelled(page)
    screenshot(page, "console-jobs.png", tmp_path)
    page.select_option("#status-filter", "canceled")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-job-id", long_job["id"])
    page.goto(f"{url}#/jobs?limit=2")
    expect(rows).to_have_count(2)
    page.click("#next-page")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-job-id", job_id)
    page.click("#previous-page")
    expect(rows).to_have_count(2)
    page.goto(f"{url}#/jobs")
    expect(rows).to_have_count(3)
    page.get_by_label(f"Select job {job_id} for comparison").check()
    page.get_by_label(f"Select job {finetune['id']} for comparison").check()
    page.click("#compare-selected")
    table = page.locator("#compare-table")
    expect(table.locator("thead th")).to_have_count(3)
    expect(table).to_contain_text("argd")
    expect(table).to_contain_text("finetune")
    assert int(page.locator("#chart-compare").get_attribute("data-bars") or 0) >= 6
    assert_labelled(page)
    screenshot(page, "console-compare.png", tmp_path)

    # Nothing of it shows under a second tenant's key, not even by id.
    page.click("#sign-out")
    sign_in(page, other_key)
    expect(page.locator("#jobs-table")).to_contain_text("No jobs yet")
    page.goto(f"{url}#/jobs/{job_id}")
    expect(message(page)).to_contain_text(f"No job with id '{job_id}'")

    # The key revoked while the page is open: the next call signs the tab out with the API's message.
    revoke(api_server, other_key)
    page.get_by_role("link", name="Jobs", exact=True).click()
    expect(page.get_by_label("API key")).to_be_visible()
    expect(message(page)).to_contain_text("The API key is not valid (unknown or revoked)")
    assert page.evaluate("sessionStorage.length") == 0

    # The key travelled only in the Authorization header: no cookie, no URL.
    assert tab.context.cookies() == []
    api_calls = [(u, h) for u, h in requests if "/v1/" in u]
    assert api_calls and all(key not in u and other_key not in u for u, _ in requests)
    assert all(h.get("authorization", "").startswith("Bearer argd_") for _, h in api_calls)
    log.assert_clean(allowed_statuses={401, 404, 422}, aborted="/events")


def test_console_under_a_path_prefix_and_not_framable(
    api_server: LiveServer,
    tab: Tab,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Behind a reverse proxy that serves the API at /argd/ (and strips it, uvicorn run with
    --root-path /argd): every page, asset and API call stays under the prefix."""
    env = {**os.environ, **api_server.settings.to_env(), "OMP_NUM_THREADS": "1"}
    server = ServerProcess(env, tmp_path / "prefixed.log", extra_args=["--root-path", "/argd"], cwd=REPO_ROOT)
    page, log = tab.page, tab.log
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    with server, prefix_proxy(server.base_url, "/argd") as base:
        page.goto(base)  # the relative redirect lands on the console under the prefix
        assert page.url == base + "console/"
        sign_in(page, api_server.new_key(f"prefix-{os.getpid()}"))
        expect(page.locator("#jobs-table")).to_contain_text("No jobs yet")
        page.get_by_role("link", name="New job", exact=True).click()
        expect(page.locator("#architecture option[value='wrn-16-1']")).to_have_count(1)
        assert urls and all(u.startswith(base) for u in urls), urls
        assert {u.split("?")[0] for u in urls if "/v1/" in u} >= {
            base + "v1/jobs",
            base + "v1/architectures",
            base + "v1/presets",
        }

        # Another page may not frame the console (frame-ancestors 'none', X-Frame-Options: DENY).
        framing = tab.context.new_page()
        refused: list[str] = []
        framing.on("console", lambda m: refused.append(m.text))
        framing.set_content(f'<iframe src="{base}console/" title="framed"></iframe>')
        framing.wait_for_timeout(1000)
        inner = [frame for frame in framing.frames if frame != framing.main_frame]
        assert inner and inner[0].query_selector("#api-key") is None
        assert any("frame-ancestors" in text or "X-Frame-Options" in text for text in refused), refused
    log.assert_clean()


def test_a_big_upload_shows_its_progress_and_can_be_canceled(
    api_server: LiveServer,
    tab: Tab,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A slow upload (the browser's uplink throttled to 2 MB/s): the bar moves, Cancel stops it, nothing is
    stored."""
    page, log = tab.page, tab.log
    key = api_server.new_key(f"upload-{os.getpid()}")
    big = tmp_path / "big.npz"
    big.write_bytes(os.urandom(12 * 1024 * 1024))
    page.goto(api_server.base_url + "/console/#/new")
    sign_in(page, key)
    expect(page.get_by_role("heading", name="New job")).to_be_visible()
    cdp = tab.context.new_cdp_session(page)
    cdp.send("Network.enable")
    conditions = {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 2_000_000}
    cdp.send("Network.emulateNetworkConditions", conditions)
    open_section(page, "Upload a dataset")
    page.set_input_files("#dataset-file", big)
    page.click("#upload-dataset")
    bar = page.get_by_label("Dataset upload progress")
    page.wait_for_function(
        "() => { const v = document.querySelector('[aria-label=\"Dataset upload progress\"]').value;"
        " return v > 0.05 && v < 0.5; }"
    )
    assert 0 < float(bar.evaluate("b => b.value")) < 1
    page.get_by_role("button", name="Cancel dataset upload").press("Enter")  # the keyboard way
    expect(page.locator("#dataset-result")).to_have_text("Upload canceled.")
    expect(message(page)).to_contain_text("The upload was canceled; nothing was stored")
    with ArgdClient(api_server.base_url, key) as client:
        assert client._json("GET", "/v1/datasets")["items"] == []
    log.assert_clean(aborted="/v1/datasets")
