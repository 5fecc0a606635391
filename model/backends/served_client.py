"""One connection to an OpenAI-compatible chat-completions server: vLLM, SGLang, Ollama, LM Studio,
`transformers serve`, or any other that speaks `/v1/chat/completions`.

It is the `openai` package's client: retries with exponential backoff (on connection errors,
timeouts, HTTP 408/409/429/5xx) and timeouts are its own. What this module adds: the key read from an
environment variable (a YAML file never holds it), the rows of a batch sent concurrently with at most
`max_in_flight` requests open, a check at load time that the server answers, and failures said in one
line that names the URL and the fix (`ServedModelError`).
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NO_KEY = "none"  # sent when the server needs no key (the client insists on one)


class ServedModelError(RuntimeError):
    """The server is down, refuses us, or answers something that is not a chat completion (one line)."""


class ServerConfig(BaseModel):
    """Where the model is served and how to talk to it."""

    model_config = ConfigDict(extra="forbid")

    base_url: str  # the server's OpenAI-compatible root, up to /v1, e.g. http://localhost:8000/v1
    model: str  # the model's name on that server (what its /v1/models lists)
    api_key_env: str | None = None  # NAME of the environment variable that holds the key; None: no key
    timeout: float = Field(120.0, gt=0)  # seconds per request
    retries: int = Field(2, ge=0)  # retries of a failed request, with exponential backoff
    max_in_flight: int = Field(8, ge=1)  # requests open at once; a batch's rows go concurrently up to this
    extra_body: dict[str, Any] = {}  # more fields for every request, e.g. vLLM's {top_k: 1}

    @field_validator("base_url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not re.match(r"https?://[^/\s]+", url):
            raise ValueError(f"base_url {url!r} is not an http(s) URL like http://localhost:8000/v1")
        return url.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, name: str | None) -> str | None:
        if name is not None and not ENV_NAME.fullmatch(name):
            raise ValueError("api_key_env names an environment variable (like OPENAI_API_KEY), not the key itself")
        return name


class ServedModel:
    """The server behind one role; `chat` sends one request per row, at most `max_in_flight` at once."""

    def __init__(self, cfg: ServerConfig, role: str, probe: dict[str, Any] | None = None):
        from openai import OpenAI

        self.cfg, self.role = cfg, role
        self.path = f"{cfg.model} at {cfg.base_url}"  # what the run manifest records (no folder to hash)
        self.client = OpenAI(base_url=cfg.base_url, api_key=self._key(), timeout=cfg.timeout,
                             max_retries=cfg.retries)
        self._pool = ThreadPoolExecutor(cfg.max_in_flight, thread_name_prefix=f"served-{role}")
        self._lock = threading.Lock()
        self.in_flight = 0
        self.stats: Counter[str] = Counter()  # requests, prompt_tokens, completion_tokens, peak_in_flight
        self.check(probe or {})

    def _key(self) -> str:
        name = self.cfg.api_key_env
        if name is None:
            return NO_KEY
        key = os.environ.get(name)
        if not key:
            raise ServedModelError(f"models.{self.role}.api_key_env names {name}, which is not set; "
                                   f"export {name}=YOUR_KEY or drop api_key_env for a server without keys")
        return key

    def check(self, probe: dict[str, Any]) -> None:
        """Ask the server for its models, then for one token from this model (with the role's own request
        fields, `probe`): a dead URL, a wrong model name, a refused key or field fails here, before a run
        writes anything."""
        raw = self._call(lambda: self.client.models.with_raw_response.list())
        kind, body = raw.http_response.headers.get("content-type", "no content type"), raw.http_response.text
        if "json" not in kind:
            raise self._nonsense("/models", f"{kind}: {body[:40]!r}")
        models = self._call(raw.parse)
        if not isinstance(getattr(models, "data", None), list):
            raise self._nonsense("/models", f"{type(models).__name__} {str(models)[:60]!r}")
        self.listed = [m.id for m in models.data if getattr(m, "id", None)]  # names it serves (some list none)
        self._one([{"role": "user", "content": "Answer yes or no: can you read this?"}], {**probe, "max_tokens": 1})
        self.stats.clear()  # the probe is no work of the run

    def chat(self, conversations: list[list[dict]], **params) -> list:
        """One ChatCompletion per conversation, in order; the first failure is raised."""
        return list(self._pool.map(lambda messages: self._one(messages, params), conversations))

    def _one(self, messages: list[dict], params: dict):
        from openai.types.chat import ChatCompletion

        with self._lock:
            self.in_flight += 1
            self.stats["peak_in_flight"] = max(self.stats["peak_in_flight"], self.in_flight)
        try:
            reply = self._call(lambda: self.client.chat.completions.create(
                model=self.cfg.model, messages=messages, extra_body=self.cfg.extra_body or None, **params))
        finally:
            with self._lock:
                self.in_flight -= 1
        if not isinstance(reply, ChatCompletion) or not reply.choices:
            raise self._nonsense("/chat/completions", "no choices" if isinstance(reply, ChatCompletion)
                                 else f"{type(reply).__name__} {str(reply)[:60]!r}")
        with self._lock:
            self.stats["requests"] += 1
            if reply.usage is not None:
                self.stats["prompt_tokens"] += reply.usage.prompt_tokens or 0
                self.stats["completion_tokens"] += reply.usage.completion_tokens or 0
        return reply

    def _call(self, request):
        """Run one request; the client's errors become one line that names the URL and the fix."""
        import openai

        url, where = self.cfg.base_url, f"models.{self.role}"
        try:
            return request()
        except openai.APITimeoutError:
            raise ServedModelError(f"the served {self.role} at {url} did not answer within {self.cfg.timeout:g} s "
                                   f"({self.cfg.retries} retries); raise {where}.timeout or check the server") from None
        except openai.APIConnectionError as e:
            cause = _root(e)
            raise ServedModelError(f"cannot reach the served {self.role} at {url} ({cause}, {self.cfg.retries} "
                                   f"retries); start the server or fix {where}.base_url") from None
        except openai.AuthenticationError:
            raise ServedModelError(f"the server at {url} refused the API key (HTTP 401); put the right key in the "
                                   f"environment variable {where}.api_key_env names") from None
        except openai.NotFoundError as e:
            raise ServedModelError(f"the server at {url} answered HTTP 404 ({_detail(e)}); check that {where}.base_url "
                                   f"ends with /v1 and that it serves {where}.model {self.cfg.model!r}") from None
        except openai.APIStatusError as e:
            raise ServedModelError(f"the server at {url} answered HTTP {e.status_code} ({_detail(e)}); check that "
                                   f"it is an OpenAI-compatible server that serves {where}.model {self.cfg.model!r} "
                                   f"and takes {where}.extra_body") from None
        except Exception as e:  # noqa: BLE001 - a body the client cannot read as the API's (an HTML page, say)
            raise self._nonsense("a request", f"{type(e).__name__}: {e}") from None

    def _nonsense(self, what: str, got: str) -> ServedModelError:
        got = " ".join(got.split())[:80]
        return ServedModelError(f"the server at {self.cfg.base_url} answered {what} with something that is not "
                                f"the OpenAI API's answer ({got}); check that models.{self.role}.base_url is the /v1 "
                                "root of an OpenAI-compatible server")

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self.client.close()


def _root(error: BaseException) -> str:
    """The innermost cause, in a few words ('connection refused' rather than a chain of wrappers)."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:80]


def _detail(error) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error")
        body = body.get("detail") or body.get("message") or (inner.get("message") if isinstance(inner, dict)
                                                             else inner) or body
    text = " ".join(str(body or error.message).split())
    return "an HTML page" if "<html" in text.lower() else text[:100]
