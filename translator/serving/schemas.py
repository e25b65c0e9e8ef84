"""The request models (pydantic) and the request limits of the HTTP API.

Validation errors become one message naming the field (``sentences.2: Input should be a
valid string``); the size limits are checked after validation and answered with 413.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: The largest beam a request may ask for: the cost of a search grows with it.
MAX_BEAM = 16


class V1TranslateRequest(BaseModel):
    """``POST /v1/translate``: sentences and optional search settings."""

    model_config = ConfigDict(strict=True, extra="forbid")

    sentences: list[str] = Field(description="the sentences to translate; one result each")
    beam_size: int | None = Field(None, ge=1, le=MAX_BEAM,
                                  description="1 = greedy; default: the server's beam size")
    n_best: int | None = Field(None, ge=1, le=MAX_BEAM,
                               description="hypotheses per sentence (at most beam_size); "
                                           "default: the run's decode.n_best")
    attention: bool = Field(False, description="also return the subword pieces and the "
                                               "attention matrix (target x source)")


class LibreTranslateRequest(BaseModel):
    """``POST /translate``, as LibreTranslate takes it (JSON or form fields). Fields
    LibreTranslate clients send that do not apply here (``api_key``) are ignored."""

    model_config = ConfigDict(extra="ignore")

    q: str | list[str] = Field(description="the text, or a list of texts")
    source: str = Field(description="source language code (or \"auto\")")
    target: str = Field(description="target language code")
    format: str = Field("text", description="only \"text\" is supported")
    alternatives: int = Field(0, ge=0, le=MAX_BEAM - 1,
                              description="up to this many alternative translations "
                                          "(at most beam size - 1)")


class LimitExceeded(ValueError):
    """A request over one of the size limits (HTTP 413); the message names the limit."""


def check_limits(sentences: list[str], max_sentences: int, max_chars: int,
                 field: str = "sentences") -> None:
    """Raise :class:`LimitExceeded` for more than ``max_sentences`` sentences or a
    sentence longer than ``max_chars`` characters."""
    if len(sentences) > max_sentences:
        raise LimitExceeded(f"{field}: {len(sentences)} sentences is over the limit of "
                            f"{max_sentences} per request (--max-sentences)")
    for i, text in enumerate(sentences):
        if len(text) > max_chars:
            where = f"{field}.{i}" if field == "sentences" or len(sentences) > 1 else field
            raise LimitExceeded(f"{where}: {len(text):,} characters is over the limit of "
                                f"{max_chars:,} per sentence (--max-chars)")


def describe(exc: ValidationError) -> tuple[str, bool]:
    """One line naming each bad field, and whether the body was not JSON at all."""
    parts, not_json = [], False
    for error in exc.errors(include_url=False):
        if error["type"] == "json_invalid":
            not_json = True
            parts.append(f"invalid JSON: {error.get('ctx', {}).get('error', error['msg'])}")
            continue
        msg = "field required" if error["type"] == "missing" else error["msg"]
        path = list(error["loc"])
        if len(path) > 1 and path[1] in ("str", "list[str]"):  # a member of `str | list[str]`
            path.pop(1)
            msg = "should be a string or a list of strings"
        loc = ".".join(str(p) for p in path) or "body"
        if f"{loc}: {msg}" in parts:
            continue
        if error["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts), not_json
