// The argd console: sign-in, jobs, new job, job detail and compare pages over the public /v1 API.
// Hash routes (#/jobs, #/new, #/jobs/<id>, #/compare?ids=a,b) keep every URL relative to the page.

import * as api from "./api.js";
import { barChart, lineChart } from "./chart.js";

const main = document.getElementById("main");
const messageBox = document.getElementById("message");
const STATUSES = ["queued", "running", "succeeded", "failed", "canceled"];
const ACTIVE = new Set(["queued", "running"]);
const PAGE_SIZE = 10;
const PARAM_FIELDS = [
  ["epochs", "Student epochs", "1"],
  ["teacher_epochs", "Teacher epochs", "1"],
  ["batch_size", "Batch size", "1"],
  ["lr", "Learning rate", "any"],
  ["seed", "Seed", "1"],
];
let page = new AbortController(); // aborted when the route changes: streams and timers of the old page
let cursors = [];

// --- small DOM helpers --------------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "for") node.htmlFor = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

function field(id, label, control, hint) {
  control.id = id;
  const parts = [h("label", { for: id, text: label }), control];
  const describedBy = [];
  if (hint) {
    parts.push(h("span", { class: "hint", id: `${id}-hint`, text: hint }));
    describedBy.push(`${id}-hint`);
  }
  parts.push(h("span", { class: "field-error", id: `${id}-error`, hidden: true }));
  describedBy.push(`${id}-error`);
  control.setAttribute("aria-describedby", describedBy.join(" "));
  return h("div", { class: "field" }, parts);
}

function setFieldError(id, text) {
  const node = document.getElementById(`${id}-error`);
  if (!node) return false;
  node.textContent = text || "";
  node.hidden = !text;
  document.getElementById(id)?.setAttribute("aria-invalid", text ? "true" : "false");
  return true;
}

function clearFieldErrors(root) {
  root.querySelectorAll(".field-error").forEach((node) => {
    node.hidden = true;
    node.textContent = "";
  });
  root.querySelectorAll("[aria-invalid]").forEach((node) => node.setAttribute("aria-invalid", "false"));
}

function pct(value) {
  return typeof value === "number" ? `${(value * 100).toFixed(1)} %` : "–";
}

function seconds(value) {
  if (typeof value !== "number") return "–";
  const s = Math.round(value);
  return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

function statusBadge(status) {
  return h("span", { class: `status status-${status}`, text: status });
}

function progressBar(fraction, label) {
  const value = typeof fraction === "number" ? fraction : 0;
  return h("span", {}, h("progress", { max: 1, value, "aria-label": label }), ` ${Math.round(value * 100)} %`);
}

// --- messages -------------------------------------------------------------------------------------------

export function showMessage(error, kind = "error") {
  const problem = error instanceof api.ApiProblem ? error.problem : error && error.title ? error : null;
  messageBox.replaceChildren();
  messageBox.className = kind === "info" ? "message info" : "message";
  messageBox.append(h("button", { type: "button", class: "secondary", onclick: clearMessage, text: "Dismiss" }));
  if (problem) {
    const head = problem.status ? `${problem.title} (${problem.status})` : problem.title;
    messageBox.append(h("strong", { text: head }), h("div", { class: "detail", text: problem.detail || "" }));
    const items = [];
    for (const e of problem.errors || []) items.push(`${(e.loc || []).filter((p) => p !== "body").join(".")}: ${e.msg}`);
    const details = problem.details || {};
    for (const key of ["missing", "unexpected", "mismatched"]) {
      const list = details[key];
      if (Array.isArray(list) && list.length) items.push(`${key}: ${list.map((x) => (typeof x === "string" ? x : JSON.stringify(x))).join(", ")}`);
    }
    if (items.length) messageBox.append(h("ul", {}, items.map((t) => h("li", { text: t }))));
  } else {
    messageBox.append(h("span", { text: String((error && error.message) || error) }));
  }
  messageBox.hidden = false;
}

function clearMessage() {
  messageBox.hidden = true;
  messageBox.replaceChildren();
}

window.addEventListener("unhandledrejection", (event) => {
  if (event.reason && event.reason.name === "AbortError") return;
  showMessage(event.reason);
});
window.addEventListener("error", (event) => showMessage(event.error || event.message));

// --- routing --------------------------------------------------------------------------------------------

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  return { parts: path.split("/").filter(Boolean), query: new URLSearchParams(query) };
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function setPage(title, navKey) {
  page.abort();
  page = new AbortController();
  document.title = `${title} · argd console`;
  document.querySelectorAll("[data-nav]").forEach((a) => {
    if (a.dataset.nav === navKey) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
  const heading = h("h1", { text: title, tabindex: "-1" });
  main.replaceChildren(heading);
  return { heading, signal: page.signal };
}

async function route() {
  const key = api.storedKey();
  document.getElementById("nav").hidden = !key;
  document.getElementById("sign-out").hidden = !key;
  document.getElementById("who").textContent = key ? `key ${key.slice(0, 12)}…` : "";
  if (!key) return signInPage();
  const { parts, query } = parseHash();
  try {
    if (parts[0] === "new") await newJobPage();
    else if (parts[0] === "compare") await comparePage(query);
    else if (parts[0] === "jobs" && parts[1]) await jobPage(decodeURIComponent(parts[1]));
    else await jobsPage(query);
  } catch (error) {
    if (error.name !== "AbortError") showMessage(error);
  }
  main.querySelector("h1")?.focus();
}

function signOut(problem) {
  api.storeKey(null);
  cursors = [];
  if (problem) showMessage(problem);
  route();
}

api.whenUnauthorized((problem) => signOut(problem));
document.getElementById("sign-out").addEventListener("click", () => {
  clearMessage();
  history.replaceState(null, "", "#/jobs"); // the next key starts on its own list, not on this page
  signOut(null);
});
window.addEventListener("hashchange", () => {
  clearMessage();
  route();
});

// --- sign in --------------------------------------------------------------------------------------------

function signInPage() {
  setPage("Sign in", null);
  const input = h("input", { type: "password", autocomplete: "off", spellcheck: "false", required: true });
  const form = h(
    "form",
    { class: "signin", novalidate: true },
    h("p", { text: "Paste an API key (an operator makes one with `argd keys create`). It is kept for this tab only and sent in an Authorization header, never in a cookie or a URL." }),
    field("api-key", "API key", input),
    h("button", { type: "submit", text: "Sign in" }),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return setFieldError("api-key", "Enter an API key");
    try {
      await api.get("v1/jobs?limit=1", { key });
    } catch (error) {
      showMessage(error);
      return;
    }
    api.storeKey(key);
    clearMessage();
    go(location.hash && !location.hash.startsWith("#/signin") ? location.hash : "#/jobs");
  });
  main.append(form);
  input.focus();
}

// --- jobs list ------------------------------------------------------------------------------------------

async function jobsPage(query) {
  const { signal } = setPage("Jobs", "jobs");
  const status = query.get("status") || "";
  const cursor = query.get("cursor") || "";
  const limit = Math.min(Math.max(Number(query.get("limit")) || PAGE_SIZE, 1), 100);
  const hashFor = (next) => {
    const q = new URLSearchParams();
    if (status) q.set("status", status);
    if (limit !== PAGE_SIZE) q.set("limit", String(limit));
    if (next) q.set("cursor", next);
    return `#/jobs?${q}`;
  };
  const filter = h("select", {}, h("option", { value: "", text: "All" }), STATUSES.map((s) => h("option", { value: s, text: s })));
  filter.value = status;
  filter.addEventListener("change", () => {
    cursors = [];
    go(filter.value ? `#/jobs?status=${filter.value}` : "#/jobs");
  });
  const compare = h("button", { type: "button", id: "compare-selected", disabled: true, text: "Compare selected" });
  const body = h("tbody");
  const table = h(
    "table",
    { id: "jobs-table" },
    h("caption", { class: "hint", text: "Newest first. ACC: clean accuracy; ASR: attack success rate (lower is better)." }),
    h("thead", {}, h("tr", {}, ["Select", "Created", "Job", "Status", "Method", "Progress", "ACC before", "ACC after", "ASR before", "ASR after"].map((t, i) => h("th", { scope: "col", class: i >= 6 ? "num" : null, text: t })))),
    body,
  );
  const pager = h("div", { class: "pager" });
  main.append(h("div", { class: "toolbar" }, field("status-filter", "Status", filter), compare), table, pager);
  const selected = new Set();
  compare.addEventListener("click", () => go(`#/compare?ids=${[...selected].join(",")}`));

  const load = async () => {
    const params = new URLSearchParams({ limit: String(limit) });
    if (status) params.set("status", status);
    if (cursor) params.set("cursor", cursor);
    const data = await api.get(`v1/jobs?${params}`, { signal });
    body.replaceChildren(
      ...data.items.map((job) => {
        const box = h("input", { type: "checkbox", "aria-label": `Select job ${job.id} for comparison`, checked: selected.has(job.id) });
        box.addEventListener("change", () => {
          if (box.checked) selected.add(job.id);
          else selected.delete(job.id);
          compare.disabled = selected.size < 2;
        });
        const m = job.metrics || {};
        return h(
          "tr",
          { "data-job-id": job.id },
          h("td", {}, box),
          h("td", { text: new Date(job.created_at).toLocaleString() }),
          h("td", {}, h("a", { href: `#/jobs/${job.id}`, text: job.id.slice(0, 8) })),
          h("td", {}, statusBadge(job.status)),
          h("td", { text: job.method }),
          h("td", {}, progressBar(job.progress.fraction, `Progress of job ${job.id.slice(0, 8)}`)),
          h("td", { class: "num", text: pct(m.before?.acc) }),
          h("td", { class: "num", text: pct(m.after?.acc) }),
          h("td", { class: "num", text: pct(m.before?.asr) }),
          h("td", { class: "num", text: pct(m.after?.asr) }),
        );
      }),
    );
    if (!data.items.length) body.append(h("tr", {}, h("td", { colspan: 10, text: status ? `No ${status} jobs.` : "No jobs yet: start one under New job." })));
    pager.replaceChildren();
    if (cursor) {
      pager.append(h("button", { type: "button", class: "secondary", id: "previous-page", text: "Previous page", onclick: () => go(hashFor(cursors.pop() || "")) }));
    }
    if (data.next_cursor) {
      pager.append(h("button", { type: "button", class: "secondary", id: "next-page", text: "Next page", onclick: () => {
        cursors.push(cursor);
        go(hashFor(data.next_cursor));
      } }));
    }
    // Active jobs move: refresh the page gently while any is shown (the detail page streams instead).
    if (data.items.some((job) => ACTIVE.has(job.status)) && !signal.aborted) {
      setTimeout(() => {
        if (!signal.aborted) load().catch((error) => error.name !== "AbortError" && showMessage(error));
      }, 3000);
    }
  };
  await load();
}

// --- new job --------------------------------------------------------------------------------------------

function uploadControl(label, onStart) {
  // A progress bar and a cancel button for one upload at a time.
  const bar = h("progress", { max: 1, value: 0, "aria-label": `${label} progress` });
  const cancel = h("button", { type: "button", class: "secondary", text: `Cancel ${label.toLowerCase()}` });
  const box = h("div", { class: "upload-progress", hidden: true }, bar, cancel);
  return {
    box,
    async run(path, form) {
      const job = api.upload(path, form, (fraction) => { bar.value = fraction; });
      cancel.onclick = job.abort;
      bar.value = 0;
      box.hidden = false;
      onStart?.();
      try {
        return await job.done;
      } finally {
        box.hidden = true;
      }
    },
  };
}

function option(item, text) {
  return h("option", { value: item.id, text });
}

function datasetText(d) {
  return `${d.name} · ${d.count} images ${d.shape.join("×")} · ${d.id.slice(0, 8)}`;
}

function modelText(m) {
  return `${m.name} · ${m.spec.architecture} · ${m.parameters.toLocaleString()} params · ${m.id.slice(0, 8)}`;
}

function numberOrNull(value) {
  return value === "" || value === null ? null : Number(value);
}

function listOfNumbers(text) {
  return text.split(/[,\s]+/).filter(Boolean).map(Number);
}

async function newJobPage() {
  const { signal } = setPage("New job", "new");
  const [architectures, presets, models, datasets] = await Promise.all([
    api.get("v1/architectures", { signal }),
    api.get("v1/presets", { signal }),
    api.get("v1/models?limit=100", { signal }),
    api.get("v1/datasets?limit=100", { signal }),
  ]);
  const form = h("form", { novalidate: true, id: "new-job" });
  main.append(form);

  // Model: pick an uploaded one, or upload weights with a spec (validated by the API at once).
  const modelSelect = h("select", { required: true }, h("option", { value: "", text: "— choose a model —" }), models.items.map((m) => option(m, modelText(m))));
  const archSelect = h("select", {}, architectures.items.map((a) => h("option", { value: a.id, text: `${a.id} — ${a.description}` })));
  archSelect.value = architectures.items.some((a) => a.id === "wrn-16-1") ? "wrn-16-1" : architectures.items[0]?.id;
  const modelFile = h("input", { type: "file", accept: ".safetensors,.pt,.pth,.tar" });
  const inputs = {
    num_classes: h("input", { type: "number", min: 2, value: "10" }),
    in_channels: h("input", { type: "number", min: 1, max: 4, value: "1" }),
    image_size: h("input", { type: "number", min: 8, max: 512, value: "28" }),
    mean: h("input", { type: "text", value: "0.286" }),
    std: h("input", { type: "text", value: "0.353" }),
    arch_kwargs: h("textarea", { rows: 2, text: "{}" }),
  };
  const kwargsHint = h("span", { class: "hint" });
  const preview = h("pre", { id: "spec-preview", "aria-live": "polite" });
  const modelResult = h("div", { id: "model-result", class: "hint", role: "status" });
  const modelUpload = uploadControl("Model upload");
  const specOf = () => {
    let kwargs = {};
    try {
      kwargs = JSON.parse(inputs.arch_kwargs.value || "{}");
    } catch {
      kwargs = inputs.arch_kwargs.value; // sent as is: the API names the problem
    }
    return {
      architecture: archSelect.value,
      num_classes: numberOrNull(inputs.num_classes.value),
      in_channels: numberOrNull(inputs.in_channels.value),
      image_size: numberOrNull(inputs.image_size.value),
      mean: listOfNumbers(inputs.mean.value),
      std: listOfNumbers(inputs.std.value),
      arch_kwargs: kwargs,
    };
  };
  const refreshSpec = () => {
    const arch = architectures.items.find((a) => a.id === archSelect.value);
    kwargsHint.textContent = arch && arch.arch_kwargs.length ? `Accepted: ${arch.arch_kwargs.map((k) => `${k.name} (${k.type}): ${k.help}`).join("; ")}` : "This architecture takes no arch_kwargs.";
    preview.textContent = JSON.stringify(specOf(), null, 2);
  };
  for (const control of [archSelect, ...Object.values(inputs)]) control.addEventListener("input", refreshSpec);
  const uploadModel = h("button", { type: "button", id: "upload-model", text: "Upload and validate model" });
  uploadModel.addEventListener("click", async () => {
    clearFieldErrors(form);
    if (!modelFile.files.length) return setFieldError("model-file", "Choose a weights file");
    const body = new FormData();
    body.append("file", modelFile.files[0]);
    body.append("spec", JSON.stringify(specOf()));
    modelResult.textContent = "";
    try {
      const model = await modelUpload.run("v1/models", body);
      modelSelect.append(option(model, modelText(model)));
      modelSelect.value = model.id;
      modelResult.textContent = `Valid: ${model.parameters.toLocaleString()} parameters, stored as ${model.sha256.slice(0, 16)}… (model ${model.id}).`;
      clearMessage();
    } catch (error) {
      modelResult.textContent = `Refused: ${error.message}`;
      showMessage(error);
    }
  });
  refreshSpec();
  form.append(
    h(
      "fieldset",
      {},
      h("legend", { text: "Model" }),
      field("model-id", "Model to cleanse", modelSelect),
      h(
        "details",
        { open: models.items.length === 0 },
        h("summary", { text: "Upload a model" }),
        field("model-file", "Weights (.safetensors, or a state-dict .pt/.pth/.tar)", modelFile),
        field("architecture", "Architecture", archSelect),
        h("div", { class: "row" },
          field("num-classes", "Classes", inputs.num_classes),
          field("in-channels", "Channels", inputs.in_channels),
          field("image-size", "Image size (px)", inputs.image_size)),
        h("div", { class: "row" },
          field("mean", "Mean (per channel, comma separated)", inputs.mean),
          field("std", "Std (per channel, comma separated)", inputs.std)),
        field("arch-kwargs", "Architecture options (JSON)", inputs.arch_kwargs),
        kwargsHint,
        h("h3", { class: "hint", text: "Spec to be sent" }),
        preview,
        h("div", { class: "actions" }, uploadModel, modelUpload.box),
        modelResult,
      ),
    ),
  );

  // Data: pick uploaded datasets per role, or upload a file into a role.
  const datasetOptions = (required) => [h("option", { value: "", text: required ? "— choose a dataset —" : "none" }), ...datasets.items.map((d) => option(d, datasetText(d)))];
  const roles = {
    clean: h("select", { required: true }, datasetOptions(true)),
    test: h("select", {}, datasetOptions(false)),
    poisoned: h("select", {}, datasetOptions(false)),
  };
  const targetLabel = h("input", { type: "number", min: 0 });
  const datasetFile = h("input", { type: "file", accept: ".npz,.zip" });
  const datasetRole = h("select", {}, ["clean", "test", "poisoned"].map((r) => h("option", { value: r, text: r })));
  const datasetResult = h("div", { id: "dataset-result", class: "hint", role: "status" });
  const datasetUpload = uploadControl("Dataset upload");
  const uploadDataset = h("button", { type: "button", id: "upload-dataset", text: "Upload dataset" });
  uploadDataset.addEventListener("click", async () => {
    clearFieldErrors(form);
    if (!datasetFile.files.length) return setFieldError("dataset-file", "Choose a .npz or .zip file");
    const body = new FormData();
    body.append("file", datasetFile.files[0]);
    try {
      const dataset = await datasetUpload.run("v1/datasets", body);
      for (const select of Object.values(roles)) select.append(option(dataset, datasetText(dataset)));
      roles[datasetRole.value].value = dataset.id;
      datasetResult.textContent = `Stored ${dataset.count} images (${dataset.shape.join("×")}, classes ${dataset.classes.join(", ")}) as the ${datasetRole.value} set.`;
      datasetFile.value = "";
      clearMessage();
    } catch (error) {
      datasetResult.textContent = error.problem?.canceled ? "Upload canceled." : `Refused: ${error.message}`;
      showMessage(error, error.problem?.canceled ? "info" : "error");
    }
  });
  form.append(
    h(
      "fieldset",
      {},
      h("legend", { text: "Data" }),
      field("clean-id", "Clean subset (required)", roles.clean),
      field("test-id", "Clean test set (for ACC)", roles.test),
      field("poisoned-id", "Poisoned set: triggered images with their original labels (for ASR)", roles.poisoned),
      field("target-label", "Backdoor target label (with a poisoned set)", targetLabel),
      h("details", { open: datasets.items.length === 0 },
        h("summary", { text: "Upload a dataset" }),
        h("div", { class: "row" },
          field("dataset-file", "File (.npz with x and y, or a .zip of class folders)", datasetFile),
          field("dataset-role", "Use it as", datasetRole)),
        h("div", { class: "actions" }, uploadDataset, datasetUpload.box),
        datasetResult),
    ),
  );

  // Method, preset and parameters; the API's 422 puts its messages next to the fields.
  const method = h("select", {}, ["argd", "nad", "finetune", "fst", "ft-sam"].map((m) => h("option", { value: m, text: m })));
  const preset = h("select", {}, presets.items.map((p) => h("option", { value: p.name, text: `${p.name} — ${p.description}` })));
  const paramInputs = Object.fromEntries(PARAM_FIELDS.map(([name, , step]) => [name, h("input", { type: "number", step })]));
  const extra = h("textarea", { rows: 4, text: "{}" });
  const webhook = h("input", { type: "url", placeholder: "https://ci.example.com/argd-hook" });
  const fillPreset = () => {
    const chosen = presets.items.find((p) => p.name === preset.value);
    for (const [name, input] of Object.entries(paramInputs)) input.value = chosen ? String(chosen.params[name]) : "";
  };
  preset.addEventListener("change", fillPreset);
  fillPreset();
  form.append(
    h(
      "fieldset",
      {},
      h("legend", { text: "Method and parameters" }),
      h("div", { class: "row" }, field("method", "Method", method), field("preset", "Preset", preset)),
      h("div", { class: "row" }, PARAM_FIELDS.map(([name, label]) => field(`param-${name}`, label, paramInputs[name]))),
      field("param-extra", "More parameters (JSON object of CleanseParams fields)", extra, "Every field is listed under CleanseParams in the OpenAPI document (../openapi.json)."),
      field("webhook-url", "Webhook URL (optional, https)", webhook),
    ),
  );
  const submit = h("button", { type: "submit", id: "start-job", text: "Start job" });
  form.append(submit);
  const idempotencyKey = `console-${crypto.randomUUID()}`; // a double submit never makes two jobs

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    let more;
    try {
      more = JSON.parse(extra.value || "{}");
      if (typeof more !== "object" || Array.isArray(more) || more === null) throw new Error("not an object");
    } catch {
      setFieldError("param-extra", "Not a JSON object, e.g. {\"w_logit\": 0.5}");
      return;
    }
    const chosen = presets.items.find((p) => p.name === preset.value);
    const params = { ...(chosen ? chosen.params : {}), ...more };
    delete params.method;
    for (const [name, input] of Object.entries(paramInputs)) {
      if (input.value !== "") params[name] = Number(input.value);
    }
    const body = { model_id: modelSelect.value, clean_dataset_id: roles.clean.value, method: method.value, params };
    if (roles.test.value) body.test_dataset_id = roles.test.value;
    if (roles.poisoned.value) body.poisoned_dataset_id = roles.poisoned.value;
    if (targetLabel.value !== "") body.target_label = Number(targetLabel.value);
    if (webhook.value.trim()) body.webhook_url = webhook.value.trim();
    submit.disabled = true;
    try {
      const job = await api.post("v1/jobs", body, { headers: { "Idempotency-Key": idempotencyKey } });
      go(`#/jobs/${job.id}`);
    } catch (error) {
      showFormErrors(error);
      showMessage(error);
    } finally {
      submit.disabled = false;
    }
  });
}

function showFormErrors(error) {
  // Map the 422's field errors (loc ["body", "params", "lr"]) to the form's controls.
  const ids = { model_id: "model-id", clean_dataset_id: "clean-id", test_dataset_id: "test-id", poisoned_dataset_id: "poisoned-id", target_label: "target-label", webhook_url: "webhook-url", method: "method" };
  for (const e of error.problem?.errors || []) {
    const loc = (e.loc || []).filter((p) => p !== "body");
    let id = null;
    if (loc[0] === "params") id = PARAM_FIELDS.some(([name]) => name === loc[1]) ? `param-${loc[1]}` : "param-extra";
    else id = ids[loc[0]];
    if (id) setFieldError(id, loc[0] === "params" && id === "param-extra" ? `${loc.slice(1).join(".")}: ${e.msg}` : e.msg);
  }
}

// --- job detail -----------------------------------------------------------------------------------------

function seriesOf(history, phase, source) {
  const entries = history.filter((e) => e.phase === phase);
  const names = [...new Set(entries.flatMap((e) => Object.keys(e[source] || {})))];
  return names
    .map((name) => ({
      name,
      points: entries.filter((e) => typeof (e[source] || {})[name] === "number").map((e) => [e.epoch, e[source][name]]),
    }))
    .filter((s) => s.points.length);
}

function lossSeries(history, phase) {
  // Terms that stay at zero all along (off for this method) would only crowd the legend.
  return seriesOf(history, phase, "losses").filter((s) => s.points.some(([, y]) => y !== 0));
}

function validationSeries(history) {
  const out = [];
  for (const phase of ["teacher", "distill"]) {
    for (const s of seriesOf(history, phase, "metrics")) {
      if (["lr", "seconds"].includes(s.name)) continue;
      out.push({ name: `${phase} ${s.name}`, points: s.points });
    }
  }
  return out;
}

function metricCards(metrics) {
  const cards = [];
  for (const phase of ["before", "teacher", "after"]) {
    const m = metrics[phase] || {};
    for (const key of ["acc", "asr", "ra"]) cards.push([`${key.toUpperCase()} ${phase}`, pct(m[key]), `metric-${phase}-${key}`]);
  }
  cards.push(["DER", pct(metrics.der), "metric-der"], ["Fidelity", pct(metrics.fidelity), "metric-fidelity"]);
  return h("div", { class: "cards", id: "metric-cards" }, cards.map(([label, value, id]) => h("div", { class: "card", id }, h("div", { class: "label", text: label }), h("div", { class: "value", text: value }))));
}

function metricsBars(metrics) {
  const phases = ["before", "teacher", "after"].filter((p) => metrics[p]);
  return barChart(
    ["ACC", "ASR", "RA"],
    phases.map((p) => ({ name: p, values: ["acc", "asr", "ra"].map((k) => metrics[p][k] ?? null) })),
    { title: "ACC, ASR and RA: before, teacher, after" },
  );
}

async function jobPage(jobId) {
  const { signal } = setPage(`Job ${jobId.slice(0, 8)}`, "jobs");
  const status = h("p", { id: "job-status", "aria-live": "polite" });
  const bar = h("progress", { id: "job-progress", max: 1, value: 0, "aria-label": "Job progress" });
  const cancel = h("button", { type: "button", id: "cancel-job", class: "secondary", text: "Cancel job", hidden: true });
  const getModel = h("button", { type: "button", id: "download-model", text: "Download model", hidden: true });
  const getReport = h("button", { type: "button", id: "download-report", text: "Download report", hidden: true });
  const compareLink = h("a", { href: `#/compare?ids=${jobId}`, text: "Compare with other jobs" });
  const body = h("div", { id: "job-body" });
  const reportBox = h("pre", { id: "job-report" });
  main.append(
    h("p", { class: "hint", text: `Id ${jobId}` }),
    status,
    h("div", {}, bar),
    h("div", { class: "actions" }, cancel, getModel, getReport, compareLink),
    body,
    h("details", { id: "report-details" }, h("summary", { text: "Full report" }), reportBox),
  );
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      render(await api.post(`v1/jobs/${jobId}/cancel`));
    } catch (error) {
      showMessage(error);
    } finally {
      cancel.disabled = false;
    }
  });
  getModel.addEventListener("click", () => api.download(`v1/jobs/${jobId}/model`, `${jobId}.safetensors`).catch(showMessage));
  getReport.addEventListener("click", () => api.download(`v1/jobs/${jobId}/report`, `${jobId}-report.json`).catch(showMessage));

  let reportLoaded = false;
  function render(job) {
    const p = job.progress || {};
    const phase = job.phase ? `, ${job.phase}` : "";
    const epoch = p.epoch != null && p.epochs ? `, epoch ${p.epoch} of ${p.epochs}` : "";
    const eta = ACTIVE.has(job.status) && typeof p.eta_s === "number" ? `, about ${seconds(p.eta_s)} left` : "";
    status.replaceChildren(statusBadge(job.status), ` ${job.method}${phase}${epoch}${eta}${job.cancel_requested && ACTIVE.has(job.status) ? " (cancel requested)" : ""}`);
    bar.value = p.fraction || 0;
    bar.setAttribute("aria-valuetext", `${Math.round((p.fraction || 0) * 100)} %`);
    main.dataset.status = job.status;
    cancel.hidden = !ACTIVE.has(job.status);
    getModel.hidden = getReport.hidden = job.status !== "succeeded";
    const history = job.history || [];
    const teacher = lineChart(lossSeries(history, "teacher"), { title: "Teacher losses per epoch", empty: job.params.teacher_epochs === 0 || !["argd", "nad"].includes(job.method) ? "No teacher phase" : "No epochs yet" });
    teacher.id = "chart-teacher";
    const distill = lineChart(lossSeries(history, "distill"), { title: "Student losses per epoch" });
    distill.id = "chart-distill";
    const validation = lineChart(validationSeries(history), { title: "Validation metrics per epoch", empty: job.params.val_fraction > 0 ? "No epochs yet" : "No validation split (val_fraction 0)" });
    validation.id = "chart-validation";
    const bars = metricsBars(job.metrics || {});
    bars.id = "chart-metrics";
    const parts = [metricCards(job.metrics || {}), h("div", { class: "charts" }, teacher, distill, validation, bars)];
    if (job.error) parts.unshift(h("div", { class: "message", id: "job-error", role: "alert" }, h("strong", { text: `Failed: ${job.error.code}` }), h("div", { text: job.error.message })));
    const times = [`created ${new Date(job.created_at).toLocaleString()}`];
    if (job.started_at) times.push(`started ${new Date(job.started_at).toLocaleString()}`);
    if (job.finished_at) times.push(`finished ${new Date(job.finished_at).toLocaleString()}`);
    if (job.started_at && job.finished_at) times.push(`run time ${seconds((new Date(job.finished_at) - new Date(job.started_at)) / 1000)}`);
    parts.unshift(h("p", { class: "hint", id: "job-times", text: times.join(" · ") }));
    parts.push(h("details", {}, h("summary", { text: "Parameters (every effective value)" }), h("pre", { id: "job-params", text: JSON.stringify(job.params, null, 2) })));
    body.replaceChildren(...parts);
    if (job.status === "succeeded" && !reportLoaded) {
      reportLoaded = true;
      api.get(`v1/jobs/${jobId}/report`, { signal }).then((report) => {
        reportBox.textContent = JSON.stringify(report, null, 2);
      }).catch((error) => error.name !== "AbortError" && showMessage(error));
    } else if (job.status !== "succeeded") {
      reportBox.textContent = "The report exists once the job has succeeded.";
    }
  }

  let last = await api.get(`v1/jobs/${jobId}`, { signal });
  render(last);
  const onJob = (job) => {
    last = job;
    render(job);
  };
  // Live: the event stream; when it drops, reconnect a few times, then poll every few seconds.
  let drops = 0;
  while (!signal.aborted && ACTIVE.has(last.status)) {
    try {
      if (drops < 3) {
        await api.followJob(jobId, onJob, signal);
        if (ACTIVE.has(last.status)) throw new Error("the stream ended before the job"); // count it as a drop
      } else {
        await new Promise((resolve) => setTimeout(resolve, 3000));
        if (!signal.aborted) onJob(await api.get(`v1/jobs/${jobId}`, { signal }));
      }
    } catch (error) {
      if (error.name === "AbortError" || signal.aborted) return;
      if (error instanceof api.ApiProblem && error.status >= 400 && error.status < 500) throw error;
      drops += 1;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

// --- compare --------------------------------------------------------------------------------------------

async function comparePage(query) {
  const { signal } = setPage("Compare jobs", "compare");
  const ids = (query.get("ids") || "").split(",").filter(Boolean);
  const finished = await api.get("v1/jobs?limit=100&status=succeeded", { signal });
  const picker = h("form", { id: "compare-picker" }, h("p", { class: "hint", text: "Pick two or more finished jobs, ideally on the same model (for example ARGD against fine-tuning)." }));
  const list = h("fieldset", {}, h("legend", { text: "Succeeded jobs" }));
  for (const job of finished.items) {
    const id = `pick-${job.id}`;
    list.append(h("div", {}, h("input", { type: "checkbox", id, value: job.id, checked: ids.includes(job.id) }), " ", h("label", { for: id, text: `${job.method} · ${job.id.slice(0, 8)} · model ${(job.model_id || "deleted").slice(0, 8)} · ${new Date(job.created_at).toLocaleString()}` })));
  }
  if (!finished.items.length) list.append(h("p", { text: "No succeeded jobs yet." }));
  picker.append(list, h("button", { type: "submit", text: "Compare" }));
  picker.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = [...picker.querySelectorAll("input:checked")].map((box) => box.value);
    go(`#/compare?ids=${chosen.join(",")}`);
  });
  main.append(picker);
  if (ids.length < 2) {
    if (ids.length) main.append(h("p", { text: "Choose at least one more job." }));
    return;
  }
  const jobs = await Promise.all(ids.map((id) => api.get(`v1/jobs/${encodeURIComponent(id)}`, { signal })));
  const models = new Set(jobs.map((j) => j.model_id));
  if (models.size > 1) main.append(h("p", { class: "message info", role: "status", text: "These jobs cleanse different models; their figures are not directly comparable." }));
  const label = (j) => `${j.method} ${j.id.slice(0, 8)}`;
  const duration = (j) => (j.started_at && j.finished_at ? (new Date(j.finished_at) - new Date(j.started_at)) / 1000 : null);
  const rows = [
    ["Status", (j) => j.status],
    ["ACC before", (j) => pct(j.metrics.before?.acc)],
    ["ACC after", (j) => pct(j.metrics.after?.acc)],
    ["ASR before", (j) => pct(j.metrics.before?.asr)],
    ["ASR after", (j) => pct(j.metrics.after?.asr)],
    ["RA after", (j) => pct(j.metrics.after?.ra)],
    ["DER", (j) => pct(j.metrics.der)],
    ["Fidelity", (j) => pct(j.metrics.fidelity)],
    ["Epochs (teacher / student)", (j) => `${["argd", "nad"].includes(j.method) ? j.params.teacher_epochs : "none"} / ${j.params.epochs}`],
    ["Run time", (j) => seconds(duration(j))],
  ];
  main.append(
    h("h2", { text: "Side by side" }),
    h(
      "table",
      { id: "compare-table" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "" }), jobs.map((j) => h("th", { scope: "col", class: "num" }, h("a", { href: `#/jobs/${j.id}`, text: label(j) }))))),
      h("tbody", {}, rows.map(([name, value]) => h("tr", {}, h("th", { scope: "row", text: name }), jobs.map((j) => h("td", { class: "num", text: value(j) }))))),
    ),
  );
  const chart = barChart(
    ["ACC after", "ASR after", "RA after"],
    jobs.map((j) => ({ name: label(j), values: [j.metrics.after?.acc ?? null, j.metrics.after?.asr ?? null, j.metrics.after?.ra ?? null] })),
    { title: "After cleansing: ACC, ASR and RA per job", width: 560 },
  );
  chart.id = "chart-compare";
  main.append(h("div", { class: "charts" }, chart));
}

route();
