"""The endpoint check before a run, over real HTTP with the real `openai` client: against the scripted server
with a broken or empty `/v1/models`, and against `transformers serve` of a tiny checkpoint without a Hugging Face
cache folder (transformers 5.23 answers `/v1/models` with 500 there, chat completions work)."""

import asyncio

import pytest

from agents.errors import InputError
from agents.llm import LLMClient
from tests.servers import free_port

ASK = [{"role": "user", "content": "Say OK."}]


def _run(client: LLMClient, fn):
    async def go():
        try:
            return await fn(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


def _client(url: str, model: str = "scripted", **kw) -> LLMClient:
    kw.setdefault("timeout", 10.0)
    return LLMClient(base_url=url, model=model, max_retries=1, **kw)


@pytest.mark.parametrize("status", [500, 404, 405])
def test_a_models_list_that_errors_falls_back_to_one_uncounted_uncached_chat_request(server, tmp_path, status):
    server.control.models_status = status
    client = _client(server.url, cache_path=str(tmp_path / "cache.sqlite"))
    assert _run(client, lambda c: c.preflight()) == []
    assert server.control.chat_requests == 1  # the 1-token probe
    assert (client.stats.calls, client.stats.requests, client.stats.attempts, client.stats.failures) == (0, 0, 0, 0)
    assert len(client.cache) == 0
    client = _client(server.url, cache_path=str(tmp_path / "cache.sqlite"))
    assert _run(client, lambda c: c.text(ASK)) and (client.stats.calls, client.stats.requests) == (1, 1)


def test_an_empty_models_list_falls_back_to_one_chat_request(server):
    server.control.models_empty = True
    assert _run(_client(server.url), lambda c: c.preflight()) == []
    assert server.control.chat_requests == 1


def test_the_fallback_still_refuses_a_wrong_key_an_unknown_model_and_a_failing_server(server, monkeypatch):
    server.control.models_status = 500
    server.control.api_key = "secret"
    monkeypatch.setenv("SELFLONG_TEST_KEY", "wrong")
    with pytest.raises(InputError, match="rejected the API key: set the environment variable SELFLONG_TEST_KEY"):
        _run(_client(server.url, api_key_env="SELFLONG_TEST_KEY"), lambda c: c.preflight())
    monkeypatch.setenv("SELFLONG_TEST_KEY", "secret")
    assert _run(_client(server.url, api_key_env="SELFLONG_TEST_KEY"), lambda c: c.preflight()) == []

    server.control.api_key, server.control.served_models = None, ("scripted",)
    with pytest.raises(InputError, match=r"model 'gpt-x' is not served by .*does not exist.*: set llm.model"):
        _run(_client(server.url, model="gpt-x"), lambda c: c.preflight())

    server.control.served_models, server.control.fault_rate, server.control.fault_kinds = None, 1.0, ("500",)
    with pytest.raises(InputError, match=rf"{server.url}/models answered HTTP 500, and a 1-token chat request for "
                                         r"model 'scripted' answered HTTP 500 .*check llm.base_url"):
        _run(_client(server.url), lambda c: c.preflight())


def test_a_models_list_without_our_model_is_still_refused_without_a_chat_request(server):
    with pytest.raises(InputError, match="model 'gpt-x' is not served by .* set llm.model"):
        _run(_client(server.url, model="gpt-x"), lambda c: c.preflight())
    assert server.control.chat_requests == 0


def test_an_unreachable_endpoint_is_named(server):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(InputError, match=f"LLM endpoint {url} is unreachable"):
        _run(_client(url, timeout=2.0), lambda c: c.preflight())


def _bigram_checkpoint(path) -> None:
    """A tiny Llama that answers every prompt with "OK" and then its end-of-turn token: its layers add nothing to
    the residual stream, so each next token is a function of the current one (any -> O -> K -> <|eot_id|>)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lightning_modules.byte_tokenizer import VOCAB_SIZE, byte_tokenizer

    tok = byte_tokenizer()
    o, k, eot = ord("O"), ord("K"), tok.eos_token_id
    config = LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=eot, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        embed.zero_()
        head.zero_()
        embed[:, 0] = 1.0
        embed[o], embed[k] = torch.eye(64)[1], torch.eye(64)[2]
        head[o, 0], head[k, 1], head[eot, 2] = 10.0, 10.0, 10.0
    model.save_pretrained(path)
    tok.save_pretrained(path)


@pytest.fixture(scope="module")
def served_without_hf_cache(tmp_path_factory):
    """`transformers serve` of the "OK" checkpoint on CPU, with HF_HOME and HF_HUB_CACHE naming a folder that does
    not exist: (base URL, model name)."""
    from evals.serve import serve_checkpoint

    root = tmp_path_factory.mktemp("preflight-serve")
    _bigram_checkpoint(root / "hf")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(root / "no-hf-home"))
        mp.setenv("HF_HUB_CACHE", str(root / "no-hf-home" / "hub"))
        with serve_checkpoint(str(root / "hf"), device="cpu", startup_timeout=300) as url:
            yield url, str(root / "hf")


@pytest.mark.slow
def test_transformers_serve_without_a_hub_cache_passes_the_preflight_and_answers(served_without_hf_cache):
    url, model = served_without_hf_cache
    client = LLMClient(base_url=url, model=model, max_retries=1, timeout=120.0, max_tokens=8)

    async def preflight_then_text(c: LLMClient) -> str:
        await c.preflight()
        return await c.text(ASK)

    assert _run(client, preflight_then_text) == "OK"
    assert (client.stats.calls, client.stats.requests) == (1, 1)  # the preflight's probe is not counted
    with pytest.raises(InputError, match=r"model 'not/served' is not served by .*: set llm.model"):
        _run(LLMClient(base_url=url, model="not/served", max_retries=1, timeout=120.0), lambda c: c.preflight())
