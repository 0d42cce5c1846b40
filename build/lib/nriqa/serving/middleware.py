"""The service's ASGI middleware: uploads checked for size and shape before BentoML parses them,
and their file names kept off the disk."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path

from nriqa.serving.responses import InputError
from nriqa.serving.settings import ServingSettings

# Where UploadGuard leaves a scoring request's client file names (as `shown_name` shows them,
# in the order of the form's file parts) in the ASGI scope's "state"; `upload_names` reads them.
UPLOAD_NAMES = "nriqa_upload_names"
# How long a client's file name may be in an error message; longer ones lose their middle.
SHOWN_NAME_CHARS = 100


class UploadGuard:
    """Check an upload's size and shape before BentoML parses it.

    * Bodies over the upload limit get 413 before they are read; bodies without a
      Content-Length (chunked) get 411, so every accepted body has a known, bounded size.
    * On the scoring APIs, anything but multipart/form-data gets 415, and the form must hold
      only file parts in the API's field. BentoML 1.4 answers a text part there (it tries
      to download it as a URL) or a file in an unknown field with a 500; this turns them
      into a 400 that says what to send. The API's options (`map`) are the text parts allowed.
    * The form goes on to BentoML with each file named `upload-<n>` (its place among the
      files), whatever name the client gave: BentoML keeps each upload in a temporary file
      named after it, so a name over 255 bytes in UTF-8 (85 x "日") failed there with a 500,
      and no client's name should reach the file system. The client's names travel in the
      request's state instead, for the error messages (`upload_names`).

    `settings` gives the running service's limits; it is called per request, because the
    middleware is built before the service has started and read them.
    """

    FILE_FIELDS = {"/score": "image", "/score_batch": "images"}
    OPTION_FIELDS = {"/score": ("map",)}

    def __init__(self, app, settings: Callable[[], ServingSettings]) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        settings = self.settings()
        try:
            _check_length(scope, settings.max_upload_bytes)
            path = scope["path"].rstrip("/")
            field = self.FILE_FIELDS.get(path)
            if field is not None:
                body = await _read_body(receive, settings.max_upload_bytes)
                body, content_type, names = await _check_form(
                    scope, body, field, self.OPTION_FIELDS.get(path, ()),
                    settings.max_batch_images)
                scope = _with_form(scope, body, content_type, names)
                receive = _replay(body, receive)
        except InputError as error:
            await error.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _check_length(scope, max_bytes: int) -> None:
    headers = dict(scope["headers"])
    length = headers.get(b"content-length")
    if length is None:
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            raise InputError("send the upload with a Content-Length header",
                             HTTPStatus.LENGTH_REQUIRED)
    elif not length.isdigit() or int(length) > max_bytes:
        raise InputError(f"the upload is {length.decode(errors='replace')} bytes, more than "
                         f"the limit of {max_bytes}", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)


async def _read_body(receive, max_bytes: int) -> bytes:
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InputError("the client went away")
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > max_bytes:  # a client that sent more than its Content-Length said
            raise InputError(f"the upload is over the limit of {max_bytes} bytes",
                             HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _check_form(scope, body: bytes, field: str, options: tuple[str, ...],
                      max_files: int) -> tuple[bytes, str, list[str]]:
    """Check the form; give it back with neutral file names (`_neutral_form`)."""
    from starlette.datastructures import Headers, UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    headers = Headers(scope=scope)
    if headers.get("content-type", "").split(";")[0].strip() != "multipart/form-data":
        raise InputError(f"send the image as a multipart/form-data upload in the field "
                         f"`{field}` (e.g. curl -F {field}=@photo.jpg)",
                         HTTPStatus.UNSUPPORTED_MEDIA_TYPE)

    async def stream():
        yield body

    try:
        form = await MultiPartParser(headers, stream(), max_files=max_files).parse()
    except MultiPartException as error:
        if error.message.startswith("Too many files"):
            raise InputError(f"more than {max_files} images in one request, the limit "
                             "(serve.max_batch_images); send them in several requests",
                             HTTPStatus.REQUEST_ENTITY_TOO_LARGE) from error
        raise InputError(f"malformed multipart upload: {error.message}") from error
    try:
        for name, value in form.multi_items():
            if name in options:
                if isinstance(value, UploadFile) or value.lower() not in ("true", "false"):
                    raise InputError(f"the option `{name}` must be true or false")
                continue
            if name != field:
                raise InputError(f"unexpected form field `{name}`; send the image(s) in "
                                 f"the field `{field}`")
            if not isinstance(value, UploadFile):
                raise InputError(f"the field `{field}` must be a file upload, not text "
                                 f"(e.g. curl -F {field}=@photo.jpg)")
        if not form.getlist(field):
            raise InputError(f"no image in the request; send it in the field `{field}`")
        if field == "image" and len(form.getlist(field)) > 1:
            raise InputError("`score` takes one image; use `score_batch` for several")
        return await _neutral_form(form)
    finally:
        await form.close()


async def _neutral_form(form) -> tuple[bytes, str, list[str]]:
    """The checked form encoded again, each file part named `upload-<n>`: (body, its content
    type, the client's file names as `shown_name` shows them). Field names and text values
    are the API's own (checked), so they need no quoting."""
    from starlette.datastructures import UploadFile

    boundary = f"nriqa-{secrets.token_hex(16)}".encode()
    parts, names = [], []
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            head = f'Content-Disposition: form-data; name="{name}"; filename="upload-{len(names)}"'
            if value.content_type:
                head += f"\r\nContent-Type: {value.content_type}"
            names.append(shown_name(value.filename))
            data = await value.read()
        else:
            head, data = f'Content-Disposition: form-data; name="{name}"', value.encode()
        parts.append(b"--%s\r\n%s\r\n\r\n%s\r\n" % (boundary, head.encode("latin-1"), data))
    parts.append(b"--%s--\r\n" % boundary)
    return b"".join(parts), f"multipart/form-data; boundary={boundary.decode()}", names


def _with_form(scope, body: bytes, content_type: str, names: list[str]):
    """The request's scope with the headers of the new form and the client's names."""
    replaced = (b"content-type", b"content-length", b"transfer-encoding")
    headers = [(key, value) for key, value in scope["headers"] if key.lower() not in replaced]
    headers += [(b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode())]
    return {**scope, "headers": headers,
            "state": {**scope.get("state", {}), UPLOAD_NAMES: names}}


def shown_name(filename: str | None) -> str:
    """A client's file name as error messages show it: without folders, unprintable characters
    as "?", at most SHOWN_NAME_CHARS characters (the middle cut out); "upload" if none."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(char if char.isprintable() else "?" for char in name) or "upload"
    if len(name) > SHOWN_NAME_CHARS:
        name = name[:SHOWN_NAME_CHARS - 21] + "…" + name[-20:]
    return name


def upload_names(paths: list[Path], scope) -> list[str]:
    """The client's names of the files a scoring API got, for its error messages: BentoML's
    temporary file of the n-th file part ends in "upload-<n>" (`_neutral_form`), and the
    names are in the request's state. "upload" for a file without one."""
    names = scope.get("state", {}).get(UPLOAD_NAMES, [])
    shown = []
    for path in paths:
        found = re.search(r"upload-(\d+)$", Path(path).name)
        index = int(found.group(1)) if found else len(names)
        shown.append(names[index] if index < len(names) else "upload")
    return shown


def _replay(body: bytes, receive):
    """A `receive` that hands the already-read body to the app, then defers to the client."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
