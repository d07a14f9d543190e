"""LangGraph Studio's server (`langgraph dev`) loads our graphs from langgraph.json and runs one."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT
from tests.servers import free_port


def test_langgraph_dev_runs_the_synthesis_graph(server, topics_index, tiny_tokenizer, tmp_path):
    from langgraph_sdk import get_client

    port = free_port()
    cli = Path(sys.executable).with_name("langgraph")
    proc = subprocess.Popen(
        [str(cli), "dev", "--host", "127.0.0.1", "--port", str(port), "--no-browser", "--no-reload",
         "--config", str(ROOT / "langgraph.json")],
        cwd=ROOT, stdout=open(tmp_path / "dev.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/ok", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            raise AssertionError("langgraph dev did not start:\n" + (tmp_path / "dev.log").read_text()[-3000:])
        store, spec = topics_index
        context = {
            "llm_base_url": server.url, "llm_model": "scripted", "llm_timeout": 10.0,
            "cache_path": str(tmp_path / "cache.sqlite"),
            "store": json.dumps({"_target_": "agents.store.ChromaStore", "path": store}), "corpus": "python_docs",
            "embedder": json.dumps(spec, sort_keys=True), "tokenizer": tiny_tokenizer,
            "qfs_chunk_tokens": 512, "qfs_budget_tokens": 600, "answer_max_tokens": 256,
        }

        async def go():
            client = get_client(url=url)
            assistants = await client.assistants.search()
            assert {a["graph_id"] for a in assistants} >= {"synthesis", "backtranslation", "acer"}
            return await client.runs.wait(None, "synthesis", input={"index": 0, "target_tokens": 2500}, context=context)

        out = asyncio.run(go())
        assert out["rejection"] is None, out
        assert out["sample"]["kind"] == "long_input" and 2500 - 256 - 50 <= out["sample"]["n_tokens"] <= 2500
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
