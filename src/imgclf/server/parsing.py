"""Bounded request parsing: the body within its time limit, JSON, base64 and the V2 binary tensor.

Every function here costs time in proportion to the body (which the body guard bounds) and never
runs one C call for long: JSON's values are counted before ``json.loads`` so a body of a million
tiny values is refused instead of parsed, and base64 is decoded in slices. Bodies larger than
``INLINE_BYTES`` are parsed on a worker thread, so a big request never holds the event loop; the
slicing lets the interpreter hand the GIL back to the loop between slices.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from starlette.requests import ClientDisconnect, Request

from imgclf.server.errors import ApiError, bad_request

T = TypeVar("T")

# Bodies up to this size are parsed on the event loop (a thread hop costs more than the parse).
INLINE_BYTES = 64 * 1024
# A request names at most a few hundred JSON values (64 images and their options); far more is an attack.
MAX_JSON_VALUES = 10_000
# Slices of this many bytes keep each C call (counting, base64) to about a millisecond.
SLICE = 1 << 20
# The deepest JSON nesting a request needs (V2 data may nest its list by the tensor's shape).
MAX_JSON_DEPTH = 32


@contextlib.asynccontextmanager
async def body_deadline(timeout_s: float) -> AsyncIterator[None]:
    """Bounds the time a body may take to arrive: a client that trickles it holds a queue slot."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"the request body did not arrive within {timeout_s:g} s") from None
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client closed the connection before sending the body") from None


async def read_body(request: Request, timeout_s: float) -> bytes:
    """The whole body; the body guard caps its size, this caps its time."""
    chunks = bytearray()
    async with body_deadline(timeout_s):
        async for chunk in request.stream():
            chunks += chunk
    return bytes(chunks)


async def off_loop(pool: Executor, size: int, work: Callable[[], T]) -> T:
    """``work()`` inline for a small body, else on ``pool`` so the event loop keeps serving."""
    if size <= INLINE_BYTES:
        return work()
    return await asyncio.get_running_loop().run_in_executor(pool, work)


def _count_values(data: bytes) -> int:
    """An upper bound on the JSON values in ``data``: separators and openings, counted in slices."""
    n = 0
    for start in range(0, len(data), SLICE):
        part = data[start:start + SLICE]
        n += part.count(b",") + part.count(b"[") + part.count(b"{")
    return n


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, refused past ``limit`` (iterative: no recursion)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if depth > limit:
            break
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def loads(data: bytes, what: str) -> Any:
    """JSON from a request body, or a 400 that says what is wrong with it."""
    if _count_values(data) > MAX_JSON_VALUES:
        raise bad_request(f"{what} holds more than {MAX_JSON_VALUES} JSON values; a request needs a few hundred")
    try:
        doc = json.loads(data)
    except RecursionError:
        raise bad_request(f"{what} is nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"{what} is not valid JSON: {exc}") from None
    except ValueError as exc:  # an integer over Python's 4300-digit conversion limit
        raise bad_request(f"{what} has a number with too many digits ({str(exc).split(':')[0]})") from None
    if _depth(doc, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise bad_request(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
    return doc


def decode_base64(text: str, what: str) -> bytes:
    """Strict base64 (RFC 4648: the alphabet, whole groups of four, padding only at the end), in slices.

    Accepts exactly the strings :data:`imgclf.server.schemas.BASE64_PATTERN` matches (Python's own
    decoders also let excess padding through, as in ``"AAAA="``).
    """
    bad = bad_request(f"{what}: not valid base64")
    if len(text) % 4 or not text.isascii() or text.find("=", 0, max(0, len(text) - 2)) != -1:
        raise bad
    step = SLICE  # a multiple of 4: every slice but the last is whole base64 groups
    out = bytearray()
    try:
        for start in range(0, len(text), step):
            out += binascii.a2b_base64(text[start:start + step], strict_mode=True)
    except (binascii.Error, ValueError):
        raise bad from None
    return bytes(out)


def split_bytes_elements(blob: bytes | memoryview, count: int) -> list[bytes]:
    """A BYTES tensor in binary form: ``count`` elements, each a 4-byte little-endian length, then the bytes.

    Reads no more than ``count`` length prefixes, so a body of millions of empty elements costs
    no more than one of ``count`` elements.
    """
    out: list[bytes] = []
    pos = 0
    for _ in range(count):
        if pos + 4 > len(blob):
            raise bad_request(f"binary BYTES data holds {len(out)} elements; the input's shape says {count}")
        (n,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        if pos + n > len(blob):
            raise bad_request("binary BYTES data is truncated (element longer than the data)")
        out.append(bytes(blob[pos:pos + n]))
        pos += n
    if pos != len(blob):
        raise bad_request(f"binary BYTES data holds more than the {count} elements the input's shape says")
    return out
