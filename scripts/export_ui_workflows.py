"""Regenerates the UI-format example workflows (workflows/*.json) and their thumbnails (*.jpg) from their API-format twins (workflows/api/).

The front end itself converts them (app.loadApiJson, then graph.serialize), so the widget order and the
link layout are exactly what this ComfyUI version writes. Needs the embedded host and Chromium.

    .venv/bin/python scripts/export_ui_workflows.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import comfy_browser  # noqa: E402
import comfy_host  # noqa: E402

WORKFLOWS = comfy_host.REPO / "workflows"

# Columns, left to right: loaders, the sampler, the save node.
COLUMNS = {
    "VideoInfinityLoadModel": (0, 0),
    "VideoInfinityDualScopeAttention": (0, 1),
    "VideoInfinityWorkerPool": (0, 2),
    "VideoInfinityClipParallelSampler": (1, 0),
    "VideoInfinitySaveVideo": (2, 0),
}
# The Wan and LTX-Video workflows: core loaders, then prompts and latent, our settings, the sampler, decode and
# save.
DIT_COLUMNS = {
    "UNETLoader": (0, 0),
    "CheckpointLoaderSimple": (0, 0),
    "ModelSamplingSD3": (0, 1),
    "ModelSamplingLTXV": (0, 1),
    "CLIPLoader": (0, 2),
    "VAELoader": (0, 3),
    "CLIPVisionLoader": (0, 4),
    "LoadImage": (0, 5),
    "CLIPTextEncode": (1, 0),
    "CLIPVisionEncode": (1, 1),
    "EmptyHunyuanLatentVideo": (1, 2),
    "WanImageToVideo": (1, 2),
    "EmptyLTXVLatentVideo": (1, 2),
    "LTXVConditioning": (1, 3),
    "VideoInfinityDualScopeAttention": (2, 0),
    "VideoInfinityWorkerPool": (2, 1),
    "VideoInfinityClipParallelKSampler": (3, 0),
    "VAEDecodeTiled": (4, 0),
    "CreateVideo": (4, 1),
    "SaveVideo": (4, 2),
}

CONVERT = """async ([api, COLUMNS]) => {
  await window.app.loadApiJson(api, "workflow.json");
  const nodes = window.app.graph._nodes;
  const heights = {};
  for (const node of nodes) {
    for (const widget of node.widgets ?? []) {
      if (widget.name === "control_after_generate") widget.value = "fixed";  // examples stay reproducible
    }
    const [column, row] = COLUMNS[node.type] ?? [3, 0];
    node.size = node.computeSize();
    if (node.type.startsWith("VideoInfinityClipParallel")) node.size[0] = Math.max(node.size[0], 360);
    const y = heights[column] ?? 40;
    node.pos = [40 + column * 420, y];
    heights[column] = y + node.size[1] + 60;
  }
  const canvas = window.app.canvas;  // frame the graph for the thumbnail
  canvas.ds.scale = 0.75;
  canvas.ds.offset[0] = 90 / 0.75 - 40;  // graph x=40 lands right of the side toolbar
  canvas.ds.offset[1] = 150 / 0.75 - 40;  // and below the top bar and the workflow menu
  window.app.graph.setDirtyCanvas(true, true);
  return JSON.parse(JSON.stringify(window.app.graph.serialize()));  // drops undefined fields (not null)
}"""


def main() -> int:
    from playwright.sync_api import sync_playwright

    comfy_host.install()
    server = comfy_host.start_server(comfy_host.prepare_base())
    try:
        server.wait_ready()
        with sync_playwright() as playwright:
            browser = comfy_browser.launch(playwright)
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            comfy_browser.open_app(page, server.url)
            for api_file in sorted((WORKFLOWS / "api").glob("*.json")):
                columns = DIT_COLUMNS if api_file.stem.startswith(("wan_", "ltxv_")) else COLUMNS
                graph = page.evaluate(CONVERT, [json.loads(api_file.read_text()), columns])
                target = WORKFLOWS / api_file.name
                target.write_text(json.dumps(graph, indent=2) + "\n")
                print(f"wrote {target.relative_to(comfy_host.REPO)} ({len(graph['nodes'])} nodes)")
                # The template browser of this front end shows <name>.jpg beside <name>.json.
                page.wait_for_timeout(500)
                thumbnail = target.with_suffix(".jpg")
                page.screenshot(
                    path=str(thumbnail), type="jpeg", quality=85, clip={"x": 70, "y": 112, "width": 880, "height": 500}
                )
                print(f"wrote {thumbnail.relative_to(comfy_host.REPO)}")
            browser.close()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
