"""The FastAPI application around an extractor.

``create_app(extractor)`` takes a ``kner.inference.Extractor`` (whose engine
decodes the texts of concurrent requests together, :mod:`kner.serve.scheduler`),
or anything callable as ``extractor(list_of_texts)`` returning one list of entities
per text (a stand-in in tests; called one request at a time); entities may be
:class:`kner.data.example.Entity` objects or dicts with ``start``, ``end``, ``label``
(and ``text``).

Endpoints: ``POST /extract`` (JSON), ``GET /health``, ``GET|POST /`` (demo page
drawn with displaCy), ``GET|POST /render`` (the displaCy HTML alone).
"""

# No `from __future__ import annotations`: FastAPI resolves the routes' `Request` annotations
# at definition time, and `Request` is imported inside the route builders (fastapi stays optional).

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs

from kner.data.schemes import load_scheme
from kner.serve import render
from kner.serve.limits import RequestError, ServeSettings, check_body_size, check_texts, texts_from_payload
from kner.serve.scheduler import ExtractionError, QueueFull, Scheduler
from kner.textio import text_problem

log = logging.getLogger(__name__)

_EXTRACT_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["texts"],
                        "properties": {"texts": {"type": "array", "items": {"type": "string"}}},
                    },
                    {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
                ]
            },
            "example": {"texts": ["이순신은 조선 중기의 무신이다."]},
        }
    },
}


def entity_dict(e: Any, text: str) -> dict[str, Any]:
    d: dict[str, Any] = (
        e if isinstance(e, dict) else {k: getattr(e, k, None) for k in ("start", "end", "label", "text")}
    )
    start, end = int(d["start"]), int(d["end"])
    surface = d.get("text")
    return {
        "start": start,
        "end": end,
        "label": str(d["label"]),
        "text": str(surface) if surface is not None else text[start:end],
    }


def create_app(
    extractor: Callable[[list[str]], Sequence],
    settings: ServeSettings | None = None,
    *,
    model_name: str = "model",
    scheme=None,
):
    """A FastAPI app serving ``extractor``; the scheduler's thread starts and stops with the app's lifespan."""
    from fastapi import FastAPI  # noqa: PLC0415  lazy: fastapi is optional (kner[serve])

    service = Service(extractor, settings or ServeSettings(), model_name, scheme)

    @asynccontextmanager
    async def lifespan(_app):
        await service.scheduler.start()
        try:
            yield
        finally:
            await service.scheduler.stop()

    app = FastAPI(title="kner", summary="Korean named-entity extraction", lifespan=lifespan)
    app.state.service = service
    app.state.scheduler = service.scheduler
    app.state.settings = service.settings
    app.state.counters = service.counters
    _add_error_handlers(app, service)
    _add_api_routes(app, service)
    _add_demo_routes(app, service)
    return app


class Service:
    """What the routes share: the scheduler in front of the extractor, the limits, the counters."""

    def __init__(self, extractor, settings: ServeSettings, model_name: str, scheme=None):
        if scheme is None:
            scheme = getattr(extractor, "scheme", None)
        if isinstance(scheme, str):
            scheme = load_scheme(scheme)
        self.settings, self.model_name, self.scheme = settings, model_name, scheme
        self.labels = list(scheme.names) if scheme is not None else []
        self.colors = render.label_colors(self.labels)
        self.scheduler = Scheduler(extractor, max_queue_texts=settings.max_queue_texts)
        self.counters = {"requests_served": 0, "texts_served": 0, "requests_rejected": 0, "requests_failed": 0}
        self.started = time.time()

    def count_error(self, err: RequestError) -> None:
        self.counters["requests_failed" if err.status >= 500 else "requests_rejected"] += 1

    # -- limits: the body is refused before it is read whole, the texts before they are queued ----------

    async def read_body(self, request) -> bytes:
        # Refuse on the declared size before reading, and count while reading
        # (chunked uploads declare none).
        declared = request.headers.get("content-length", "")
        if declared.isdigit():
            check_body_size(int(declared), self.settings)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            check_body_size(size, self.settings)
            chunks.append(chunk)
        return b"".join(chunks)

    async def form_or_json_text(self, request) -> str:
        """The demo page's text: a form field, or ``{"text": ...}`` / ``{"texts": [...]}`` as JSON."""
        body = await self.read_body(request)
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            payload = parse_json(body)
            if isinstance(payload, dict) and isinstance(payload.get("texts"), list):
                return "\n".join(str(t) for t in payload["texts"])
            if isinstance(payload, dict) and isinstance(payload.get("text"), str):
                return payload["text"]
            raise RequestError(422, 'send {"text": "..."} (or {"texts": [...]})')
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError as err:
            raise RequestError(400, f"the form is not UTF-8: {err}") from None
        return form.get("text", [""])[0]

    # -- extraction -------------------------------------------------------------------------------------

    async def extract(self, texts: list[str]) -> list[dict]:
        """``{"text", "entities"}`` per text, through the scheduler; every failure is a RequestError."""
        # A text no tokenizer can take (a lone surrogate, sent as a JSON escape) fails the whole
        # request with 422 naming it, before it is queued.
        for i, t in enumerate(texts):
            why = text_problem(t)
            if why is not None:
                raise RequestError(422, f"texts[{i}] cannot be processed: {why}", index=i)
        # Blank texts have no entities (Extractor skips them too): they never wait in the queue.
        todo = [i for i, t in enumerate(texts) if t.strip()]
        found: list[list[dict]] = [[] for _ in texts]
        if todo:
            out = await self._submit([texts[i] for i in todo])
            try:
                for i, ents in zip(todo, out):
                    found[i] = [entity_dict(e, texts[i]) for e in ents]
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                raise RequestError(
                    500, f"extraction failed: the extractor returned malformed entities ({type(err).__name__}: {err})"
                ) from None
        self.counters["requests_served"] += 1
        self.counters["texts_served"] += len(texts)
        return [{"text": t, "entities": e} for t, e in zip(texts, found)]

    async def _submit(self, texts: list[str]):
        settings = self.settings
        try:
            return await asyncio.wait_for(self.scheduler.submit(texts), settings.timeout_s)
        except QueueFull as err:
            raise RequestError(
                503, f"server busy: {err}", limit="max_queue_texts", max=settings.max_queue_texts
            ) from None
        except asyncio.TimeoutError:
            raise RequestError(
                504, f"no result within timeout_s ({settings.timeout_s:g} s)", limit="timeout_s", max=settings.timeout_s
            ) from None
        except ExtractionError as err:
            raise RequestError(500, f"extraction failed: {err}") from None

    def health(self) -> dict:
        b = self.scheduler
        return {
            "status": "ok",
            "model": self.model_name,
            "scheme": getattr(self.scheme, "name", None),
            "labels": self.labels,
            "queue_depth": b.queued_requests,
            "queued_texts": b.queued_texts,
            "running_texts": b.running_texts,
            "busy": b.busy,
            **self.counters,
            "batching": b.stats_dict(),
            "limits": self.settings.to_dict(),
            "uptime_s": round(time.time() - self.started, 1),
        }

    # -- demo page --------------------------------------------------------------------------------------

    async def rendered(self, text: str) -> str:
        """displaCy HTML for every non-blank line of ``text`` (the page takes one text per line)."""
        from starlette.concurrency import run_in_threadpool  # noqa: PLC0415  lazy: comes with fastapi (optional)

        t0 = time.perf_counter()
        lines = check_texts([ln for ln in text.splitlines() if ln.strip()], self.settings)
        results = await self.extract(lines)
        # The first render imports spaCy (about 2 s): keep it off the event loop.
        return await run_in_threadpool(render.results_html, results, self.colors, (time.perf_counter() - t0) * 1000)

    async def page(self, text: str) -> tuple[str, int]:
        """The demo page (HTML, status) with ``text`` filled in and, if not blank, its entities."""
        body, status = "", 200
        if text.strip():
            try:
                body = await self.rendered(text)
            except RequestError as err:
                self.count_error(err)
                body, status = render.error_html(err.message), err.status
        s = self.settings
        return render.page(self.model_name, self.labels, s.max_texts, s.max_text_chars, text, body), status


def parse_json(body: bytes):
    if not body.strip():
        raise RequestError(400, 'empty body: send {"texts": ["...", ...]} or {"text": "..."}')
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(400, f"the body is not valid JSON: {err}") from None


def _add_error_handlers(app, service: Service) -> None:
    from fastapi.responses import JSONResponse  # noqa: PLC0415  lazy: fastapi is optional (kner[serve])

    @app.exception_handler(RequestError)
    async def _request_error(_request, exc: RequestError):
        service.count_error(exc)
        return JSONResponse(exc.to_dict(), status_code=exc.status)

    @app.exception_handler(Exception)
    async def _unexpected(_request, exc: Exception):
        service.counters["requests_failed"] += 1
        log.exception("unexpected error")
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)


def _add_api_routes(app, service: Service) -> None:
    from fastapi import Request  # noqa: PLC0415  lazy: fastapi is optional (kner[serve])

    @app.post("/extract", openapi_extra={"requestBody": _EXTRACT_BODY})
    async def extract(request: Request):
        """Entities of each text: ``{"texts": [...]}`` or ``{"text": "..."}``."""
        t0 = time.perf_counter()
        texts = texts_from_payload(parse_json(await service.read_body(request)), service.settings)
        results = await service.extract(texts)
        return {
            "results": results,
            "model": service.model_name,
            "elapsed_ms": round((time.perf_counter() - t0) * 1000, 1),
        }

    @app.get("/health")
    async def health():
        return service.health()


def _add_demo_routes(app, service: Service) -> None:
    from fastapi import Request  # noqa: PLC0415  lazy: fastapi is optional (kner[serve])
    from fastapi.responses import HTMLResponse  # noqa: PLC0415  lazy: fastapi is optional (kner[serve])

    async def page_response(text: str) -> HTMLResponse:
        html, status = await service.page(text)
        return HTMLResponse(html, status_code=status)

    @app.get("/", response_class=HTMLResponse)
    async def demo(text: str = ""):
        """The demo page; ``?text=`` fills it in and shows the entities."""
        return await page_response(text)

    @app.post("/", response_class=HTMLResponse)
    async def demo_form(request: Request):
        return await page_response(await service.form_or_json_text(request))

    @app.get("/render", response_class=HTMLResponse)
    async def render_get(text: str = ""):
        """displaCy HTML of the entities in ``text`` (one text per line)."""
        return HTMLResponse(await service.rendered(text))

    @app.post("/render", response_class=HTMLResponse)
    async def render_post(request: Request):
        return HTMLResponse(await service.rendered(await service.form_or_json_text(request)))
