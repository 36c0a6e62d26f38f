"""The ComfyUI front end in headless Chromium: the pack's workflow, panel and help load with no missing nodes."""

from __future__ import annotations

import json

import comfy_browser
import pytest
from conftest import REPO, WORKFLOWS, comfy_host, tiny_job

pytestmark = [pytest.mark.comfy, pytest.mark.browser]
SCREENSHOTS = REPO / "artifacts" / "screenshots"


@pytest.fixture(scope="module")
def page(host):
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        browser = comfy_browser.launch(playwright)
        context = browser.new_context(viewport={"width": 1600, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        comfy_browser.open_app(page, host.url)
        page.errors = errors
        yield page
        browser.close()


def test_front_end_loads_the_pack_extension(page):
    names = page.evaluate("() => window.app.extensions.map((e) => e.name)")
    assert "VideoInfinity.PoolPanel" in names
    registered = page.evaluate("() => Object.keys(LiteGraph.registered_node_types)")
    for node in ("VideoInfinityLoadModel", "VideoInfinityClipParallelSampler", "VideoInfinitySaveVideo"):
        assert node in registered
    assert not [e for e in page.errors if "video_infinity" in e.lower() or "pool_panel" in e.lower()], page.errors


def test_example_workflow_loads_from_the_template_browser_with_no_missing_nodes(page):
    comfy_browser.close_dialogs(page)
    page.locator(".templates-tab-button").first.click()
    dialog = page.locator(".p-dialog:visible").first
    dialog.get_by_text(comfy_host.PACK_FOLDER, exact=True).first.click()
    card = dialog.locator("[data-testid='template-workflow-text_to_video']")
    card.wait_for(state="visible", timeout=30_000)
    assert dialog.locator("[data-testid='template-workflow-multi_prompt']").is_visible()
    page.wait_for_function(  # the same-name thumbnail was found and decoded
        "() => [...document.querySelectorAll('.p-dialog img')].some((i) => i.alt === 'text_to_video' && i.naturalWidth > 0)",
        timeout=30_000,
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "template-browser.png"))
    card.click()
    page.wait_for_function("() => window.app.graph._nodes.length === 5", timeout=30_000)
    page.wait_for_timeout(1000)
    assert page.locator(".p-dialog:visible").count() == 0  # no missing-nodes / missing-models dialog
    assert not [t for t in comfy_browser.toasts(page) if "invalid" in t.lower() or "missing" in t.lower()]
    result = page.evaluate(
        """() => {
            const nodes = window.app.graph._nodes;
            return {
                types: nodes.map((n) => n.type),
                missing: nodes.filter((n) => !LiteGraph.registered_node_types[n.type] || n.has_errors).map((n) => n.type),
                links: window.app.graph.links.size ?? Object.keys(window.app.graph.links).length,
            };
        }"""
    )
    expected = {n["type"] for n in json.loads((WORKFLOWS / "text_to_video.json").read_text())["nodes"]}
    assert set(result["types"]) == expected
    assert result["missing"] == []
    assert result["links"] == 4
    # The graph turns into the same API prompt that the API tests queue.
    prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    api = json.loads((WORKFLOWS / "api" / "text_to_video.json").read_text())
    assert {k: v["class_type"] for k, v in prompt.items()} == {k: v["class_type"] for k, v in api.items()}
    for node in api:
        widgets = {k: v for k, v in api[node]["inputs"].items() if not isinstance(v, list)}
        assert {k: prompt[node]["inputs"][k] for k in widgets} == widgets, node


def test_pool_panel_renders_and_screenshot(page, client):
    run = client.wait(client.queue(tiny_job(seed=41)), timeout=300)  # so the panel has workers to show
    assert run.outcome == "execution_success", run.events
    page.locator(".video-infinity-pool-tab-button").first.click()
    panel = page.locator("#video-infinity-pool-panel")
    panel.wait_for(state="visible", timeout=30_000)
    page.wait_for_function("() => document.querySelector('#video-infinity-pool-panel .vi-state')", timeout=30_000)
    assert panel.locator(".vi-unload").is_visible()
    panel.locator(".vi-refresh").click()
    page.wait_for_function(
        "() => document.querySelector('#video-infinity-pool-panel .vi-state')?.textContent === 'ready'", timeout=30_000
    )
    text = panel.inner_text()
    assert "Workers (2)" in text and "Devices: cpu, cpu" in text and "RAM available" in text
    assert panel.locator("table.vi-workers tbody tr").count() == 2
    # The last job's split: frames, compute seconds and speed per worker, and what "auto" would make of them.
    assert "Last job" in text and 'frame_shares "auto" would split' in text
    split_rows = panel.locator("table.vi-split tbody tr")
    assert split_rows.count() == 2
    assert sum(int(split_rows.nth(rank).locator("td").nth(1).inner_text()) for rank in range(2)) == 8, text
    assert split_rows.nth(0).locator("td").nth(4).inner_text() == "8", text  # the whole job fits in memory
    page.evaluate(
        """() => {
            const canvas = window.app.canvas;  // show the whole example graph beside the panel
            canvas.ds.scale = 0.8;
            canvas.ds.offset[0] = 380 / 0.8;
            canvas.ds.offset[1] = 100 / 0.8;
            canvas.setDirty(true, true);
        }"""
    )
    page.wait_for_timeout(500)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / "comfyui-text-to-video.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000


def test_a_saved_video_dropped_on_the_canvas_opens_the_workflow_that_made_it(page, client):
    graph = json.loads((WORKFLOWS / "text_to_video.json").read_text())
    graph["nodes"][0]["title"] = "made this video"  # so the loaded graph is told apart from the example
    run = client.wait(client.queue(tiny_job(seed=43), workflow=graph), timeout=300)
    assert run.outcome == "execution_success", run.events
    saved = client.history(run.prompt_id)["outputs"]["5"]["images"][0]
    loaded = page.evaluate(
        """async (saved) => {
            const query = new URLSearchParams({...saved, type: "output"});
            const blob = await (await fetch(`/view?${query}`)).blob();
            window.app.graph.clear();
            await window.app.handleFile(new File([blob], saved.filename, {type: "video/mp4"}));  // as a drop does
            return window.app.graph._nodes.map((n) => [n.type, n.title]);
        }""",
        {"filename": saved["filename"], "subfolder": saved["subfolder"]},
    )
    assert sorted(node_type for node_type, _ in loaded) == sorted(n["type"] for n in graph["nodes"]), loaded
    assert ["VideoInfinityLoadModel", "made this video"] in loaded, loaded


def test_node_help_page_opens(page, host):
    # What the front end's node library asks for this pack's nodes (see nodes/routes.py).
    text = page.evaluate(
        """async () => {
            const defs = await (await fetch('/object_info/VideoInfinityClipParallelSampler')).json();
            const module = defs.VideoInfinityClipParallelSampler.python_module;
            const pack = module.split('.')[1];
            return await (await fetch(`/extensions/${pack}/docs/VideoInfinityClipParallelSampler.md`)).text();
        }"""
    )
    assert text.startswith("# Clip-Parallel Sampler")
