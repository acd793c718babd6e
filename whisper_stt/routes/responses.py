"""What the routes answer, for the OpenAPI document: body models and the error responses of each route,
and :func:`install_openapi`, which corrects what FastAPI cannot infer (the 422 bodies, required form
fields, the keys as security schemes).

Only documentation: the routes build their bodies themselves (no ``response_model`` filtering), and
``tests/test_openapi.py`` checks with schemathesis that every answer matches what is written here.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, Field


# --- errors ------------------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    """Every error outside /v1, validation errors included."""

    detail: str = Field(description="What went wrong, in words a person can act on.")


class OpenAIErrorObject(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, permission_error, "
                                  "rate_limit_error or server_error")
    param: Optional[str] = Field(description="The request field at fault, if one is.")
    code: Optional[str] = Field(description="A machine-readable reason (invalid_api_key, file_too_large ...)")


class OpenAIError(BaseModel):
    """Every error on /v1, in OpenAI's shape."""

    error: OpenAIErrorObject


def _errors(model: type, described: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": model, "description": text} for status, text in described.items()}


_API_KEY = {
    401: "No API key was sent (X-API-Key or Authorization: Bearer).",
    403: "The API key is not known (revoked or never issued).",
    429: "A per-key limit is used up (requests per minute or audio minutes per day); see Retry-After.",
    503: "The state backend (Redis) is unavailable and the key was not verified recently.",
}
_UPLOAD = {
    400: "The request cannot be used: an empty file, audio that cannot be decoded, an unknown language, "
         "malformed JSON or base64.",
    413: "The upload is over the size limit (decided while it arrives) or its audio is too long.",
}

API_KEY_ERRORS = _errors(ErrorDetail, _API_KEY)
ADMIN_ERRORS = _errors(ErrorDetail, {
    400: "The body is not a JSON object of known limits (PATCH).",
    403: "The X-Admin-Key header is missing or wrong.",
    422: "A parameter is invalid (e.g. a name over 100 characters).",
    503: "The state backend (Redis) is unavailable; nothing was changed.",
})
UPLOAD_ERRORS = _errors(ErrorDetail, {
    **_UPLOAD,
    422: "A required form field is missing or invalid.",
})
BASE64_ERRORS = _errors(ErrorDetail, _UPLOAD)
NOT_FOUND = _errors(ErrorDetail, {404: "No API key with that value or id."})
# /metrics asks for a key only when the server runs with --metrics-require-key.
METRICS_ERRORS = _errors(ErrorDetail, {
    401: "--metrics-require-key is on and no API key was sent.",
    403: "--metrics-require-key is on and the API key is not known.",
})

OPENAI_AUTH_ERRORS = _errors(OpenAIError, {
    401: "The API key is missing or not known (as OpenAI answers).",
    429: "A per-key limit is used up (rate_limit_exceeded / insufficient_quota); see Retry-After.",
    503: "The state backend (Redis) is unavailable and the key was not verified recently.",
})
OPENAI_AUDIO_ERRORS = _errors(OpenAIError, {
    400: "The request cannot be used: unknown response_format, temperature or timestamp granularity, an "
         "empty file, audio that cannot be decoded, an unknown language.",
    413: "The upload is over the size limit (decided while it arrives) or its audio is too long.",
    422: "The file field is missing or a form field is invalid.",
})
OPENAI_NOT_FOUND = _errors(OpenAIError, {404: "This server has no model with that id."})


# --- successful answers ------------------------------------------------------------------------------
class SegmentOut(BaseModel):
    start: float = Field(description="Seconds from the start of the audio.")
    end: float
    text: str
    confidence: float = Field(description="The segment's average token log-probability.")


class TranscriptionOut(BaseModel):
    success: bool
    text: str
    language: str = Field(description="The spoken language (ISO 639-1), given or detected.")
    language_probability: float
    duration: float = Field(description="Seconds of audio.")
    segments: list[SegmentOut]
    processing_time: float = Field(description="Seconds spent in the model.")


class LimitValues(BaseModel):
    max_streams: Optional[int] = Field(None, description="WebSocket streams open at once (null: unlimited).")
    requests_per_minute: Optional[int] = Field(None, description="Requests and new streams per minute.")
    audio_minutes_per_day: Optional[float] = Field(None, description="Audio minutes per UTC day.")


class UsageCounters(BaseModel):
    requests: int
    audio_seconds: float
    streams: int


class GeneratedKey(BaseModel):
    api_key: str = Field(description="The new key; only its hash is stored, so it is shown this once.")
    name: str
    limits: LimitValues
    message: str


class KeyInfo(BaseModel):
    id: str = Field(description="Identifies the key for DELETE /admin/keys/{id} without revealing it.")
    preview: str
    name: str
    created_at: str
    last_used: Optional[str] = None
    request_count: Optional[int] = None
    limits: LimitValues
    usage: UsageCounters


class DayUsage(UsageCounters):
    date: str


class KeyUsage(BaseModel):
    id: str
    name: str
    total: UsageCounters
    days: list[DayUsage]
    open_streams: int


class LimitsOut(BaseModel):
    id: str
    limits: LimitValues


class KeyList(BaseModel):
    keys: list[KeyInfo]
    total: int


class Revoked(BaseModel):
    success: bool
    message: str


class ModelObject(BaseModel):
    id: str
    object: str = Field(description="Always 'model'.")
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: str = Field(description="Always 'list'.")
    data: list[ModelObject]


# The /v1 audio routes answer in the requested response_format.
OPENAI_AUDIO_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "json: {text, usage}; verbose_json: {task, language, duration, text, segments, words, "
                       "usage}; text, srt, vtt: plain text; stream=true: server-sent events "
                       "(transcript.text.delta ... transcript.text.done).",
        "content": {
            "application/json": {"schema": {"type": "object", "required": ["text"],
                                            "properties": {"text": {"type": "string"}}}},
            "text/plain": {"schema": {"type": "string"}},
            "text/vtt": {"schema": {"type": "string"}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    }
}


# --- the document ------------------------------------------------------------------------------------
def _is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def _component(schema: dict, model: type) -> dict:
    """A $ref to ``model``'s schema, adding it (and what it refers to) to the components if missing."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    if model.__name__ not in components:
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def describe_validation_errors(schema: dict) -> dict:
    """Make every 422 say what the app really sends.

    FastAPI documents each route with parameters as answering 422 with its default list of validation
    errors (``{"detail": [{"loc", "msg", "type"}]}``); this app's RequestValidationError handler sends
    ``{"detail": "<one sentence>"}`` and on /v1 OpenAIErrorMiddleware turns that into OpenAI's shape.
    """
    default = "#/components/schemas/HTTPValidationError"
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422")
            content = (response or {}).get("content", {}).get("application/json", {})
            if content.get("schema", {}).get("$ref") == default:
                content["schema"] = _component(schema, OpenAIError if _is_openai_path(path) else ErrorDetail)
    components = schema.get("components", {}).get("schemas", {})
    if default not in repr(schema.get("paths", {})):
        components.pop("HTTPValidationError", None)
        if "#/components/schemas/ValidationError" not in repr(components):
            components.pop("ValidationError", None)
    return schema


# The /v1 audio routes declare ``file`` optional only so that its absence is answered in OpenAI's shape
# with ``param: "file"``; the request is refused without it, so the document says it is required.
REQUIRED_FORM_FIELDS = {
    ("post", "/v1/audio/transcriptions"): ["file"],
    ("post", "/v1/audio/translations"): ["file"],
    ("post", "/v1/jobs"): ["file"],
}


def require_form_fields(schema: dict) -> dict:
    components = schema.get("components", {}).get("schemas", {})
    for (method, path), fields in REQUIRED_FORM_FIELDS.items():
        operation = schema.get("paths", {}).get(path, {}).get(method)
        if operation is None:
            continue
        operation["requestBody"]["required"] = True
        form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
        body = components[form["$ref"].rsplit("/", 1)[1]] if "$ref" in form else form
        body["required"] = sorted(set(body.get("required", [])) | set(fields))
        for name in fields:  # Optional[...] made it "anyOf: [the type, null]": a null is refused too
            field = body["properties"][name]
            kinds = [k for k in field.pop("anyOf", []) if k.get("type") != "null"]
            if len(kinds) == 1:
                field.update(kinds[0])
            elif kinds:
                field["anyOf"] = kinds
    return schema


SECURITY_SCHEMES = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "An API key (sk-...) from the admin API or the one printed at first start."},
    "Bearer": {"type": "http", "scheme": "bearer", "description": "The same API key as a Bearer token."},
    "AdminKey": {"type": "apiKey", "in": "header", "name": "X-Admin-Key", "description": "The admin key."},
}
_API_KEY_HEADERS = {"x-api-key", "authorization"}
_KEY_HEADERS = _API_KEY_HEADERS | {"x-admin-key"}


def describe_security(schema: dict, auth_enabled: bool, metrics_require_key: bool) -> dict:
    """Declare the keys as security schemes, which client generators and API tools understand, instead
    of the plain header parameters the auth dependencies show up as; as this server is configured
    (--no-auth: no keys at all; /metrics: a key only with --metrics-require-key)."""
    used = set()
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            params = operation.get("parameters", [])
            headers = {p["name"].lower() for p in params if p.get("in") == "header"}
            if "x-admin-key" in headers:
                requirement = [{"AdminKey": []}]
            elif headers & _API_KEY_HEADERS:
                requirement = [{"ApiKey": []}, {"Bearer": []}]
                if not auth_enabled or (path == "/metrics" and not metrics_require_key):
                    requirement = []
            else:
                continue
            kept = [p for p in params if not (p.get("in") == "header" and p["name"].lower() in _KEY_HEADERS)]
            if kept:
                operation["parameters"] = kept
            else:
                operation.pop("parameters", None)
            operation["security"] = requirement
            used.update(name for alternative in requirement for name in alternative)
    if used:
        schema.setdefault("components", {})["securitySchemes"] = {
            name: scheme for name, scheme in SECURITY_SCHEMES.items() if name in used}
    return schema


def install_openapi(app) -> None:
    """Have ``app.openapi()`` (and so /openapi.json and /docs) document the real 422 bodies, required
    fields and how requests authenticate."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            settings = app.state.ctx.settings
            schema = require_form_fields(describe_validation_errors(generate()))
            app.openapi_schema = describe_security(schema, settings.auth_enabled,
                                                   settings.metrics_require_key)
        return app.openapi_schema

    app.openapi = openapi
