"""The model under test as seen over HTTP: any OpenAI-compatible server, through the real `openai` client.

`api="completions"` sends the rendered prompt (chat template and answer prefix included) to
`/v1/completions`, as RULER does against vLLM; `api="chat"` sends the task text as one user turn to
`/v1/chat/completions` (no answer prefix can be given there). Greedy decoding (temperature 0, top_p 1).
One cap on requests in flight; retries (connection errors, timeouts, 408/409/429/5xx) happen only in the
`openai` client, with its exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import os

from agents.errors import InputError
from evals.samples import EvalSample

log = logging.getLogger(__name__)

APIS = ("completions", "chat")


class EvalFailure(Exception):
    """A request that got no reply once the client's retries were spent."""


class EvalClient:
    """Greedy generations for evaluation samples from one served model."""

    def __init__(self, base_url: str, model: str, api: str = "completions", api_key_env: str = "OPENAI_API_KEY",
                 max_in_flight: int = 8, timeout: float = 600.0, max_retries: int = 5, temperature: float = 0.0,
                 top_p: float = 1.0) -> None:
        if api not in APIS:
            raise InputError(f"target.api must be one of {', '.join(APIS)}, not {api!r}")
        if max_in_flight < 1:
            raise InputError(f"target.max_in_flight must be at least 1, not {max_in_flight}")
        from openai import AsyncOpenAI

        self.base_url, self.model, self.api = base_url.rstrip("/"), model, api
        self.api_key_env, self.temperature, self.top_p = api_key_env, temperature, top_p
        self.max_in_flight = max_in_flight
        self.client = AsyncOpenAI(base_url=self.base_url, api_key=os.environ.get(api_key_env) or "EMPTY",
                                  timeout=timeout, max_retries=max_retries)
        self._cap: asyncio.Semaphore | None = None

    async def preflight(self) -> None:
        """Fail early, naming the URL, when the endpoint is unreachable, refuses the key or lacks the model.
        A server whose `/models` errors (transformers serve answers 500 without a hub cache) is let through."""
        import openai

        try:
            page = await self.client.with_options(max_retries=1, timeout=30.0).models.list()
        except openai.APIConnectionError as err:
            raise InputError(f"endpoint {self.base_url} is unreachable ({err.__class__.__name__}): check "
                             f"target.base_url and that the server is running") from None
        except (openai.AuthenticationError, openai.PermissionDeniedError):
            raise InputError(f"endpoint {self.base_url} rejected the API key: set the environment variable "
                             f"{self.api_key_env}") from None
        except openai.APIStatusError as err:
            if err.status_code < 500:
                raise InputError(f"{self.base_url}/models answered HTTP {err.status_code}: check target.base_url "
                                 f"(an OpenAI-compatible server's URL ends in /v1)") from None
            # transformers serve answers 500 there when no Hugging Face cache folder exists
            log.info("%s/models answered HTTP %d; going on without the model list", self.base_url, err.status_code)
            return
        served = [m.id for m in page.data]
        if served and self.model not in served and f"{self.model}@main" not in served:
            raise InputError(f"model {self.model!r} is not served by {self.base_url} (it serves: "
                             f"{', '.join(served[:10])}): set target.model")

    async def generate(self, sample: EvalSample) -> str:
        """The reply to one sample (text only; a reply cut at `max_tokens` is scored as it is)."""
        import openai

        if self._cap is None:
            self._cap = asyncio.Semaphore(self.max_in_flight)
        async with self._cap:
            try:
                if self.api == "completions":
                    response = await self.client.completions.create(
                        model=self.model, prompt=sample.prompt, max_tokens=sample.max_tokens,
                        temperature=self.temperature, top_p=self.top_p)
                    return response.choices[0].text or "" if response.choices else ""
                response = await self.client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": sample.user}],
                    max_tokens=sample.max_tokens, temperature=self.temperature, top_p=self.top_p)
                return response.choices[0].message.content or "" if response.choices else ""
            except openai.APIStatusError as err:
                raise EvalFailure(f"HTTP {err.status_code} from {self.base_url} after retries: "
                                  f"{str(err.message)[:200]}") from None
            except (openai.APITimeoutError, openai.APIConnectionError) as err:
                raise EvalFailure(f"{err.__class__.__name__} from {self.base_url} after retries") from None

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self.client.close()
