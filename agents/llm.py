"""The chat client for any OpenAI-compatible endpoint (OpenAI, vLLM, SGLang, llama.cpp server).

- One cap on requests in flight for the whole process (`max_in_flight`).
- Retries on connection errors, timeouts, 408, 409, 429 (honouring Retry-After) and 5xx happen in
  one layer only: the `openai` client's own, with exponential backoff (`max_retries`).
- Structured output through `response_format` with a JSON schema, validated with pydantic; for an
  endpoint that rejects `response_format`, plain text with a tolerant parser; one re-ask carrying
  the validation error.
- Truncation (`finish_reason == "length"`), empty content and refusals raise `LLMFailure`.
- Every finished call is stored in an on-disk cache (`agents.llm_cache`), so a rerun replays it.
- The API key is read from the environment variable named by `api_key_env`, never from config.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from agents.errors import InputError
from agents.llm_cache import LLMCache, request_key
from agents.parsing import is_refusal, parse_model, strip_reasoning
from agents.prompts import REASK_PROMPT

T = TypeVar("T", bound=BaseModel)
Messages = list[dict[str, str]]

log = logging.getLogger(__name__)

_PROBE_TIMEOUT = 60.0  # seconds the preflight's 1-token chat request may take
# what servers say to a request for a model they do not serve: vLLM, OpenAI ("The model `x` does not exist"),
# Ollama ("model \"x\" not found"), LiteLLM ("Invalid model name"), transformers serve ("Server is pinned to ...")
_MODEL_MISSING = re.compile(r"model\b.*\b(does not exist|not found|not served|not available)|no such model|"
                            r"unknown model|invalid model|pinned to", re.IGNORECASE | re.DOTALL)


def _error_text(err: Any) -> str:
    """What a server said in an error answer (`openai.APIStatusError`): its message, else the body (FastAPI
    servers such as `transformers serve` put it under `detail`), else the client's summary."""
    body = err.body
    said = (body.get("message") or body.get("detail") or body) if isinstance(body, dict) else body
    return str(said or err.message)


class LLMFailure(Exception):
    """A call that gave no usable output once the client's retries were spent."""


class _StructuredOutputUnsupported(Exception):
    pass


@dataclass
class LLMStats:
    """Counters of one client, read by the progress bar and the closing summary."""

    calls: int = 0  # requests answered by the endpoint
    cached: int = 0  # calls answered from the cache
    failures: int = 0  # calls that gave no usable output (after the client's retries, or refused, cut, invalid)
    attempts: int = 0  # calls sent to the endpoint (each may take several HTTP requests)
    requests: int = 0  # HTTP requests sent, the client's retries included
    prompt_tokens: int = 0
    completion_tokens: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0

    @property
    def retried(self) -> int:
        """HTTP requests that were retries of an earlier one."""
        return max(0, self.requests - self.attempts)


class LLMClient:
    """Async chat completions with a global request cap, a call cache and validated JSON output."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        temperature: float = 0.7,
        max_tokens: int = 2048,
        timeout: float = 600.0,
        max_retries: int = 5,
        max_in_flight: int = 16,
        cache_path: str | None = None,
        structured_outputs: bool = True,
        seed: int | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_in_flight = max_in_flight
        self.cache = LLMCache(cache_path) if cache_path else None
        self.structured_outputs = structured_outputs
        self.seed = seed
        self.stats = LLMStats()
        self._cache_thread = ThreadPoolExecutor(1, thread_name_prefix="llm-cache")
        self._per_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _loop_state(self) -> tuple[Any, asyncio.Semaphore]:
        """The client and the request cap of the running event loop."""
        loop = asyncio.get_running_loop()
        state = self._per_loop.get(loop)
        if state is None:
            from openai import AsyncOpenAI, DefaultAsyncHttpxClient

            async def count_request(request) -> None:
                if request.url.path.endswith("/chat/completions"):
                    self.stats.requests += 1

            client = AsyncOpenAI(
                base_url=self.base_url,
                api_key=os.environ.get(self.api_key_env) or "EMPTY",
                timeout=self.timeout,
                max_retries=self.max_retries,
                http_client=DefaultAsyncHttpxClient(event_hooks={"request": [count_request]}),
            )
            state = (client, asyncio.Semaphore(self.max_in_flight))
            self._per_loop[loop] = state
        return state

    async def aclose(self) -> None:
        """Close the HTTP client of the running loop and the cache file."""
        state = self._per_loop.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await state[0].close()
        if self.cache is not None:
            self.cache.close()

    async def preflight(self) -> list[str]:
        """Check the endpoint before any work: reachable, key accepted, model served.

        Returns the served model ids (empty when the endpoint gave no list). A `/models` that answers an
        error status or lists nothing (`transformers serve` answers 500 there without a Hugging Face cache
        folder) is not fatal by itself: one 1-token chat request then decides (see `_probe_chat`). Raises
        InputError naming the URL and the setting to change otherwise.
        """
        import openai

        client, _ = self._loop_state()
        try:
            page = await client.with_options(max_retries=1, timeout=min(self.timeout, 30.0)).models.list()
        except openai.APIConnectionError as err:
            raise self._unreachable(err) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError):
            raise self._key_rejected() from None
        except openai.APIStatusError as err:
            log.info("%s/models answered HTTP %d; trying one chat request instead", self.base_url, err.status_code)
            await self._probe_chat(f"{self.base_url}/models answered HTTP {err.status_code}")
            return []
        served = [m.id for m in page.data]
        if not served:
            await self._probe_chat(f"{self.base_url}/models listed no model")
            return []
        if self.model not in served:
            raise InputError(
                f"model {self.model!r} is not served by {self.base_url} (it serves: "
                f"{', '.join(served[:10])}): set llm.model"
            )
        return served

    async def _probe_chat(self, why: str) -> None:
        """Send one chat request of one token for `self.model`; return if it is answered, raise InputError
        saying what is wrong if not. It goes through a client of its own, so it is neither counted in `stats`
        nor stored in the cache."""
        import openai

        timeout = min(self.timeout, _PROBE_TIMEOUT)
        probe = openai.AsyncOpenAI(base_url=self.base_url, api_key=os.environ.get(self.api_key_env) or "EMPTY",
                                   timeout=timeout, max_retries=1)
        try:
            await probe.chat.completions.create(model=self.model, messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=1)
        except openai.APITimeoutError:
            raise InputError(
                f"LLM endpoint {self.base_url}: {why}, and a 1-token chat request for model {self.model!r} got no "
                f"answer within {timeout:.0f}s: check llm.base_url and the server's log"
            ) from None
        except openai.APIConnectionError as err:
            raise self._unreachable(err) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError):
            raise self._key_rejected() from None
        except openai.APIStatusError as err:
            message = _error_text(err)
            if err.status_code in (400, 404) and (err.code == "model_not_found" or _MODEL_MISSING.search(message)):
                raise InputError(
                    f"model {self.model!r} is not served by {self.base_url} (a chat request for it answered HTTP "
                    f"{err.status_code}: {message[:200]}): set llm.model"
                ) from None
            hint = " (an OpenAI-compatible server's URL ends in /v1)" if err.status_code in (404, 405) else ""
            raise InputError(
                f"LLM endpoint {self.base_url}: {why}, and a 1-token chat request for model {self.model!r} answered "
                f"HTTP {err.status_code} ({message[:200]}): check llm.base_url{hint}, llm.model and the server's log"
            ) from None
        finally:
            await probe.close()

    def _unreachable(self, err: Exception) -> InputError:
        """The error for an endpoint that cannot be connected to."""
        return InputError(
            f"LLM endpoint {self.base_url} is unreachable ({err.__class__.__name__}): check "
            "llm.base_url and that the server is running"
        )

    def _key_rejected(self) -> InputError:
        """The error for an endpoint that answered 401 or 403."""
        return InputError(
            f"LLM endpoint {self.base_url} rejected the API key: set the environment variable {self.api_key_env}"
        )

    async def text(self, messages: Messages, max_tokens: int | None = None) -> str:
        """A plain-text reply with reasoning blocks removed; refusals raise LLMFailure."""
        raw, key = await self._complete(messages, None, max_tokens)
        content = strip_reasoning(raw)
        if is_refusal(content):
            self.stats.failures += 1
            raise LLMFailure(f"refusal: {content[:120]!r}")
        await self._remember(key, raw)
        return content

    async def json(self, messages: Messages, schema: type[T], max_tokens: int | None = None) -> T:
        """A reply validated against `schema`; one re-ask with the error if it does not parse."""
        content, key = await self._structured(messages, schema, max_tokens)
        try:
            parsed = parse_model(content, schema)
            await self._remember(key, content)
            return parsed
        except ValueError as first:
            if is_refusal(content):
                self.stats.failures += 1
                raise LLMFailure(f"refusal: {strip_reasoning(content)[:120]!r}") from None
            retry = messages + [
                {"role": "assistant", "content": content},
                {"role": "user", "content": REASK_PROMPT.format(error=first)},
            ]
            second_content, second_key = await self._structured(retry, schema, max_tokens)
            try:
                parsed = parse_model(second_content, schema)
                # both replies are kept only now, so a resumed run replays this exchange exactly
                await self._remember(key, content)
                await self._remember(second_key, second_content)
                return parsed
            except ValueError as second:
                self.stats.failures += 1
                raise LLMFailure(f"invalid structured output after one re-ask: {second}") from None

    async def _structured(self, messages: Messages, schema: type[T], max_tokens: int | None,
                          ) -> tuple[str, str | None]:
        if self.structured_outputs:
            response_format = {
                "type": "json_schema",
                "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema(), "strict": True},
            }
            try:
                return await self._complete(messages, response_format, max_tokens)
            except _StructuredOutputUnsupported:
                self.structured_outputs = False  # this endpoint gets plain text from now on
        return await self._complete(messages, None, max_tokens)

    async def _cache_io(self, fn, *args):
        """Run a cache read or write on the cache's own thread: off the event loop, and never queued
        behind the retrieval and tokenization work in the default executor."""
        return await asyncio.get_running_loop().run_in_executor(self._cache_thread, fn, *args)

    async def _remember(self, key: str | None, content: str) -> None:
        """Cache a reply that passed every check (`key` None: it came from the cache)."""
        if key is not None and self.cache is not None:
            await self._cache_io(self.cache.put, key, {"content": content, "finish_reason": "stop"})

    async def _complete(self, messages: Messages, response_format: dict | None, max_tokens: int | None,
                        ) -> tuple[str, str | None]:
        """(reply, its cache key when it is fresh). Nothing is cached here: the caller caches a reply once
        it has passed its checks, so a refused, cut or invalid reply is never replayed."""
        import openai

        params: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": max_tokens or self.max_tokens,
        }
        if response_format:
            params["response_format"] = response_format
        if self.seed is not None:
            params["seed"] = self.seed
        key = request_key(params)
        if self.cache is not None and (hit := await self._cache_io(self.cache.get, key)) is not None:
            self.stats.cached += 1
            return hit["content"], None
        client, cap = self._loop_state()
        async with cap:
            self.stats.in_flight += 1
            self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.stats.in_flight)
            self.stats.attempts += 1
            try:
                response = await client.chat.completions.create(**params)
            except openai.BadRequestError as err:
                if response_format and "response_format" in str(err.message).lower():
                    raise _StructuredOutputUnsupported from None
                self.stats.failures += 1
                raise LLMFailure(f"HTTP 400 from {self.base_url}: {err.message}") from None
            except openai.APIStatusError as err:
                self.stats.failures += 1
                raise LLMFailure(f"HTTP {err.status_code} from {self.base_url} after retries") from None
            except openai.APITimeoutError:
                self.stats.failures += 1
                raise LLMFailure(f"timeout after {self.timeout}s from {self.base_url} after retries") from None
            except openai.APIConnectionError as err:
                self.stats.failures += 1
                raise LLMFailure(f"connection to {self.base_url} failed after retries ({err})") from None
            finally:
                self.stats.in_flight -= 1
        self.stats.calls += 1
        if response.usage is not None:
            self.stats.prompt_tokens += response.usage.prompt_tokens or 0
            self.stats.completion_tokens += response.usage.completion_tokens or 0
        if not response.choices:
            self.stats.failures += 1
            raise LLMFailure("response without choices")
        choice = response.choices[0]
        content = choice.message.content or ""
        if getattr(choice.message, "refusal", None):
            self.stats.failures += 1
            raise LLMFailure(f"refusal: {choice.message.refusal[:120]!r}")
        if choice.finish_reason == "length":
            self.stats.failures += 1
            raise LLMFailure(f"truncated: hit max_tokens={params['max_tokens']} (finish_reason=length)")
        if not strip_reasoning(content):
            self.stats.failures += 1
            raise LLMFailure("empty content")
        return content, key
