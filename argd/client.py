"""A small client for the argd REST API, used by the `argd` command line and importable by pipelines.

It speaks only the public contract (`/v1/...`, bearer keys, problem-details errors). Of argd it imports only
the public job schema (`argd.jobs.schemas`, plain pydantic), so a pipeline step needs neither torch nor the
server's database and broker libraries.

    client = ArgdClient("http://127.0.0.1:8000", api_key)
    model = client.upload_model("model.safetensors", spec)
    clean = client.upload_dataset("clean.npz")
    job = client.create_job(model["id"], clean["id"])
    job = client.wait(job["id"])         # follows the job's event stream (polls if it is unavailable)
    client.download_model(job["id"], "cleansed.safetensors")
    typed = client.job(job["id"])         # the same job as an argd.jobs.schemas.JobOut
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import httpx

from argd.jobs.schemas import JobOut
from argd.jobs.status import TERMINAL_STATUSES

_CHUNK = 1 << 20


class ArgdClientError(Exception):
    """Base class of everything the client raises, so a caller can catch one type."""


class ServerUnreachable(ArgdClientError):
    """The server could not be reached (refused, DNS, TLS, timeout): no HTTP answer at all."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"cannot reach the argd server at {url}: {reason}")
        self.url = url
        self.reason = reason


class ApiError(ArgdClientError):
    """The server answered with an HTTP error; `title`/`detail` come from its problem-details body."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        method: str = "",
        url: str = "",
        body: Any = None,
    ):
        self.status = status
        self.title = title
        self.detail = detail
        self.method = method
        self.url = url
        self.body = body
        super().__init__(self._message())

    def _message(self) -> str:
        text = f"HTTP {self.status} {self.title}"
        if self.detail and self.detail != self.title:
            text += f": {self.detail}"
        if self.method and self.url:
            text += f" ({self.method} {self.url})"
        return text

    @property
    def problem_type(self) -> str | None:
        """The problem's `type` URI (or code), when the body carried one."""
        if isinstance(self.body, dict):
            value = self.body.get("type") or self.body.get("code")
            return str(value) if value is not None else None
        return None

    @classmethod
    def from_body(cls, body: dict[str, Any], method: str, url: str) -> ApiError:
        """The error a problem document stands for (one sent inside an event stream)."""
        status = int(body.get("status") or 500)
        title = str(body.get("title") or "Error")
        detail = body.get("detail")
        return cls(status, title, str(detail) if detail else None, method=method, url=url, body=body)

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """Build the error from an RFC 9457 body, falling back to the status line for anything else."""
        body: Any = None
        title = response.reason_phrase or "Error"
        detail: str | None = None
        try:
            body = response.json()
        except (ValueError, UnicodeDecodeError):
            text = response.text.strip()
            detail = text[:300] if text else None
        if isinstance(body, dict):
            title = str(body.get("title") or title)
            raw = body.get("detail")
            if isinstance(raw, str):
                detail = raw
            elif raw is not None:
                detail = json.dumps(raw, separators=(",", ":"))[:500]
            errors = body.get("errors")
            if errors and not detail:
                detail = json.dumps(errors, separators=(",", ":"))[:500]
        return cls(
            response.status_code,
            title,
            detail,
            method=response.request.method,
            url=str(response.request.url),
            body=body,
        )


class StreamUnavailable(ArgdClientError):
    """The server offers no usable event stream for the job (older server, proxy, dropped stream)."""


class JobTimeout(ArgdClientError):
    """`wait` gave up before the job reached a final status; the job itself keeps running."""

    def __init__(self, job_id: str, seconds: float, job: dict[str, Any]):
        super().__init__(f"job {job_id} still {job.get('status')} after {seconds:.0f}s")
        self.job_id = job_id
        self.job = job


class ArgdClient:
    """Thin, synchronous wrapper over the `/v1` REST API. Every method returns the decoded JSON body."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ):
        if not base_url:
            raise ValueError("base_url is required (e.g. http://127.0.0.1:8000)")
        self.base_url = base_url.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": _user_agent()}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    @classmethod
    def from_env(cls, base_url: str | None = None, api_key: str | None = None, **kwargs: Any) -> ArgdClient:
        """Explicit arguments win; otherwise ARGD_URL and ARGD_API_KEY; the URL defaults to a local server."""
        url = base_url or os.environ.get("ARGD_URL") or "http://127.0.0.1:8000"
        key = api_key or os.environ.get("ARGD_API_KEY")
        return cls(url, key, **kwargs)

    # -- plumbing -------------------------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ArgdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.base_url, _reason(exc)) from exc
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._request(method, path, **kwargs)
        if not response.content:
            return {}
        try:
            return cast("dict[str, Any]", response.json())  # every /v1 answer is a JSON object
        except ValueError as exc:
            raise ApiError(
                response.status_code,
                "Invalid response",
                "the server's answer is not JSON",
                method=method,
                url=str(response.request.url),
            ) from exc

    # -- service --------------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """`GET /healthz`: the process is up."""
        return self._json("GET", "/healthz")

    def ready(self) -> dict[str, Any]:
        """`GET /readyz`: database and broker reachable (raises ApiError with 503 when not)."""
        return self._json("GET", "/readyz")

    # -- uploads --------------------------------------------------------------------------------------------

    def upload_model(
        self, path: str | os.PathLike[str], spec: Mapping[str, Any] | Any, *, name: str | None = None
    ) -> dict[str, Any]:
        """Upload weights (`.safetensors` or a weights-only `.pt`/`.pth`/`.tar`) with their model spec.

        `spec` is a dict or anything with `model_dump()` (e.g. `argd.core.spec.ModelSpec`). The file is
        streamed, never read into memory whole.
        """
        spec_dict = spec.model_dump(mode="json") if hasattr(spec, "model_dump") else dict(spec)
        form = {"spec": json.dumps(spec_dict)}
        if name:
            form["name"] = name
        file_path = _existing_file(path)
        with file_path.open("rb") as fh:
            files = {"file": (file_path.name, fh, "application/octet-stream")}
            return self._json("POST", "/v1/models", files=files, data=form)

    def upload_dataset(self, path: str | os.PathLike[str], *, name: str | None = None) -> dict[str, Any]:
        """Upload an `.npz` (x uint8, y int) or a `.zip` of class folders."""
        file_path = _existing_file(path)
        with file_path.open("rb") as fh:
            files = {"file": (file_path.name, fh, "application/octet-stream")}
            return self._json("POST", "/v1/datasets", files=files, data={"name": name} if name else None)

    def get_model(self, model_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/models/{model_id}")

    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/datasets/{dataset_id}")

    # -- jobs -----------------------------------------------------------------------------------------------

    def create_job(
        self,
        model_id: str,
        clean_dataset_id: str,
        *,
        test_dataset_id: str | None = None,
        poisoned_dataset_id: str | None = None,
        target_label: int | None = None,
        teacher_model_id: str | None = None,
        method: str | None = None,
        params: Mapping[str, Any] | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        mlflow: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """`POST /v1/jobs`: queue a cleanse; fields left as None take the server's defaults.

        `mlflow` ({"experiment", "run_name", "registered_model"}) exports the finished job to the
        deployment's MLflow server."""
        body: dict[str, Any] = {"model_id": model_id, "clean_dataset_id": clean_dataset_id}
        optional = {
            "test_dataset_id": test_dataset_id,
            "poisoned_dataset_id": poisoned_dataset_id,
            "target_label": target_label,
            "teacher_model_id": teacher_model_id,
            "method": method,
            "params": dict(params) if params else None,
            "webhook_url": webhook_url,
            "mlflow": dict(mlflow) if mlflow is not None else None,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._json("POST", "/v1/jobs", json=body, headers=headers)

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{job_id}")

    def job(self, job_id: str) -> JobOut:
        """`GET /v1/jobs/{id}` as the typed public schema (status a JobStatus, metrics, progress, error)."""
        return JobOut.model_validate(self.get_job(job_id))

    def list_jobs(self, **query: Any) -> dict[str, Any]:
        """`GET /v1/jobs`: one page; `query` holds paging and filters (e.g. limit, cursor, status)."""
        params = {k: v for k, v in query.items() if v is not None}
        return self._json("GET", "/v1/jobs", params=params)

    def iter_jobs(self, page_size: int = 50, **query: Any) -> Iterator[dict[str, Any]]:
        """Every job of this key, following the server's next-page cursor."""
        cursor: str | None = None
        while True:
            page = self.list_jobs(limit=page_size, cursor=cursor, **query)
            yield from page_items(page)
            cursor = page.get("next_cursor") if isinstance(page, dict) else None
            if not cursor:
                return

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def report(self, job_id: str) -> dict[str, Any]:
        """The job's JSON report: metrics, every parameter, seed, versions, input/output sha256."""
        return self._json("GET", f"/v1/jobs/{job_id}/report")

    def _download_presigned(self, url: str, partial: Path) -> None:
        """Follow the API's redirect to the object store's presigned URL, without the API key (the URL is
        its own credential, and S3 refuses a request that carries a second one)."""
        timeout = self._http.timeout
        with httpx.stream("GET", url, timeout=timeout, headers={"User-Agent": _user_agent()}) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError(response.status_code, "The download from the object store failed")
            with partial.open("wb") as fh:
                for chunk in response.iter_bytes(_CHUNK):
                    fh.write(chunk)

    def download_model(self, job_id: str, dest: str | os.PathLike[str]) -> Path:
        """Stream the cleansed `.safetensors` to `dest` (a file, or a folder for `<job>.safetensors`).

        Written to a temporary name first, so a broken transfer never leaves a half file at `dest`.
        """
        target = Path(dest)
        if target.is_dir():
            target = target / f"{job_id}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        try:
            with self._http.stream("GET", f"/v1/jobs/{job_id}/model") as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError.from_response(response)
                if response.status_code in (302, 303, 307) and "location" in response.headers:
                    self._download_presigned(response.headers["location"], partial)
                else:
                    with partial.open("wb") as fh:
                        for chunk in response.iter_bytes(_CHUNK):
                            fh.write(chunk)
        except httpx.TransportError as exc:
            partial.unlink(missing_ok=True)
            raise ServerUnreachable(self.base_url, _reason(exc)) from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(target)
        return target

    def events(self, job_id: str, *, read_timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Follow `GET /v1/jobs/{id}/events`: yield the job each time it changes, until a final status.

        Raises ApiError when the server refuses the stream (and for a `problem` frame: a key revoked, the job
        deleted), StreamUnavailable when it answers with something that is not an event stream (an older
        server, a proxy in the way), and ServerUnreachable when the connection fails or drops. A stream that
        ends without a final status raises StreamUnavailable too, so a caller never mistakes it for the end.
        """
        timeout = httpx.Timeout(self._http.timeout.connect, read=read_timeout or self._http.timeout.read)
        headers = {"Accept": "text/event-stream"}
        try:
            with self._http.stream(
                "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError.from_response(response)
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    raise StreamUnavailable(f"GET /v1/jobs/{job_id}/events is not an event stream")
                for event, data in _sse_frames(response.iter_lines()):
                    if event == "job":
                        yield cast("dict[str, Any]", json.loads(data))
                    elif event == "problem":
                        raise ApiError.from_body(json.loads(data), "GET", str(response.request.url))
                    elif event == "end":
                        return
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.base_url, _reason(exc)) from exc
        raise StreamUnavailable(f"the event stream of job {job_id} ended before the job did")

    def wait(
        self,
        job_id: str,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        *,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        max_poll_errors: int = 5,
        stream: bool = True,
    ) -> dict[str, Any]:
        """Wait until the job is succeeded, failed or canceled; return its final state.

        It follows the job's event stream (`events`), so progress arrives as it happens without polling;
        when the stream cannot be opened or drops, it polls `GET /v1/jobs/{id}` every `poll_interval`
        seconds instead (`stream=False` polls from the start). `on_progress` gets every job body seen (the
        final one included). Raises JobTimeout after `timeout` seconds; the job keeps running on the
        server. A long job outlives API restarts, so up to `max_poll_errors` transient failures in a row
        (no answer, 429, 5xx) are waited out, with a growing pause, before the last one is raised.
        """
        start = time.monotonic()
        if stream:
            final = self._wait_streaming(job_id, on_progress, start, timeout)
            if final is not None:
                return final
        errors = 0
        while True:
            try:
                job = self.get_job(job_id)
            except (ServerUnreachable, ApiError) as exc:
                transient = isinstance(exc, ServerUnreachable) or exc.status == 429 or exc.status >= 500
                errors += 1
                if not transient or errors > max_poll_errors:
                    raise
                time.sleep(min(poll_interval * 2**errors, 30.0))
                continue
            errors = 0
            if _observe(job, on_progress, start, timeout):
                return job
            time.sleep(poll_interval)

    def _wait_streaming(
        self,
        job_id: str,
        on_progress: Callable[[dict[str, Any]], None] | None,
        start: float,
        timeout: float | None,
    ) -> dict[str, Any] | None:
        """The final job as the event stream delivers it; None when the stream is unavailable or dropped
        (the caller polls from there). A refusal other than a server error is raised: polling would get
        the same answer."""
        job: dict[str, Any] | None = None
        read_timeout = None if timeout is None else max(timeout, 1.0)
        try:
            for job in self.events(job_id, read_timeout=read_timeout):
                if _observe(job, on_progress, start, timeout):
                    return job
        except (StreamUnavailable, ServerUnreachable):
            return None
        except ApiError as exc:
            if exc.status < 500 and exc.status not in (404, 405, 406, 429):
                raise
            return None  # 404/405/406 may be a server without the stream; polling tells a missing job apart
        return job if job is not None and job.get("status") in TERMINAL_STATUSES else None


def _observe(
    job: dict[str, Any],
    on_progress: Callable[[dict[str, Any]], None] | None,
    start: float,
    timeout: float | None,
) -> bool:
    """Hand a job body seen while waiting to `on_progress`; True once it is final, JobTimeout when the
    wait has run out."""
    if on_progress is not None:
        on_progress(job)
    if job.get("status") in TERMINAL_STATUSES:
        return True
    if timeout is not None and time.monotonic() - start >= timeout:
        raise JobTimeout(str(job.get("id", "")), timeout, job)
    return False


def _sse_frames(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) of each Server-Sent Events frame; comments and `retry:` lines are skipped."""
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


def page_items(page: Any) -> list[dict[str, Any]]:
    """The list inside a page body, whatever the server calls it (`items` or `data`), or the body itself."""
    if isinstance(page, list):
        return cast("list[dict[str, Any]]", page)
    if isinstance(page, dict):
        for key in ("items", "data", "jobs", "results"):
            items = page.get(key)
            if isinstance(items, list):
                return cast("list[dict[str, Any]]", items)
    return []


def _existing_file(path: str | os.PathLike[str]) -> Path:
    file_path = Path(path)
    if not file_path.is_file():
        raise FileNotFoundError(f"no such file: {file_path}")
    return file_path


def _reason(exc: httpx.TransportError) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def _user_agent() -> str:
    from argd import __version__

    return f"argd-client/{__version__}"
