// Video-Infinity: a sidebar panel showing the worker pool (workers, devices, memory, state) with an Unload button.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const PANEL_ID = "video-infinity-pool";
const REFRESH_MS = 2000;

function bytes(value) {
  if (typeof value !== "number" || !isFinite(value)) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

function cell(value, key) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number" && /mem|bytes|memory|free|total|used|rss/i.test(key)) return bytes(value);
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function element(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "style") Object.assign(node.style, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

// Columns of the engine's per-worker status worth a narrow sidebar; empty columns are left out.
const COLUMNS = [
  ["rank", "rank"],
  ["device", "device"],
  ["host", "host"],
  ["pid", "pid"],
  ["alive", "alive"],
  ["rss_bytes", "RAM"],
  ["cuda_allocated_bytes", "GPU alloc"],
  ["cuda_reserved_bytes", "GPU reserved"],
];

// The last job's split: each worker's frames, compute time (its waits for the others left out), relative speed,
// and how many of the job's frames its memory would have held.
const SPLIT_COLUMNS = [
  ["rank", "rank"],
  ["frames", "frames"],
  ["compute_s", "compute s"],
  ["speed", "speed"],
  ["fits", "fits"],
];

function table(rows, columns = COLUMNS, kind = "vi-workers") {
  if (!rows.length) return element("p", { class: "vi-empty" }, "no workers running");
  columns = columns.filter(([key]) => rows.some((row) => row[key] !== null && row[key] !== undefined));
  const head = element("tr", {}, ...columns.map(([, label]) => element("th", {}, label)));
  const body = rows.map((row) =>
    element("tr", {}, ...columns.map(([key]) => element("td", {}, key.endsWith("_bytes") ? bytes(row[key]) : cell(row[key], key)))),
  );
  return element("table", { class: kind }, element("thead", {}, head), element("tbody", {}, ...body));
}

function render(root, status, error) {
  root.replaceChildren();
  if (error) {
    root.append(element("p", { class: "vi-error" }, `pool status unavailable: ${error}`));
    return;
  }
  const state = status.state ?? "unknown";
  root.append(
    element("p", {}, "State: ", element("strong", { class: "vi-state", "data-state": state }, state)),
    element("p", {}, `Devices: ${(status.devices ?? []).join(", ") || "none"}`),
  );
  if (status.model) root.append(element("p", {}, `Model: ${String(status.model.base ?? "").split("/").pop()} (${status.model.dtype ?? ""})`));
  if (status.job) root.append(element("p", {}, `Job: ${status.job.phase} ${status.job.step}/${status.job.total}`));
  if (typeof status.jobs_done === "number") root.append(element("p", {}, `Jobs done: ${status.jobs_done}`));
  for (const problem of [status.error, status.last_error]) {
    if (problem) root.append(element("p", { class: "vi-error" }, problem));
  }
  const workers = Array.isArray(status.workers) ? status.workers : [];
  root.append(element("h4", {}, `Workers (${workers.length})`), table(workers));
  if (workers.some((worker) => typeof worker.frames === "number")) {
    root.append(element("h4", {}, "Last job"), table(workers, SPLIT_COLUMNS, "vi-split"));
    const shares = status.balanced_shares?.length ? status.balanced_shares.join(", ") : "even (speeds within 15 %)";
    root.append(element("p", { class: "vi-shares" }, `frame_shares "auto" would split: ${shares}`));
  }
  const machine = status.machine ?? {};
  const memory = [`RAM available ${bytes(machine.ram_available)} of ${bytes(machine.ram_total)}`];
  for (const gpu of machine.gpus ?? []) memory.push(`${gpu.device} ${gpu.name}: ${bytes(gpu.free)} free of ${bytes(gpu.total)}`);
  root.append(element("h4", {}, "Memory"), ...memory.map((line) => element("p", { class: "vi-memory" }, line)));
}

function mount(container) {
  const body = element("div", { class: "vi-body" });
  const refresh = async () => {
    try {
      const response = await api.fetchApi("/video_infinity/pool");
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      render(body, await response.json());
    } catch (error) {
      render(body, {}, error.message ?? String(error));
    }
  };
  const unload = element(
    "button",
    {
      class: "vi-unload p-button p-component p-button-sm",
      title: "Stop the workers and free their memory",
      onclick: async () => {
        unload.disabled = true;
        try {
          await api.fetchApi("/video_infinity/unload", { method: "POST" });
        } finally {
          unload.disabled = false;
          refresh();
        }
      },
    },
    "Unload workers",
  );
  const refreshButton = element("button", { class: "vi-refresh p-button p-component p-button-sm p-button-secondary", onclick: refresh }, "Refresh");
  container.replaceChildren(
    element(
      "div",
      { id: "video-infinity-pool-panel", style: { padding: "0.75rem", fontSize: "0.85rem", overflow: "auto" } },
      element("h3", {}, "Video-Infinity worker pool"),
      element("div", { style: { display: "flex", gap: "0.5rem", marginBottom: "0.5rem" } }, unload, refreshButton),
      body,
    ),
  );
  refresh();
  // Poll only while the panel is in the page; stop once the sidebar closes it.
  const timer = setInterval(() => (container.isConnected ? refresh() : clearInterval(timer)), REFRESH_MS);
  activeRefresh = () => (container.isConnected ? refresh() : (activeRefresh = null));
}

// Refresh the open panel when a prompt ends; registered once, whatever the number of times the tab opens.
let activeRefresh = null;
for (const event of ["execution_success", "execution_error", "execution_interrupted"]) {
  api.addEventListener(event, () => activeRefresh?.());
}

const style = document.createElement("style");
style.textContent = `
#video-infinity-pool-panel table { border-collapse: collapse; width: 100%; }
#video-infinity-pool-panel th, #video-infinity-pool-panel td { border: 1px solid var(--border-color, #555); padding: 2px 4px; text-align: left; }
#video-infinity-pool-panel .vi-error { color: var(--error-text, #f66); }
#video-infinity-pool-panel h4 { margin: 0.75rem 0 0.25rem; }
#video-infinity-pool-panel p { margin: 0.2rem 0; }
`;
document.head.append(style);

app.registerExtension({
  name: "VideoInfinity.PoolPanel",
  async setup() {
    app.extensionManager.registerSidebarTab({
      id: PANEL_ID,
      icon: "pi pi-server",
      title: "Video-Infinity",
      tooltip: "Video-Infinity worker pool",
      type: "custom",
      render: (container) => mount(container),
    });
  },
});
