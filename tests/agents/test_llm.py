"""The chat client over real HTTP against the scripted server."""

import asyncio

import pytest

from agents.errors import InputError
from agents.llm import LLMClient, LLMFailure
from agents.prompts import INSTRUCTION_PROMPT
from agents.schemas import Instruction
from tests.servers import free_port

ASK = [{"role": "user", "content": INSTRUCTION_PROMPT.format(random_chunk="Generators yield values lazily to callers.")}]


def _client(server, tmp_path=None, **kw) -> LLMClient:
    kw.setdefault("max_retries", 2)
    kw.setdefault("timeout", 5.0)
    cache = str(tmp_path / "cache.sqlite") if tmp_path else None
    return LLMClient(base_url=server.url, model="scripted", cache_path=cache, **kw)


async def _call(client, coro_fn):
    try:
        return await coro_fn(client)
    finally:
        await client.aclose()


def run(client, fn):
    return asyncio.run(_call(client, fn))


def test_structured_output_is_validated(server):
    reply = run(_client(server), lambda c: c.json(ASK, Instruction))
    assert isinstance(reply, Instruction) and "generators" in reply.instruction
    assert server.control.saw_response_format == 1


def test_endpoint_without_response_format_gets_plain_text(server):
    server.control.reject_response_format = True
    client = _client(server)
    reply = run(client, lambda c: c.json(ASK, Instruction))
    assert "generators" in reply.instruction and client.structured_outputs is False
    assert server.control.chat_requests == 2  # the refused one, then plain text


def test_malformed_json_is_asked_again_once(server):
    server.control.fault_rate, server.control.fault_kinds = 1.0, ("malformed",)
    with pytest.raises(LLMFailure, match="invalid structured output after one re-ask"):
        run(_client(server), lambda c: c.json(ASK, Instruction))
    assert server.control.chat_requests == 2


@pytest.mark.parametrize("kind,message", [("empty", "empty content"), ("refusal", "refusal"),
                                          ("truncate", "truncated: hit max_tokens")])
def test_unusable_replies_are_failures(server, kind, message):
    server.control.fault_rate, server.control.fault_kinds = 1.0, (kind,)
    with pytest.raises(LLMFailure, match=message):
        run(_client(server), lambda c: c.text(ASK))


def test_429_and_500_are_retried_with_backoff(server):
    server.control.fault_rate, server.control.fault_kinds, server.control.fault_seed = 0.5, ("429", "500"), 3
    client = _client(server, max_retries=6)
    replies = run(client, lambda c: asyncio.gather(*(c.text(ASK) for _ in range(6))))
    assert len(replies) == 6 and sum(server.control.faults.values()) > 0
    assert server.control.chat_requests == 6 + sum(server.control.faults.values())


def test_timeouts_are_retried(server):
    server.control.fault_rate, server.control.fault_kinds, server.control.timeout_sleep = 0.5, ("timeout",), 2.0
    server.control.fault_seed = 1
    client = _client(server, timeout=0.5, max_retries=6)
    replies = run(client, lambda c: asyncio.gather(*(c.text(ASK) for _ in range(3))))
    assert len(replies) == 3 and server.control.faults.get("timeout", 0) > 0


def test_finished_calls_come_back_from_the_cache(server, tmp_path):
    first = run(_client(server, tmp_path), lambda c: c.json(ASK, Instruction))
    requests = server.control.chat_requests
    client = _client(server, tmp_path)
    again = run(client, lambda c: c.json(ASK, Instruction))
    assert again == first and server.control.chat_requests == requests and client.stats.cached == 1


def test_request_cap_holds(server):
    server.control.chat_latency = 0.05
    client = _client(server, max_in_flight=3)
    run(client, lambda c: asyncio.gather(*(c.text(ASK) for _ in range(15))))
    assert server.control.peak_in_flight == 3 and client.stats.peak_in_flight == 3


def test_preflight_names_the_problem(server, monkeypatch):
    assert "scripted" in run(_client(server), lambda c: c.preflight())
    with pytest.raises(InputError, match="model 'gpt-x' is not served by .* set llm.model"):
        run(LLMClient(base_url=server.url, model="gpt-x"), lambda c: c.preflight())
    server.control.api_key = "secret"
    monkeypatch.setenv("SELFLONG_TEST_KEY", "wrong")
    with pytest.raises(InputError, match="rejected the API key: set the environment variable SELFLONG_TEST_KEY"):
        run(LLMClient(base_url=server.url, model="scripted", api_key_env="SELFLONG_TEST_KEY"), lambda c: c.preflight())
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(InputError, match=f"LLM endpoint {url} is unreachable"):
        run(LLMClient(base_url=url, model="m", timeout=2), lambda c: c.preflight())


def test_a_refused_cut_or_invalid_reply_is_never_cached(server, tmp_path):
    """A failure is not replayed from the cache: once the endpoint behaves, the same call is sent again."""
    import asyncio

    from agents.llm import LLMClient, LLMFailure
    from agents.schemas import Instruction

    messages = [{"role": "user", "content": "Write one realistic request <passage>alpha beta gamma</passage>"}]

    async def attempt(kind: str | None):
        server.control.fault_rate, server.control.fault_kinds = (1.0, (kind,)) if kind else (0.0, ())
        llm = LLMClient(server.url, "scripted", max_retries=0, cache_path=str(tmp_path / "cache.sqlite"))
        try:
            return await llm.json(messages, Instruction)
        except LLMFailure as err:
            return err
        finally:
            await llm.aclose()

    for kind in ("refusal", "truncate", "malformed"):
        before = server.control.chat_requests
        assert isinstance(asyncio.run(attempt(kind)), LLMFailure), kind
        sent = server.control.chat_requests - before
        assert sent >= 1
    before = server.control.chat_requests
    assert asyncio.run(attempt(None)).instruction  # sent again, not a cached failure
    assert server.control.chat_requests == before + 1
    before = server.control.chat_requests
    assert asyncio.run(attempt(None)).instruction  # now the good reply is cached
    assert server.control.chat_requests == before


def test_the_client_counts_its_retries(server):
    import asyncio

    from agents.llm import LLMClient

    server.control.fault_rate, server.control.fault_kinds, server.control.fault_seed = 0.5, ("500",), 3

    async def run():
        llm = LLMClient(server.url, "scripted", max_retries=5)
        try:
            for i in range(6):
                await llm.text([{"role": "user", "content": f"You are gathering material <text>{i} notes</text>"}])
        finally:
            await llm.aclose()
        return llm.stats

    before = server.control.chat_requests
    stats = asyncio.run(run())
    assert stats.requests == server.control.chat_requests - before
    assert stats.attempts == 6 and stats.retried == stats.requests - 6 > 0
