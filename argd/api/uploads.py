"""Streaming multipart intake: uploads go to a temporary file in chunks, hashed on the way, under a limit.

Why a parser of our own over `request.stream()` rather than Starlette's `request.form()`: the form parser
reads the whole body before the route runs, so a limit could only be checked after a multi-gigabyte body
had been received and spooled. Here python-multipart's low-level parser sees each chunk as it arrives:

- a `Content-Length` above the limit answers 413 before a single body byte is read;
- without `Content-Length` (chunked bodies) the bytes are counted as they stream, and 413 is raised on the
  chunk that crosses the limit, so the server reads at most one chunk past it;
- memory stays flat: each chunk is written (in a worker thread) to a file under the data directory and fed
  to SHA-256; nothing holds the whole upload.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import anyio.to_thread
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from argd.api.errors import Problem

if TYPE_CHECKING:
    from sqlalchemy.orm import Session
from argd.persistence.tempfiles import UPLOAD_PREFIX

# Room for the part headers and small text fields on top of the file limit when checking the whole body.
FORM_OVERHEAD_BYTES = 1 << 20
DEFAULT_MAX_FIELD_BYTES = 64 << 10
MAX_PARTS = 16


@dataclass
class ReceivedFile:
    """A file part written to disk: where it is, how big, its SHA-256 and the client's file name."""

    field_name: str
    filename: str
    content_type: str | None
    path: Path
    size: int
    sha256: str


@dataclass
class ReceivedForm:
    """The parsed form: small text fields in memory, file parts on disk."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, ReceivedFile] = field(default_factory=dict)

    def remove_files(self) -> None:
        """Delete the temporary files (the route moves what it keeps into the artifact store first)."""
        for received in self.files.values():
            with contextlib.suppress(FileNotFoundError):
                received.path.unlink()


MAX_FILENAME_LENGTH = 255


def checked_filename(raw: bytes) -> str:
    """The upload's file name as text; a 422 `invalid_filename` for names no honest client sends: not
    UTF-8, control characters (NUL included: Postgres text cannot hold it), '..' path components, or
    longer than 255 characters. Only the base name is ever used, and never as a path."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(422, "invalid_filename", "The file name is not valid UTF-8") from None
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise Problem(422, "invalid_filename", "The file name contains control characters (e.g. NUL)")
    if len(name) > MAX_FILENAME_LENGTH:
        raise Problem(
            422, "invalid_filename", f"The file name is longer than {MAX_FILENAME_LENGTH} characters"
        )
    if ".." in name.replace("\\", "/").split("/"):
        raise Problem(422, "invalid_filename", "The file name must not contain '..' path components")
    return name


def file_suffix(filename: str, allowed: Iterable[str]) -> str | None:
    """The allowed suffix the file name ends with (case-insensitive), or None."""
    name = os.path.basename(filename.replace("\\", "/")).lower()
    for suffix in sorted(allowed, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return None


class _FileSink:
    """Open temporary file plus its running hash and size."""

    def __init__(self, handle: IO[bytes], path: Path):
        self.handle = handle
        self.path = path
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.hasher.update(data)
        self.handle.write(data)


class _Part:
    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.name = ""
        self.filename: str | None = None
        self.content_type: str | None = None
        self.text: bytearray | None = None
        self.sink: _FileSink | None = None


class _MultipartReader:
    """Turns parser callbacks into parts; owns the temporary files until the form is handed over."""

    def __init__(
        self,
        directory: Path,
        file_fields: dict[str, tuple[str, ...]],
        text_fields: set[str],
        max_file_bytes: int,
        max_field_bytes: int,
    ):
        self.directory = directory
        self.file_fields = file_fields
        self.text_fields = text_fields
        self.max_file_bytes = max_file_bytes
        self.max_field_bytes = max_field_bytes
        self.events: list[tuple[str, bytes]] = []
        self.form = ReceivedForm()
        self.part: _Part | None = None
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.parts = 0
        self.ended = False
        self.open_sinks: list[_FileSink] = []

    def callbacks(self) -> dict[str, Callable[..., None]]:
        def record(name: str) -> Callable[..., None]:
            def on_event(data: bytes | None = None, start: int = 0, end: int = 0) -> None:
                self.events.append((name, b"" if data is None else bytes(data[start:end])))

            return on_event

        return {
            f"on_{name}": record(name)
            for name in (
                "part_begin",
                "part_data",
                "part_end",
                "header_field",
                "header_value",
                "header_end",
                "headers_finished",
                "end",
            )
        }

    async def process_events(self) -> None:
        events, self.events = self.events, []
        pending: list[bytes] = []
        for name, data in events:
            if name == "part_data" and self.part is not None and self.part.sink is not None:
                pending.append(data)
                continue
            if pending:
                await self._write_file_data(pending)
                pending = []
            self._handle(name, data)
            if name == "part_end" and self.part is not None and self.part.sink is not None:
                await anyio.to_thread.run_sync(self._close_file, self.part)
        if pending:
            await self._write_file_data(pending)

    async def _write_file_data(self, chunks: list[bytes]) -> None:
        assert self.part is not None and self.part.sink is not None
        sink = self.part.sink
        data = b"".join(chunks)
        sink.size += len(data)
        if sink.size > self.max_file_bytes:
            raise _too_large(
                f"The file in field '{self.part.name}' exceeds the limit of {self.max_file_bytes} bytes"
            )
        await anyio.to_thread.run_sync(sink.write, data)

    def _handle(self, name: str, data: bytes) -> None:
        if name == "part_begin":
            self.parts += 1
            if self.parts > MAX_PARTS:
                raise Problem(422, "invalid_form", f"The form has more than {MAX_PARTS} parts")
            self.part = _Part()
        elif name == "header_field":
            self.header_field += data
        elif name == "header_value":
            self.header_value += data
        elif name == "header_end":
            assert self.part is not None
            key = self.header_field.decode("latin-1").strip().lower()
            self.part.headers[key] = self.header_value.decode("latin-1").strip()
            self.header_field.clear()
            self.header_value.clear()
        elif name == "headers_finished":
            self._start_part()
        elif name == "part_data":
            assert self.part is not None and self.part.text is not None
            self.part.text += data
            if len(self.part.text) > self.max_field_bytes:
                raise _too_large(f"The form field '{self.part.name}' exceeds {self.max_field_bytes} bytes")
        elif name == "part_end":
            assert self.part is not None
            if self.part.text is not None:
                try:
                    self.form.fields[self.part.name] = self.part.text.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise Problem(
                        422, "invalid_form", f"The form field '{self.part.name}' is not UTF-8"
                    ) from exc
        elif name == "end":
            self.ended = True

    def _start_part(self) -> None:
        part = self.part
        assert part is not None
        disposition, options = parse_options_header(part.headers.get("content-disposition", ""))
        if disposition != b"form-data" or b"name" not in options:
            raise Problem(
                400, "invalid_form", "A form part has no 'Content-Disposition: form-data; name=...'"
            )
        part.name = options[b"name"].decode("utf-8", "replace")
        raw_filename = options.get(b"filename")
        part.filename = None if raw_filename is None else checked_filename(raw_filename)
        part.content_type = part.headers.get("content-type")
        if part.name in self.form.fields or part.name in self.form.files:
            raise Problem(422, "invalid_form", f"The form field '{part.name}' appears more than once")
        if part.name in self.file_fields:
            allowed = self.file_fields[part.name]
            if part.filename is None:
                raise Problem(422, "invalid_form", f"The form field '{part.name}' must be a file upload")
            suffix = file_suffix(part.filename, allowed)
            if suffix is None:
                raise Problem(
                    422,
                    "unsupported_file_type",
                    f"The file '{os.path.basename(part.filename)}' must end in one of: {', '.join(allowed)}",
                )
            handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed at part end or by cleanup
                dir=self.directory, prefix=UPLOAD_PREFIX, suffix=suffix, delete=False
            )
            part.sink = _FileSink(handle, Path(handle.name))
            self.open_sinks.append(part.sink)
        elif part.name in self.text_fields:
            part.text = bytearray()
        else:
            expected = sorted([*self.file_fields, *self.text_fields])
            raise Problem(
                422, "invalid_form", f"Unexpected form field '{part.name}'; expected: {', '.join(expected)}"
            )

    def _close_file(self, part: _Part) -> None:
        sink = part.sink
        assert sink is not None
        sink.handle.flush()
        os.fsync(sink.handle.fileno())
        sink.handle.close()
        self.form.files[part.name] = ReceivedFile(
            field_name=part.name,
            filename=os.path.basename((part.filename or "").replace("\\", "/")),
            content_type=part.content_type,
            path=sink.path,
            size=sink.size,
            sha256=sink.hasher.hexdigest(),
        )

    def discard(self) -> None:
        for sink in self.open_sinks:
            with contextlib.suppress(OSError):
                sink.handle.close()
            with contextlib.suppress(FileNotFoundError):
                sink.path.unlink()


def _too_large(detail: str) -> Problem:
    return Problem(413, "payload_too_large", detail, headers={"Connection": "close"})


def check_content_length(request: Request, limit: int, file_limit: int) -> None:
    """Reject at once, before reading the body, when the declared length is over `limit` (or unreadable)."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        length = int(declared)
    except ValueError as exc:
        raise Problem(400, "bad_request", "The Content-Length header is not a number") from exc
    if length > limit:
        raise _too_large(f"The request body of {length} bytes exceeds the upload limit of {file_limit} bytes")


async def end_transaction(session: Session) -> None:
    """End the transaction authentication opened, before a body streams in: a body may take minutes, and
    it should hold no database connection meanwhile; the store step then takes a fresh, checked one, so a
    database that restarted while the body streamed costs the upload nothing."""
    await anyio.to_thread.run_sync(session.commit)


@contextlib.asynccontextmanager
async def receive_multipart(
    request: Request,
    directory: Path,
    *,
    file_fields: dict[str, tuple[str, ...]],
    text_fields: Iterable[str] = (),
    max_file_bytes: int,
    max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES,
) -> AsyncIterator[ReceivedForm]:
    """Parse a multipart/form-data body as it streams; yields the form, deletes its temp files on exit.

    `file_fields` maps each accepted file field to its allowed file-name suffixes (e.g. ".npz"). Every file
    field is required; text fields are optional (the route checks them). Over-limit bodies raise a 413
    problem, malformed ones 400, unexpected fields or file types 422.
    """
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise Problem(415, "unsupported_media_type", "The request body must be multipart/form-data")
    body_limit = max_file_bytes * len(file_fields) + FORM_OVERHEAD_BYTES
    check_content_length(request, body_limit, max_file_bytes)
    directory.mkdir(parents=True, exist_ok=True)

    reader = _MultipartReader(directory, file_fields, set(text_fields), max_file_bytes, max_field_bytes)
    try:
        parser = MultipartParser(params[b"boundary"], reader.callbacks())  # type: ignore[arg-type]
    except Exception as exc:  # an over-long boundary, for one
        raise Problem(400, "invalid_form", f"Unusable multipart boundary: {exc}") from exc
    try:
        received = 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > body_limit:
                    raise _too_large(f"The request body exceeds the upload limit of {max_file_bytes} bytes")
                try:
                    parser.write(chunk)
                except MultipartParseError as exc:
                    raise Problem(400, "invalid_form", f"Malformed multipart body: {exc}") from exc
                await reader.process_events()
        except ClientDisconnect as exc:
            raise Problem(400, "bad_request", "The client disconnected during the upload") from exc
        if not reader.ended:
            raise Problem(400, "invalid_form", "The multipart body ended before its closing boundary")
        missing = [name for name in file_fields if name not in reader.form.files]
        if missing:
            raise Problem(422, "invalid_form", f"Missing file field(s): {', '.join(missing)}")
    except BaseException:
        reader.discard()
        raise
    try:
        yield reader.form
    finally:
        reader.form.remove_files()
