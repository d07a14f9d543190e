"""The objects a context needs (LLM client, retriever, tokenizer, instruction filter), built once
per distinct context and shared by every graph run of the process."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

from agents.instructions import InOrder, InstructionDeduper
from agents.llm import LLMClient
from agents.retriever import Retriever
from agents.tokens import ChatTokenCounter
from graphs.context import SynthContext


@dataclass
class Resources:
    """Built lazily: the retriever and tokenizer load on first use."""

    ctx: SynthContext
    llm: LLMClient
    deduper: InstructionDeduper
    order: InOrder | None = None  # set by a run: near-duplicate decisions in index order
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _retriever: Retriever | None = None
    _counter: ChatTokenCounter | None = None

    @property
    def retriever(self) -> Retriever:
        """The index of `ctx.store` (embedded or a Chroma server; embedder model loaded on first use)."""
        with self._lock:
            if self._retriever is None:
                from hydra.utils import instantiate

                embedder = instantiate(json.loads(self.ctx.embedder))
                store = instantiate(json.loads(self.ctx.store))
                self._retriever = Retriever(embedder, store, self.ctx.corpus)
            return self._retriever

    @property
    def counter(self) -> ChatTokenCounter:
        """The target model's tokenizer and chat template."""
        with self._lock:
            if self._counter is None:
                self._counter = ChatTokenCounter(self.ctx.tokenizer, self.ctx.chat_template)
            return self._counter


    def warm(self, index: bool = True) -> None:
        """Load the tokenizer and (with `index`) the embedder's model and the store now, blocking, so no sample
        waits on them."""
        self.counter.count("warm")
        if index:
            self.retriever.embedder.embed_queries(["warm"])


_shared: dict[SynthContext, Resources] = {}
_shared_lock = threading.Lock()


def resources(ctx: SynthContext) -> Resources:
    """The shared resources of a context."""
    with _shared_lock:
        if ctx not in _shared:
            llm = LLMClient(
                base_url=ctx.llm_base_url, model=ctx.llm_model, api_key_env=ctx.llm_api_key_env,
                temperature=ctx.llm_temperature, max_tokens=ctx.llm_max_tokens, timeout=ctx.llm_timeout,
                max_retries=ctx.llm_max_retries, max_in_flight=ctx.llm_max_in_flight,
                cache_path=ctx.cache_path, structured_outputs=ctx.llm_structured_outputs,
            )
            _shared[ctx] = Resources(ctx, llm, InstructionDeduper(ctx.dedup_threshold))
        return _shared[ctx]
