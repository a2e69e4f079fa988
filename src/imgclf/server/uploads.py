"""The images of a v1 predict request: multipart ``file`` fields, a raw image body or JSON base64.

Multipart is parsed as it streams in (python-multipart's parser: linear, with bounded part
headers), so a request with too many files is refused at the first file past the limit. Raw and
JSON bodies are read whole (the body guard caps their size) and parsed off the event loop when big.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from imgclf.server.config import ServerConfig
from imgclf.server.errors import ApiError, bad_request
from imgclf.server.inference import Upload
from imgclf.server.parsing import body_deadline, decode_base64, loads, off_loop, read_body

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

IMAGE_FIELD = "file"
# Text fields a multipart body may carry beside its files (a browser form may add a few).
MAX_TEXT_FIELDS = 32
# Bytes of one text field kept (a label, a version); a longer one is refused.
MAX_TEXT_BYTES = 4096
ACCEPTED = "send multipart/form-data, image/* or application/json"


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def too_many_images(n: int | str, limit: int) -> ApiError:
    return ApiError(413, "too_many_images", f"{n} images in one request; the limit is {limit}")


async def read_uploads(request: Request, config: ServerConfig, pool: Executor) -> list[Upload]:
    media = media_type(request)
    limit = config.max_images_per_request
    if media == "multipart/form-data":
        return await _multipart(request, config)
    if media.startswith("image/") or media == "application/octet-stream":
        body = await read_body(request, config.request_timeout_s)
        if not body:
            raise bad_request("the request body is empty; send the image bytes")
        return [Upload("body", body)]
    if media == "application/json" or media.endswith("+json"):
        body = await read_body(request, config.request_timeout_s)
        return await off_loop(pool, len(body), lambda: json_instances(body, limit))
    if not media:
        raise ApiError(415, "unsupported_media_type", f"no Content-Type: {ACCEPTED}")
    raise ApiError(415, "unsupported_media_type", f"Content-Type {media!r} is not accepted: {ACCEPTED}")


def json_instances(body: bytes, limit: int) -> list[Upload]:
    """``{"instances": [{"b64": "..."}, ...]}`` -> uploads (the TensorFlow Serving / Vertex form)."""
    doc = loads(body, "the body")
    instances = doc.get("instances") if isinstance(doc, dict) else None
    if not isinstance(instances, list) or not instances:
        raise bad_request('JSON body must be {"instances": [{"b64": "<base64 image>"}, ...]}')
    if len(instances) > limit:
        raise too_many_images(len(instances), limit)
    uploads = []
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict) or not isinstance(inst.get("b64"), str):
            raise bad_request(f'instance {i}: expected {{"b64": "<base64 image>"}}')
        uploads.append(Upload(f"instance {i}", decode_base64(inst["b64"], f"instance {i}")))
    return uploads


class FormParts:
    """Collects the parts python-multipart finds: their headers, then their bytes."""

    def __init__(self, file_limit: int) -> None:
        self.file_limit = file_limit
        self.files: list[Upload] = []
        self.texts = 0
        self.header_name = bytearray()
        self.header_value = bytearray()
        self.headers: dict[bytes, bytes] = {}
        self.data: bytearray | None = None  # the current part's bytes, when it is a file named "file"
        self.name = b""
        self.fields: dict[str, str] = {}  # text fields, by name (the first of each)
        self.text: bytearray | None = None
        self.text_name = ""

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": lambda d, s, e: self.header_name.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self.header_value.extend(d[s:e]),
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
        }

    def part_begin(self) -> None:
        self.headers, self.data, self.text = {}, None, None

    def header_end(self) -> None:
        self.headers[bytes(self.header_name).lower()] = bytes(self.header_value)
        self.header_name.clear()
        self.header_value.clear()

    def headers_finished(self) -> None:
        disposition, params = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("latin-1")
        if disposition != b"form-data" or b"filename" not in params:
            self.texts += 1
            if self.texts > MAX_TEXT_FIELDS:
                raise bad_request(f"the multipart body has more than {MAX_TEXT_FIELDS} text fields")
            if name == IMAGE_FIELD:
                raise bad_request(f"multipart field {IMAGE_FIELD!r} #{len(self.files) + 1} is text, not a file upload")
            self.text, self.text_name = bytearray(), name
            return
        if name != IMAGE_FIELD:
            return  # another file field: read past it
        if len(self.files) >= self.file_limit:
            raise too_many_images(f"more than {self.file_limit}", self.file_limit)
        self.name = params.get(b"filename", b"")
        self.data = bytearray()

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.data is not None:
            self.data += data[start:end]
        elif self.text is not None:
            self.text += data[start:end]
            if len(self.text) > MAX_TEXT_BYTES:
                raise bad_request(f"multipart field {self.text_name!r} is longer than {MAX_TEXT_BYTES} bytes")

    def part_end(self) -> None:
        if self.text is not None:
            self.fields.setdefault(self.text_name, self.text.decode("utf-8", "replace"))
            self.text = None
        if self.data is not None:
            label = self.name.decode("utf-8", "replace") or f"file {len(self.files) + 1}"
            self.files.append(Upload(label, bytes(self.data)))
            self.data = None


async def _multipart(request: Request, config: ServerConfig) -> list[Upload]:
    parts = await read_form(request, config, config.max_images_per_request)
    if not parts.files:
        raise bad_request(f"the multipart body has no {IMAGE_FIELD!r} file; send the image(s) as "
                          f"-F {IMAGE_FIELD}=@photo.jpg")
    return parts.files


async def read_form(request: Request, config: ServerConfig, max_files: int) -> FormParts:
    """A multipart body's files named ``file`` (at most ``max_files``) and its text fields."""
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise bad_request("the multipart Content-Type has no boundary")
    parts = FormParts(max_files)
    parser = MultipartParser(boundary, parts.callbacks())
    try:
        async with body_deadline(config.request_timeout_s):
            async for chunk in request.stream():
                parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise bad_request(f"the multipart body is malformed: {exc}") from None
    return parts
