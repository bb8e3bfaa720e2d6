"""Capture helpers: a decorator for predict functions, and ASGI / WSGI middleware.

Each records the inputs, the answer, the latency and any exception, and hands them to a
Mirror. None of them changes what the wrapped code sees, returns or raises: an exception from
the app is mirrored as the live error and re-raised unchanged.
"""

from __future__ import annotations

import functools
import inspect
import io
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import orjson

from producers.mirror import AsyncMirror, Mirror
from schemas.exceptions import ConfigError

Extractor = Callable[[Any, Any], tuple[Mapping[str, Any], Any]]
"""(request JSON, response JSON) -> (inputs, output)."""

WHOLE_RESPONSE = None
"""``output_field=WHOLE_RESPONSE`` (None): the JSON response itself is the model's answer."""
_UNSET: Any = object()


def _where_is_the_answer(name: str, output_field: Any, extract: Extractor | None) -> None:
    """A middleware must be told where the model's answer is in a response: guessing wrong
    mirrors events that every worker then rejects (a response like {"score": 0.9} is not an
    answer, its "score" field is)."""
    if output_field is _UNSET and extract is None:
        raise ConfigError(name, "say where the model's answer is in the JSON response: "
                                "output_field='score' (the response field that holds it), "
                                "output_field=None (the whole response is the answer: a "
                                "number, a list, or {'kind': ..., 'value': ...}), or "
                                "extract=fn(request, response) -> (inputs, output)")


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def capture(
    mirror: Mirror | AsyncMirror,
    *,
    request_id: Callable[..., str] | None = None,
    inputs: Callable[..., Mapping[str, Any]] | None = None,
    output: Callable[[Any], Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a predict function (sync or async) so every call is mirrored.

    ``request_id(*args, **kwargs)`` names the request (default: a ``request_id`` keyword
    argument, else a random id); ``inputs(*args, **kwargs)`` gives the inputs (default: the
    single mapping argument, else the bound arguments by name); ``output(result)`` maps the
    result (default: as is).
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)

        def record(args: tuple, kwargs: dict, t0: float, result: Any = None,
                   exc: BaseException | None = None) -> None:
            latency_ms = (time.perf_counter() - t0) * 1000
            try:
                rid = request_id(*args, **kwargs) if request_id else (
                    kwargs.get("request_id") or uuid.uuid4().hex)
                ins = inputs(*args, **kwargs) if inputs else _default_inputs(sig, args, kwargs)
                out = None if exc is not None else (output(result) if output else result)
            except Exception as err:
                _count_capture_failure(mirror, err)
                return
            mirror.publish(str(rid), ins, out, latency_ms=latency_ms,
                           error=_error(exc) if exc is not None else None)

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    record(args, kwargs, t0, exc=exc)
                    raise
                record(args, kwargs, t0, result)
                return result

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                record(args, kwargs, t0, exc=exc)
                raise
            record(args, kwargs, t0, result)
            return result

        return wrapper

    return decorate


def _default_inputs(sig: inspect.Signature, args: tuple, kwargs: dict) -> Mapping[str, Any]:
    bound = sig.bind(*args, **kwargs)
    values = {k: v for k, v in bound.arguments.items() if k not in ("self", "request_id")}
    if len(values) == 1:
        only = next(iter(values.values()))
        if isinstance(only, Mapping):
            return only
    return values


def _count_capture_failure(mirror: Mirror | AsyncMirror, err: Exception) -> None:
    _mirror_of(mirror).count_failure("internal", f"capture: {_error(err)}")


def _json(body: bytes) -> Any:
    return orjson.loads(body) if body else None


def _default_extract(output_field: str | None) -> Extractor:
    def extract(request: Any, response: Any) -> tuple[Mapping[str, Any], Any]:
        ins = request if isinstance(request, Mapping) else {"body": request}
        if output_field is not None and isinstance(response, Mapping):
            return ins, response.get(output_field)
        return ins, response

    return extract


class _HttpCapture:
    """What both middlewares share: which requests to mirror and how to turn them into events."""

    def __init__(self, mirror: Mirror | AsyncMirror, paths: Iterable[str] | None,
                 methods: Iterable[str], request_id_header: str, extract: Extractor | None,
                 output_field: str | None, max_body_bytes: int) -> None:
        self.mirror = mirror
        self.paths = frozenset(paths) if paths is not None else None
        self.methods = frozenset(m.upper() for m in methods)
        self.request_id_header = request_id_header.lower()
        self.extract = extract or _default_extract(output_field)
        # A text model's whole response is its answer as sent: never parsed as JSON (an
        # answer "42" or "" is a text like any other).
        self.raw_text = (extract is None and output_field is None
                         and _mirror_of(mirror).config.output_kind == "text")
        self.max_body_bytes = max_body_bytes

    def _response(self, body: bytes) -> Any:
        if self.raw_text:
            return body.decode("utf-8", "replace")
        try:
            return _json(body)
        except orjson.JSONDecodeError:
            # A text model's service may answer plain text: mirrored as the text it is.
            if _mirror_of(self.mirror).config.output_kind == "text":
                return body.decode("utf-8", "replace")
            raise

    def wanted(self, method: str, path: str) -> bool:
        return method.upper() in self.methods and (self.paths is None or path in self.paths)

    def record(self, rid: str | None, req: bytes, resp: bytes, status: int | None,
               t0: float, exc: BaseException | None = None) -> None:
        latency_ms = (time.perf_counter() - t0) * 1000
        try:
            request_json = _json(req)
            response_json = (self._response(resp) if exc is None and status and status < 400
                             else None)
            ins, out = self.extract(request_json, response_json)
        except Exception as err:
            _count_capture_failure(self.mirror, err)
            return
        error = _error(exc) if exc is not None else (
            f"HTTP {status}" if status is None or status >= 400 else None)
        self.mirror.publish(rid or uuid.uuid4().hex, ins, out, latency_ms=latency_ms,
                            error=error)


class MirrorASGIMiddleware:
    """ASGI middleware (Starlette, FastAPI): mirrors JSON requests and the JSON answered.

    ``output_field`` names the response field that holds the model's answer (None: the whole
    response is the answer), or ``extract`` maps (request, response) to (inputs, output);
    one of them is required.

    Bodies are teed as they pass, never re-read; a body larger than ``max_body_bytes`` is not
    mirrored (counted as dropped "too_large").
    """

    def __init__(self, app: Any, mirror: Mirror | AsyncMirror, *,
                 paths: Iterable[str] | None = None, methods: Iterable[str] = ("POST",),
                 request_id_header: str = "x-request-id", extract: Extractor | None = None,
                 output_field: str | None = _UNSET, max_body_bytes: int = 256 * 1024) -> None:
        _where_is_the_answer("MirrorASGIMiddleware", output_field, extract)
        self.app = app
        self.capture = _HttpCapture(mirror, paths, methods, request_id_header, extract,
                                    output_field, max_body_bytes)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        cap = self.capture
        if scope["type"] != "http" or not cap.wanted(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        header = cap.request_id_header.encode()
        rid = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == header),
                   None)
        req, resp = bytearray(), bytearray()
        status: list[int] = []
        oversize = [False]

        def keep(buf: bytearray, chunk: bytes) -> None:
            if len(buf) + len(chunk) > cap.max_body_bytes:
                oversize[0] = True
            elif not oversize[0]:
                buf += chunk

        async def tee_receive() -> dict:
            msg = await receive()
            if msg["type"] == "http.request":
                keep(req, msg.get("body", b""))
            return msg

        async def tee_send(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                status.append(msg["status"])
            elif msg["type"] == "http.response.body":
                keep(resp, msg.get("body", b""))
            await send(msg)

        try:
            await self.app(scope, tee_receive, tee_send)
        except BaseException as exc:
            cap.record(rid, bytes(req), b"", status[0] if status else None, t0, exc)
            raise
        if oversize[0]:
            _mirror_of(cap.mirror).count_failure("too_large", "HTTP body over max_body_bytes")
            return
        cap.record(rid, bytes(req), bytes(resp), status[0] if status else None, t0)


class MirrorWSGIMiddleware:
    """WSGI middleware (Flask): mirrors JSON requests and the JSON answered. ``output_field``
    or ``extract`` as for MirrorASGIMiddleware."""

    def __init__(self, app: Callable, mirror: Mirror | AsyncMirror, *,
                 paths: Iterable[str] | None = None, methods: Iterable[str] = ("POST",),
                 request_id_header: str = "x-request-id", extract: Extractor | None = None,
                 output_field: str | None = _UNSET, max_body_bytes: int = 256 * 1024) -> None:
        _where_is_the_answer("MirrorWSGIMiddleware", output_field, extract)
        self.app = app
        self.capture = _HttpCapture(mirror, paths, methods, request_id_header, extract,
                                    output_field, max_body_bytes)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        cap = self.capture
        if not cap.wanted(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")):
            return self.app(environ, start_response)
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > cap.max_body_bytes:
            _mirror_of(cap.mirror).count_failure("too_large", "HTTP body over max_body_bytes")
            return self.app(environ, start_response)
        t0 = time.perf_counter()
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)  # the app reads the same bytes
        key = "HTTP_" + cap.request_id_header.upper().replace("-", "_")
        rid = environ.get(key)
        status: list[int] = []

        def tee_start_response(st: str, headers: list, exc_info: Any = None) -> Callable:
            status.append(int(st.split(" ", 1)[0]))
            return start_response(st, headers, exc_info) if exc_info else start_response(
                st, headers)

        try:
            result = self.app(environ, tee_start_response)
        except BaseException as exc:
            cap.record(rid, body, b"", None, t0, exc)
            raise
        return _TeeBody(result, cap, rid, body, status, t0)


class _TeeBody:
    """Passes the response through; mirrors the request once the body is exhausted or closed
    (whichever comes first: some servers and test clients close late, or only on demand)."""

    def __init__(self, inner: Iterable[bytes], cap: _HttpCapture, rid: str | None,
                 body: bytes, status: list[int], t0: float) -> None:
        self.inner, self.cap, self.rid, self.body, self.status, self.t0 = (
            inner, cap, rid, body, status, t0)
        self.chunks: list[bytes] = []
        self.size = 0
        self.done = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            if self.size <= self.cap.max_body_bytes:
                self.chunks.append(chunk)
                self.size += len(chunk)
            yield chunk
        self._finish()

    def close(self) -> None:
        try:
            if hasattr(self.inner, "close"):
                self.inner.close()
        finally:
            self._finish()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        if self.size > self.cap.max_body_bytes:
            _mirror_of(self.cap.mirror).count_failure("too_large", "HTTP body over max_body_bytes")
        else:
            self.cap.record(self.rid, self.body, b"".join(self.chunks),
                            self.status[0] if self.status else None, self.t0)


def _mirror_of(mirror: Mirror | AsyncMirror) -> Mirror:
    return mirror._mirror if isinstance(mirror, AsyncMirror) else mirror
