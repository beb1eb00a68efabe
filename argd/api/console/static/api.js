// The console's only way to the server: the public /v1 REST API, with the key in an Authorization header.
// The key lives in sessionStorage (this tab only, gone when it closes); no cookie is ever set, so another
// site cannot ride on it. URLs are relative to the page, so a reverse-proxy path prefix needs no setting.

const KEY_NAME = "argd.apiKey";

export class ApiProblem extends Error {
  // A problem-details answer (RFC 9457), or one made up for a failure that never reached the API.
  constructor(problem) {
    super(problem.detail || problem.title || "Request failed");
    this.problem = problem;
    this.status = problem.status || 0;
  }
}

export function apiUrl(path) {
  return new URL("../" + path.replace(/^\//, ""), document.baseURI).toString();
}

export function storedKey() {
  return sessionStorage.getItem(KEY_NAME);
}

export function storeKey(key) {
  if (key) sessionStorage.setItem(KEY_NAME, key);
  else sessionStorage.removeItem(KEY_NAME);
}

let onUnauthorized = () => {};
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

function authHeaders(extra = {}, key = storedKey()) {
  return key ? { ...extra, Authorization: "Bearer " + key } : extra;
}

async function problemOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (body && typeof body === "object" && (body.title || body.detail)) return body;
  return { status: response.status, title: response.statusText || "Error", detail: `HTTP ${response.status}` };
}

function unreachable(error) {
  return new ApiProblem({ status: 0, title: "Server unreachable", detail: String(error.message || error) });
}

async function checked(response) {
  if (response.ok) return response;
  const problem = await problemOf(response);
  if (response.status === 401) onUnauthorized(problem);
  throw new ApiProblem(problem);
}

export async function request(method, path, { json, headers, key, signal } = {}) {
  const init = { method, headers: authHeaders({ Accept: "application/json", ...headers }, key), signal };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(apiUrl(path), init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw unreachable(error);
  }
  await checked(response);
  if (response.status === 204) return null;
  return response.json();
}

export const get = (path, options) => request("GET", path, options);
export const post = (path, json, options = {}) => request("POST", path, { ...options, json });

export function upload(path, form, onProgress) {
  // XMLHttpRequest, not fetch: it reports upload progress and can be aborted mid-body.
  const xhr = new XMLHttpRequest();
  const done = new Promise((resolve, reject) => {
    xhr.open("POST", apiUrl(path));
    for (const [name, value] of Object.entries(authHeaders({ Accept: "application/json" }))) {
      xhr.setRequestHeader(name, value);
    }
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    };
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      const problem = body && body.title ? body : { status: xhr.status, title: xhr.statusText, detail: `HTTP ${xhr.status}` };
      if (xhr.status === 401) onUnauthorized(problem);
      reject(new ApiProblem(problem));
    };
    xhr.onerror = () => reject(new ApiProblem({ status: 0, title: "Upload failed", detail: "The connection broke during the upload" }));
    xhr.onabort = () => reject(new ApiProblem({ status: 0, title: "Upload canceled", detail: "The upload was canceled; nothing was stored", canceled: true }));
    xhr.send(form);
  });
  return { done, abort: () => xhr.abort() };
}

export async function download(path, filename) {
  // fetch (to send the key), then hand the bytes to the browser as a download of an object URL.
  let response;
  try {
    response = await fetch(apiUrl(path), { headers: authHeaders() });
  } catch (error) {
    throw unreachable(error);
  }
  await checked(response);
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

export async function followJob(jobId, onJob, signal) {
  // Reads GET /v1/jobs/{id}/events with fetch + a stream reader (EventSource cannot send the header).
  // Resolves when the stream ends; rejects with ApiProblem on a problem frame or a refused stream.
  const response = await fetch(apiUrl(`v1/jobs/${encodeURIComponent(jobId)}/events`), {
    headers: authHeaders({ Accept: "text/event-stream" }),
    signal,
    cache: "no-store",
  });
  await checked(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (!data.length) continue;
      const payload = JSON.parse(data.join("\n"));
      if (event === "job") onJob(payload);
      else if (event === "problem") {
        if (payload.status === 401) onUnauthorized(payload);
        throw new ApiProblem(payload);
      } else if (event === "end") return;
    }
  }
}
