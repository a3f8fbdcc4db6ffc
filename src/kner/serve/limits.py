"""Server settings and the checks every request goes through before it reaches the model.

Limits exist so one client cannot hold the GPU for minutes or exhaust memory:
a request that breaks one gets a 4xx whose JSON names the limit, its value and,
for per-text limits, the index of the offending text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kner.errors import ConfigError


@dataclass(frozen=True)
class ServeSettings:
    max_text_chars: int = 2000  # characters (code points) per text
    max_texts: int = 64  # texts per request
    # Large enough for any request within the two limits above even if every
    # character is sent as a 6-byte \uXXXX escape (64 x 2000 x 6 = 768,000 bytes).
    max_body_bytes: int = 1_048_576
    max_queue_texts: int = 4096  # texts waiting for the engine beyond this: 503, so a flood fails fast
    timeout_s: float | None = 300.0  # a request waiting longer gets 504 (None: wait forever)

    def __post_init__(self):
        for name in ("max_text_chars", "max_texts", "max_body_bytes", "max_queue_texts"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be positive (or None), not {self.timeout_s}")

    def to_dict(self) -> dict:
        return asdict(self)


class RequestError(Exception):
    """A request the server refuses; ``to_dict`` is the JSON body of the 4xx/5xx answer."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        limit: str | None = None,
        max: int | float | None = None,
        index: int | None = None,
        value: int | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.limit = limit
        self.max = max
        self.index = index
        self.value = value

    def to_dict(self) -> dict:
        d: dict = {"error": self.message}
        for key in ("limit", "max", "index", "value"):
            v = getattr(self, key)
            if v is not None:
                d[key] = v
        return d


def check_body_size(size: int, settings: ServeSettings) -> None:
    if size > settings.max_body_bytes:
        raise RequestError(
            413,
            f"request body is larger than max_body_bytes ({settings.max_body_bytes:,} bytes)",
            limit="max_body_bytes",
            max=settings.max_body_bytes,
            value=size,
        )


def texts_from_payload(payload, settings: ServeSettings) -> list[str]:
    """The texts of an ``/extract`` body: ``{"texts": [...]}`` or ``{"text": "..."}``, checked against the limits."""
    if not isinstance(payload, dict):
        raise RequestError(422, 'the body must be a JSON object: {"texts": ["...", ...]} or {"text": "..."}')
    has_texts, has_text = "texts" in payload, "text" in payload
    if has_texts and has_text:
        raise RequestError(422, 'give either "texts" (a list) or "text" (one string), not both')
    if not (has_texts or has_text):
        raise RequestError(422, 'missing "texts": send {"texts": ["...", ...]} or {"text": "..."}')
    if has_text:
        if not isinstance(payload["text"], str):
            raise RequestError(422, f'"text" must be a string, not {_json_type(payload["text"])}')
        texts = [payload["text"]]
    else:
        texts = payload["texts"]
        if not isinstance(texts, list):
            raise RequestError(422, f'"texts" must be a list of strings, not {_json_type(texts)}')
    return check_texts(texts, settings)


def check_texts(texts: list, settings: ServeSettings) -> list[str]:
    if len(texts) > settings.max_texts:
        raise RequestError(
            413,
            f"{len(texts)} texts in one request; max_texts is {settings.max_texts}",
            limit="max_texts",
            max=settings.max_texts,
            value=len(texts),
        )
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise RequestError(422, f"texts[{i}] must be a string, not {_json_type(t)}", index=i)
        if len(t) > settings.max_text_chars:
            raise RequestError(
                413,
                f"texts[{i}] has {len(t):,} characters; max_text_chars is {settings.max_text_chars:,}",
                limit="max_text_chars",
                max=settings.max_text_chars,
                index=i,
                value=len(t),
            )
    return list(texts)


def _json_type(v) -> str:
    if v is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(v), type(v).__name__)
