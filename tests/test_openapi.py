"""The OpenAPI document tells the truth: schemathesis generates requests from it (valid and invalid, with
and without working keys), sends them to the app in-process and checks every response against it
(status codes, content types, headers, bodies) with all of its checks, and that nothing answers 5xx.

The example count per operation is bounded (``WHISPER_SCHEMATHESIS_EXAMPLES``, default 100); generated
files are a few random bytes, which fail to decode at once, so no example runs a long transcription.
"""

from __future__ import annotations

import base64
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation

from whisper_stt.app import create_app
from whisper_stt.config import Settings
from whisper_stt.keys import KeyStore

from .conftest import ADMIN_KEY, MODELS_DIR

MAX_EXAMPLES = int(os.environ.get("WHISPER_SCHEMATHESIS_EXAMPLES", "100"))

# Every operation in the document; a new route must be added here (and so be fuzzed) deliberately.
OPERATIONS = [
    "GET /",
    "GET /health",
    "GET /stats",
    "POST /transcribe",
    "POST /transcribe/base64",
    "POST /admin/keys/generate",
    "GET /admin/keys",
    "DELETE /admin/keys/{key}",
    "GET /admin/keys/{key_id}/usage",
    "PATCH /admin/keys/{key_id}",
    "GET /v1/models",
    "GET /v1/models/{model_id}",
    "POST /v1/audio/transcriptions",
    "POST /v1/audio/translations",
    "GET /metrics",
    "POST /v1/jobs",
    "GET /v1/jobs",
    "GET /v1/jobs/{job_id}",
    "GET /v1/jobs/{job_id}/result",
    "DELETE /v1/jobs/{job_id}",
]


# A file's content cannot be described by a JSON schema: a schema-valid request still gets 400 when its
# bytes are not audio (and 413 when they decode to audio over the duration limit). Everywhere else valid
# data must be accepted.
AUDIO_PATHS = ["/transcribe", "/transcribe/base64", "/v1/audio/transcriptions", "/v1/audio/translations",
               "/v1/jobs"]
CONFIG = {
    # Unknown query parameters, headers and form fields are ignored, as by most HTTP APIs; OpenAPI has
    # no way to say "nothing else", so requests with extra ones are not counted as invalid.
    "generation": {"allow-extra-parameters": False},
    "operations": [{
        "include-path": AUDIO_PATHS,
        "checks": {"positive_data_acceptance": {
            "expected-statuses": ["2xx", "400", "401", "403", "413"],
        }},
    }],
}


class Api:
    def __init__(self, app, api_key: str) -> None:
        self.app = app
        self.api_key = api_key
        self.schema = schemathesis.openapi.from_asgi("/openapi.json", app,
                                                     config=schemathesis.Config.from_dict(CONFIG))
        self.operations = {
            f"{op.method.upper()} {op.path}": op for op in (r.ok() for r in self.schema.get_all_operations())
        }
        self.cases_run = 0


@pytest.fixture(scope="module")
def api(engine, tmp_path_factory) -> Api:
    tmp = tmp_path_factory.mktemp("openapi")
    settings_ = Settings(key_file=tmp / "api_keys.json", debug_dir=tmp / "debug_audio", models_dir=MODELS_DIR,
                         max_upload_mb=1, jobs_dir=tmp / "jobs", max_queued_jobs_per_key=0, job_workers=0)
    keys = KeyStore.open(settings_.key_file)
    created = keys.bootstrap(ADMIN_KEY)
    api_key = created.get("api") or keys.generate("schemathesis")
    return Api(create_app(settings_, engine, keys), api_key)


def test_every_operation_is_fuzzed(api):
    assert sorted(api.operations) == sorted(OPERATIONS)


AUTH_HEADERS = {"x-api-key", "authorization", "x-admin-key"}


def _credentials(api: Api, how: str) -> dict:
    """Headers that authorise the request (or none: then the generated ones, mostly wrong, are sent)."""
    if how == "x-api-key":
        return {"X-API-Key": api.api_key}
    if how == "bearer":
        return {"Authorization": f"Bearer {api.api_key}"}
    if how == "admin":
        return {"X-Admin-Key": ADMIN_KEY}
    return {}


@pytest.mark.parametrize("operation", OPERATIONS)
def test_schema_matches_responses(api, operation):
    op = api.operations[operation]
    strategy = st.one_of(
        *(op.as_strategy(generation_mode=mode) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE))
    )

    @given(case=strategy, how=st.sampled_from(["x-api-key", "bearer", "admin", "generated"]))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def check(case, how):
        api.cases_run += 1
        credentials = _credentials(api, how)
        if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER):
            credentials = {}  # the headers are deliberately wrong (a key missing, say): keep them so
        if credentials:  # the real keys instead of the generated (wrong) ones
            kept = {k: v for k, v in (case.headers or {}).items() if k.lower() not in AUTH_HEADERS}
            case.headers = {**kept, **credentials}
        # Given as the call's headers, schemathesis knows them as the real credentials: its ignored_auth
        # check then also sends the request without them and with wrong ones and expects 401/403.
        case.call_and_validate(headers=credentials or None)

    check()


def _validated(api: Api, operation: str, **case) -> "schemathesis.Response":
    """Send one hand-made request and check its answer against the document (all response checks)."""
    api.cases_run += 1
    return api.operations[operation].Case(**case).call_and_validate()


def test_real_answers_match_the_documented_bodies(api, librivox):
    """Generated bytes never decode, so the 200 bodies are checked here with real speech."""
    clip = librivox[1]  # the shortest (3 s): eight transcriptions follow
    audio = clip.path.read_bytes()
    key = {"X-API-Key": api.api_key}
    r = _validated(api, "POST /transcribe", headers=key, body={"file": audio, "language": "en"},
                   media_type="multipart/form-data")
    assert r.status_code == 200 and r.json()["segments"], r.text
    r = _validated(api, "POST /transcribe/base64", headers=key,
                   body={"audio": base64.b64encode(audio).decode(), "language": ""},
                   media_type="application/json")
    assert r.status_code == 200 and r.json()["language"] == "en", r.text
    bearer = {"Authorization": f"Bearer {api.api_key}"}
    for fmt in ("json", "verbose_json", "srt", "vtt"):  # srt stands for text too (text/plain)
        r = _validated(api, "POST /v1/audio/transcriptions", headers=bearer,
                       body={"file": audio, "model": "whisper-1", "response_format": fmt},
                       media_type="multipart/form-data")
        assert r.status_code == 200, (fmt, r.text)
    r = _validated(api, "POST /v1/audio/translations", headers=bearer, body={"file": audio},
                   media_type="multipart/form-data")
    assert r.status_code == 200, r.text
    assert _validated(api, "GET /v1/models", headers=bearer).status_code == 200
    model = api.app.state.ctx.engine.model_name
    assert _validated(api, "GET /v1/models/{model_id}", headers=bearer,
                      path_parameters={"model_id": model}).status_code == 200
    for operation in ("GET /", "GET /health", "GET /stats", "GET /metrics"):
        assert _validated(api, operation, headers=key).status_code == 200, operation

    admin = {"X-Admin-Key": ADMIN_KEY}
    r = _validated(api, "POST /admin/keys/generate", headers=admin, query={"name": "documented"})
    new_key = r.json()["api_key"]
    listed = _validated(api, "GET /admin/keys", headers=admin).json()["keys"]
    assert any(k["name"] == "documented" for k in listed)
    r = _validated(api, "DELETE /admin/keys/{key}", headers=admin, path_parameters={"key": new_key})
    assert r.status_code == 200, r.text


def test_error_answers_match_the_documented_bodies(api):
    """Each documented error status, provoked on purpose and checked against the document."""
    key = {"X-API-Key": api.api_key}
    admin = {"X-Admin-Key": ADMIN_KEY}
    form, json_ = "multipart/form-data", "application/json"
    cases = [
        ("GET /stats", {}, 401),
        ("GET /stats", {"headers": {"X-API-Key": "sk-" + "0" * 48}}, 403),
        ("POST /transcribe", {"headers": key, "body": {"language": "en"}, "media_type": form}, 422),
        ("POST /transcribe", {"headers": key, "body": {"file": b"not audio"}, "media_type": form}, 400),
        ("POST /transcribe", {"headers": key, "body": {"file": b"\0" * (1024 * 1024 + 1)},
                              "media_type": "multipart/form-data"}, 413),
        ("POST /transcribe/base64", {"headers": key, "body": {"audio": ""}, "media_type": json_}, 400),
        ("POST /transcribe/base64", {"headers": key, "body": {"audio": "AAAA", "language": "xx"},
                                     "media_type": "application/json"}, 400),
        ("POST /admin/keys/generate", {"headers": admin, "query": {"name": "n" * 101}}, 422),
        ("GET /admin/keys", {"headers": {"X-Admin-Key": api.api_key}}, 403),
        ("DELETE /admin/keys/{key}", {"headers": admin, "path_parameters": {"key": "sk-unknown"}}, 404),
        ("GET /v1/models", {}, 401),
        ("GET /v1/models/{model_id}", {"headers": key, "path_parameters": {"model_id": "gpt-4"}}, 404),
        ("POST /v1/audio/transcriptions", {"headers": key, "body": {"model": "whisper-1"},
                                           "media_type": "multipart/form-data"}, 422),
        ("POST /v1/audio/transcriptions", {"headers": key, "body": {"file": b"x", "response_format": "mp3"},
                                           "media_type": "multipart/form-data"}, 400),
        ("POST /v1/audio/translations", {"headers": key, "body": {"file": b"\0" * (1024 * 1024 + 1)},
                                         "media_type": "multipart/form-data"}, 413),
    ]
    for operation, case, status in cases:
        r = _validated(api, operation, **case)
        assert r.status_code == status, (operation, case.get("body"), r.status_code, r.text)
        body = r.json()
        if operation.split()[1].startswith("/v1/"):
            assert set(body["error"]) == {"message", "type", "param", "code"}, body
        else:
            assert isinstance(body["detail"], str), body


def test_empty_audio_is_outside_the_schema(api):
    """{"audio": ""} is refused (400), so the document must not call it valid."""
    schema = api.app.openapi()
    request = schema["paths"]["/transcribe/base64"]["post"]["requestBody"]
    body = request["content"]["application/json"]["schema"]
    assert body["properties"]["audio"]["minLength"] == 1
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_security_follows_the_configuration(make_app):
    """Keys are security schemes (what client generators read), declared as this server enforces them."""
    api_key = [{"ApiKey": []}, {"Bearer": []}]

    def security(doc: dict, method: str, path: str):
        operation = doc["paths"][path][method]
        assert not {p["name"].lower() for p in operation.get("parameters", [])} & AUTH_HEADERS, operation
        return operation.get("security")

    doc = make_app().app.openapi()
    assert set(doc["components"]["securitySchemes"]) == {"ApiKey", "Bearer", "AdminKey"}
    assert security(doc, "get", "/stats") == api_key
    assert security(doc, "post", "/v1/audio/transcriptions") == api_key
    assert security(doc, "delete", "/admin/keys/{key}") == [{"AdminKey": []}]
    assert security(doc, "get", "/metrics") == []
    assert security(doc, "get", "/health") is None
    doc = make_app(metrics_require_key=True).app.openapi()
    assert security(doc, "get", "/metrics") == api_key
    doc = make_app(no_auth=True).app.openapi()
    assert security(doc, "post", "/transcribe") == []
    assert security(doc, "get", "/admin/keys") == [{"AdminKey": []}]  # the admin key is needed even then


def test_case_count(api):
    """Runs last in this module: how many requests schemathesis and the hand-made cases sent."""
    print(f"\nschemathesis: {api.cases_run} cases sent, at most {MAX_EXAMPLES} generated per operation")
    assert api.cases_run >= len(OPERATIONS)


def test_job_answers_match_the_documented_bodies(api):
    """Jobs: 202 on submit, then each route's answer for a job that succeeded (ended here through the
    store, as a worker would end it: the fuzzed app runs no worker)."""
    import asyncio

    from whisper_stt.jobs.base import JobStatus

    bearer = {"Authorization": f"Bearer {api.api_key}"}
    store = api.app.state.ctx.jobs.store
    result = {"text": "Hello there.", "language": "en", "language_probability": 0.9, "duration": 2.0,
              "processing_time": 0.1, "segments": [{"start": 0.0, "end": 2.0, "text": "Hello there.",
                                                    "confidence": -0.2, "no_speech_prob": 0.01,
                                                    "words": None, "temperature": 0.0,
                                                    "compression_ratio": 1.0}]}
    for fmt in ("verbose_json", "srt"):
        r = _validated(api, "POST /v1/jobs", headers=bearer, body={"file": b"RIFF", "response_format": fmt},
                       media_type="multipart/form-data")
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        path = {"job_id": job_id}
        r = _validated(api, "GET /v1/jobs/{job_id}/result", headers=bearer, path_parameters=path)
        assert r.status_code == 409, r.text

        async def finish():
            while (claimed := await store.claim("openapi-test")) is not None:
                await store.finish(claimed.id, "openapi-test", JobStatus.SUCCEEDED, result=result)

        asyncio.run(finish())
        r = _validated(api, "GET /v1/jobs/{job_id}", headers=bearer, path_parameters=path)
        assert r.status_code == 200 and r.json()["status"] == "succeeded" and r.json()["result"], r.text
        r = _validated(api, "GET /v1/jobs/{job_id}/result", headers=bearer, path_parameters=path)
        assert r.status_code == 200 and "Hello there." in r.text, r.text
        r = _validated(api, "DELETE /v1/jobs/{job_id}", headers=bearer, path_parameters=path)
        assert r.status_code == 409, r.text
    r = _validated(api, "GET /v1/jobs", headers=bearer, query={"limit": 1})
    assert r.status_code == 200 and r.json()["has_more"], r.text
