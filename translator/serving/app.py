"""The FastAPI app: ``create_app(translator, settings)``, one app per call, no globals.

Endpoints: ``POST /translate`` and ``GET /languages`` (LibreTranslate's API),
``POST /v1/translate`` (text, score, n-best, attention), ``GET /v1/model``,
``GET /v1/stats`` (the micro-batcher's counters), ``GET /health``, the demo page at ``/``
and the OpenAPI docs at ``/docs``. Decoding runs on the micro-batcher's worker thread,
never on the event loop. Every error is JSON: ``{"error": "one line"}``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Hashable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from translator.serving.batching import BatcherClosed, MicroBatcher
from translator.serving.schemas import (
    LibreTranslateRequest,
    LimitExceeded,
    V1TranslateRequest,
    check_limits,
    describe,
)

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1024 * 1024  # 1 MB
#: A body over the limit is still read, and dropped, up to this many times the limit, so
#: that the client gets the 413 instead of a connection reset in the middle of its upload.
DRAIN_FACTOR = 16

#: Names for the language codes of the configs; any other code is named by itself.
LANGUAGE_NAMES = {
    "ar": "Arabic", "cs": "Czech", "de": "German", "en": "English", "es": "Spanish",
    "fr": "French", "it": "Italian", "ja": "Japanese", "ko": "Korean", "nl": "Dutch",
    "pt": "Portuguese", "ru": "Russian", "vi": "Vietnamese", "zh": "Chinese",
}


@dataclass(frozen=True)
class ServeSettings:
    """How the app serves a model: its language pair, the decode defaults and the limits."""

    src_lang: str
    tgt_lang: str
    beam_size: int | None = None  # None: the run's decode.beam_size
    max_batch: int = 64
    batch_wait_ms: float = 5.0
    max_sentences: int = 256
    max_chars: int = 2000
    max_body_bytes: int = MAX_BODY_BYTES
    warm_up: bool = True  # compile the searches the demo and the API use before serving
    model_info: dict[str, Any] = field(default_factory=dict)  # run dir, weights, test scores


def saved_test_scores(run_dir: str | Path, dtype: str = "float32") -> dict[str, Any] | None:
    """The newest ``translator evaluate`` record of the test split saved as JSON in
    ``RUN_DIR/eval/`` or ``RUN_DIR/results/`` (``translator evaluate RUN --split test``
    saves ``eval/test.json``), or None. Ensemble records (``translator evaluate RUN
    --ensemble ...`` writes ``eval/test.ensemble.json``) are not the served model's: skipped.
    So are records of another ``decode.dtype`` than ``dtype`` (a record without the key is
    from before it existed: float32)."""
    found = []
    for folder in ("eval", "results"):
        for path in Path(run_dir, folder).glob("*.json"):
            try:
                record = json.loads(path.read_text(encoding="utf-8").strip().splitlines()[-1])
            except (OSError, ValueError, IndexError):
                continue
            if (isinstance(record, dict) and record.get("split") == "test" and "bleu" in record
                    and "ensemble" not in record  # an ensemble's score is not this model's
                    and record.get("decode_dtype", "float32") == dtype):
                found.append((path.stat().st_mtime, path, record))
    if not found:
        return None
    _, path, record = max(found, key=lambda x: x[0])
    keys = ("bleu", "bleu_signature", "chrf", "sentences", "beam_size", "weights",
            "decode_dtype")
    return {**{k: record[k] for k in keys if k in record}, "file": str(path)}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 before the app reads
    it, whether it announces its length or comes chunked."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = _error(413, f"request body over the limit of {self.max_bytes:,} bytes")
        length = dict(scope["headers"]).get(b"content-length")
        over = length is not None and length.isdigit() and int(length) > self.max_bytes
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            over = over or size > self.max_bytes
            if not over:
                chunks.append(chunk)
            elif size > DRAIN_FACTOR * self.max_bytes:
                break  # answer now, and leave the rest unread
            if not message.get("more_body", False):
                break
        if over:  # read (and dropped) first, so that the client is not reset mid-upload
            return await too_big(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class BadRequest(Exception):
    """Answered as a JSON error with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def create_app(translator, settings: ServeSettings) -> FastAPI:
    """An app serving ``translator`` (a :class:`translator.translator.Translator`).
    Its micro-batcher's worker thread starts with the app's lifespan and stops, after
    answering every queued request, when the server shuts down."""
    beam = settings.beam_size or translator.decode.beam_size
    default_n_best = translator.settings(beam)[2]
    alpha = translator.decode.length_penalty
    pair = f"{settings.src_lang}-{settings.tgt_lang}"
    started = time.time()

    def decode(key: Hashable, texts: list[str]) -> list[dict]:
        beam_size, n_best, attention = key
        results = translator.translate(texts, beam_size=beam_size, n_best=n_best,
                                       batch_size=max(len(texts), 1),
                                       return_attention=attention)
        return [_result_json(r, attention) for r in results]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = MicroBatcher(decode, settings.max_batch, settings.batch_wait_ms / 1000.0,
                               name="translator-decode")
        app.state.batcher = batcher
        if settings.warm_up:  # trace the searches now, not on the first requests
            seconds = time.perf_counter()
            await batcher.run((beam, default_n_best, False), ["warm up"])
            if beam > 1:
                await batcher.run((beam, beam, True), ["warm up"])
            log.info("searches compiled in %.1f s", time.perf_counter() - seconds)
        try:
            yield
        finally:
            log.info("answering %d queued requests before stopping", batcher.pending)
            batcher.close()

    app = FastAPI(title="translator", version=_version(), lifespan=lifespan,
                  description=f"Neural machine translation {pair}: LibreTranslate's "
                              "`/translate` API and `/v1/translate` with n-best and attention.")
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.state.settings = settings

    async def run(texts: list[str], beam_size: int, n_best: int, attention: bool) -> list[dict]:
        if not texts:
            return []
        try:
            return await app.state.batcher.run((beam_size, n_best, attention), texts)
        except BatcherClosed:
            raise BadRequest(503, "the server is shutting down") from None
        except Exception as exc:  # the batch failed; the server goes on
            raise BadRequest(500, f"translation failed: {type(exc).__name__}: {exc}") from None

    # ------------------------------------------------------------------ errors

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest):
        return _error(exc.status, str(exc))

    @app.exception_handler(LimitExceeded)
    async def over_limit(request: Request, exc: LimitExceeded):
        return _error(413, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return _error(422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                     for e in exc.errors()))

    # ------------------------------------------------------------------ LibreTranslate

    @app.post("/translate", summary="Translate (LibreTranslate-compatible)", openapi_extra={
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": LibreTranslateRequest.model_json_schema()},
            "application/x-www-form-urlencoded": {
                "schema": LibreTranslateRequest.model_json_schema()}}}})
    async def libre_translate(request: Request):
        """`q` (a text or a list), `source`, `target`, optional `alternatives`; JSON or
        form fields. Returns `{"translatedText": ..., "alternatives"?: ...}`."""
        data = await _json_or_form(request)
        try:
            req = LibreTranslateRequest.model_validate(data)
        except ValidationError as exc:
            raise BadRequest(400, describe(exc)[0]) from None
        if req.source not in (settings.src_lang, "auto") or req.target != settings.tgt_lang:
            raise BadRequest(400, f"this server translates {settings.src_lang} to "
                                  f"{settings.tgt_lang} only (source \"{settings.src_lang}\", "
                                  f"target \"{settings.tgt_lang}\"); got source "
                                  f"\"{req.source}\", target \"{req.target}\"")
        if req.format != "text":
            raise BadRequest(400, f"format: only \"text\" is supported, got \"{req.format}\"")
        texts = [req.q] if isinstance(req.q, str) else req.q
        check_limits(texts, settings.max_sentences, settings.max_chars, field="q")
        n_best = min(1 + req.alternatives, beam)
        results = await run(texts, beam, n_best, False)
        body: dict[str, Any] = {"translatedText": [r["text"] for r in results]}
        if req.alternatives:
            body["alternatives"] = [[h["text"] for h in r["n_best"][1:1 + req.alternatives]]
                                    for r in results]
        if isinstance(req.q, str):
            body = {k: v[0] for k, v in body.items()}
        return body

    @app.get("/languages", summary="Languages (LibreTranslate-compatible)")
    async def languages():
        return [{"code": settings.src_lang, "name": _name(settings.src_lang),
                 "targets": [settings.tgt_lang]},
                {"code": settings.tgt_lang, "name": _name(settings.tgt_lang), "targets": []}]

    # ------------------------------------------------------------------ ours

    @app.post("/v1/translate", summary="Translate with scores, n-best and attention",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": V1TranslateRequest.model_json_schema()}}}})
    async def v1_translate(request: Request):
        """One result per sentence: `text`, `score`, `n_best`, and with `attention: true`
        `source_pieces`, `target_pieces` and `attention` (one row per target piece)."""
        try:
            req = V1TranslateRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            message, not_json = describe(exc)
            raise BadRequest(400 if not_json else 422, message) from None
        check_limits(req.sentences, settings.max_sentences, settings.max_chars)
        beam_size = req.beam_size or beam
        if req.n_best is not None and req.n_best > beam_size:
            raise BadRequest(422, f"n_best: {req.n_best} is larger than the beam size "
                                  f"{beam_size}; the n-best list comes from the beam")
        n_best = req.n_best or translator.settings(beam_size)[2]
        results = await run(req.sentences, beam_size, n_best, req.attention)
        return {"translations": results, "beam_size": beam_size, "n_best": n_best,
                "length_penalty": alpha}

    @app.get("/v1/model", summary="The model and how it is served")
    async def model():
        d = translator.decode
        return {
            "source": settings.src_lang, "target": settings.tgt_lang, "pair": pair,
            "parameters": translator.model.count_params(),
            "decode": {"beam_size": beam, "length_penalty": alpha, "n_best": default_n_best,
                       "max_ratio": d.max_ratio, "max_extra": d.max_extra},
            "train_max_len": translator.max_len,
            "serving": {k: v for k, v in asdict(settings).items()
                        if k not in ("src_lang", "tgt_lang", "model_info", "warm_up")},
            **settings.model_info,
        }

    @app.get("/v1/stats", summary="Micro-batching counters")
    async def stats():
        s = app.state.batcher.stats()
        return {"requests": s.jobs, "sentences": s.items, "batches": s.batches,
                "failed_batches": s.failed_batches, "cancelled_requests": s.cancelled_jobs,
                "pending_requests": app.state.batcher.pending,
                "batch_sizes": {str(k): v for k, v in sorted(s.sizes.items())},
                "max_batch_size": max(s.sizes, default=0),
                "mean_batch_size": round(s.items / s.batches, 2) if s.batches else 0.0,
                "decode_seconds": round(s.busy_seconds, 3),
                "uptime_seconds": round(time.time() - started, 1)}

    @app.get("/health", summary="Liveness")
    async def health():
        return {"status": "ok"}

    # ------------------------------------------------------------------ the demo page

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _json_or_form(request: Request) -> Any:
    """The body as LibreTranslate reads it: form fields, or else JSON."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.form()
        return {k: (v[0] if len(v) == 1 else v)
                for k in form.keys() for v in [form.getlist(k)]}
    body = await request.body()
    try:
        return json.loads(body)
    except ValueError as exc:
        raise BadRequest(400, f"invalid JSON: {exc}") from None


def _result_json(r, attention: bool) -> dict:
    """A :class:`~translator.translator.Translation` as JSON (scores to 4 decimals)."""
    out = {"text": r.text, "score": round(r.score, 4),
           "n_best": [{"text": h.text, "score": round(h.score, 4)} for h in r.n_best],
           "source_too_long": r.source_too_long}
    if attention:
        has = r.attention is not None
        out["source_pieces"] = list(r.source_pieces) if has else []
        out["target_pieces"] = r.n_best[0].pieces + ["</s>"] if has else []
        out["attention"] = [[round(float(w), 4) for w in row] for row in r.attention] if has else []
    return out


def _name(code: str) -> str:
    return LANGUAGE_NAMES.get(code, code)


def _version() -> str:
    from translator import __version__

    return __version__
