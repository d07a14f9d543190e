"""Preparing a mixture once on disk: the same rows as packing it in memory, reused by later runs, rebuilt when a
setting changes, built by one process while others wait, read by ranks that each map only their rows."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from lightning_modules.byte_tokenizer import byte_tokenizer
from lightning_modules.context_parallel import IGNORE_INDEX
from lightning_modules.data import best_fit, read_messages, tokenize_messages
from lightning_modules.datamodule import StepBatchSampler
from lightning_modules.errors import ConfigError
from lightning_modules.prepare import PreparedRows, load_stats, prepare
from tests.conftest import ROOT, write_passkey

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven."}, {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Eleven."}]


def in_memory(tokenizer, sources: list[dict], seq_len: int, seed: int, mark_responses: bool) -> dict:
    """The trainer's path before preparation (every rank did this at start): read and tokenize every source,
    mix by weight with the seed, shuffle, pack best-fit into int64 rows held in memory."""
    rng = random.Random(seed)
    mixed = []
    for s in sources:
        items = [tokenize_messages(tokenizer, m, s["loss"], mark_responses) for m in read_messages(s["path"])]
        whole, part = divmod(s["weight"], 1.0)
        mixed += items * int(whole) + rng.sample(items, int(round(part * len(items))))
    rng.shuffle(mixed)
    plan = best_fit([len(s[0]) for s in mixed], seq_len)
    shape = (len(plan), seq_len)
    out = {"input_ids": np.full(shape, tokenizer.pad_token_id, dtype=np.int64),
           "labels": np.full(shape, IGNORE_INDEX, dtype=np.int64), "doc_ids": np.full(shape, -1, dtype=np.int64),
           "response": np.zeros(shape, dtype=bool)}
    for r, row in enumerate(plan):
        at = 0
        for d, i in enumerate(row):
            ids, labels, response = mixed[i]
            span = slice(at, at + len(ids))
            out["input_ids"][r, span], out["labels"][r, span] = ids, labels
            out["doc_ids"][r, span], out["response"][r, span] = d, response
            at += len(ids)
    out["samples"], out["too_long"] = len(mixed), sum(len(s[0]) > seq_len for s in mixed)
    return out


def write_mixture(folder, n_long: int = 40, n_chat: int = 30) -> list[dict]:
    """A JSONL source of long single-answer samples (blank lines between some; every tenth longer than a
    512-token row) and a parquet source of chats in several row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    long = folder / "long.jsonl"
    with open(long, "w") as f:
        for i in range(n_long):
            text = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(rng.randint(20, 130) if i % 10 != 3 else 700))
            f.write(json.dumps({"id": i, "messages": [{"role": "user", "content": f"{i}: {text}"},
                                                      {"role": "assistant", "content": f"answer {i}"}]}) + "\n")
            if i % 7 == 0:
                f.write("\n")
    chats = [[{**m, "content": m["content"] * rng.randint(1, 12)} for m in CHAT] for _ in range(n_chat)]
    short = folder / "short.parquet"
    pq.write_table(pa.table({"messages": chats}), short, row_group_size=8)
    return [{"format": "messages", "path": str(long), "weight": 2.0, "loss": "all"},
            {"format": "messages", "path": str(short), "weight": 0.5, "loss": "responses"}]


def read_all(folder) -> dict:
    """Every row of a preparation, through the Dataset the trainer reads."""
    rows = PreparedRows(folder)
    got = [rows[r] for r in range(len(rows))]
    return {k: np.stack([g[k].numpy() for g in got]) for k in ("input_ids", "labels", "doc_ids", "response")}


@pytest.mark.parametrize("mark_responses", [False, True])
def test_prepared_rows_equal_the_in_memory_packing_token_for_token(tmp_path, tiny_tokenizer, mark_responses):
    from lightning_modules.model import load_tokenizer

    sources = write_mixture(tmp_path / "data")
    for name, tokenizer in (("bytes", byte_tokenizer()), ("hf", load_tokenizer(tiny_tokenizer))):
        want = in_memory(tokenizer, sources, 512, seed=3, mark_responses=mark_responses)
        folders = [prepare(tokenizer, sources, 512, 3, mark_responses, str(tmp_path / f"p{n}" / name), num_proc=n,
                           rows_per_task=n * 5) for n in (1, 2)]
        for folder in folders:
            got = read_all(folder)
            for key in ("input_ids", "labels", "doc_ids", "response"):
                assert np.array_equal(got[key], want[key]), (name, key)
            stats = load_stats(folder)
            assert (stats.samples, stats.too_long, stats.rows) == (want["samples"], want["too_long"], len(got["labels"]))
            assert stats.tokens == int((want["doc_ids"] >= 0).sum())
            assert stats.per_source == {sources[0]["path"]: 80, sources[1]["path"]: 15}
        assert want["too_long"] > 0 and want["response"].any()  # the responses source always marks its answers
        assert (want["labels"] == IGNORE_INDEX).any() and (want["labels"] != IGNORE_INDEX).any()
        for f in ("input_ids.u32", "flags.u8", "doc_lens.u32", "row_docs.i64"):  # 1 or 2 processes: same bytes
            assert (folders[0] / f).read_bytes() == (folders[1] / f).read_bytes()


def test_a_second_run_reuses_the_preparation_and_a_changed_setting_rebuilds_it(tmp_path):
    sources = write_mixture(tmp_path / "data")
    root, tok = str(tmp_path / "prepared"), byte_tokenizer()

    def builds() -> list[dict]:
        with open(tmp_path / "prepared" / "builds.jsonl") as f:
            return [json.loads(line) for line in f]

    first = prepare(tok, sources, 512, 0, False, root)
    assert prepare(tok, sources, 512, 0, False, root, num_proc=2) == first and len(builds()) == 1
    changed = [prepare(tok, sources, 1024, 0, False, root), prepare(tok, sources, 512, 1, False, root),
               prepare(tok, sources, 512, 0, True, root),
               prepare(tok, [{**sources[0], "weight": 1.0}, sources[1]], 512, 0, False, root)]
    tok_other = byte_tokenizer()
    tok_other.chat_template = tok_other.chat_template.replace("\n\n", "\n")
    changed.append(prepare(tok_other, sources, 512, 0, False, root))
    with open(sources[0]["path"], "a") as f:  # the source file changes
        f.write(json.dumps({"messages": CHAT}) + "\n")
    changed.append(prepare(tok, sources, 512, 0, False, root))
    assert len({first, *changed}) == 7 and len(builds()) == 7
    assert [b["fingerprint"] for b in builds()] == [p.name for p in (first, *changed)]
    # a build that was killed leaves a temporary folder, and a folder without meta.json is not a preparation
    latest = changed[-1]
    killed = tmp_path / "prepared" / f"{latest.name}.tmp-99999"
    killed.mkdir()
    (latest / "meta.json").unlink()
    again = prepare(tok, sources, 512, 0, False, root)
    assert again == latest and (latest / "meta.json").is_file() and not killed.exists() and len(builds()) == 8


def test_bad_data_is_named_and_leaves_no_preparation(tmp_path):
    sources = write_mixture(tmp_path / "data")
    with open(sources[0]["path"], "a") as f:
        f.write("\n{not json\n")
    lines = open(sources[0]["path"]).read().count("\n")
    for n in (1, 2):
        with pytest.raises(ConfigError, match=rf"long.jsonl:{lines} is not JSON"):
            prepare(byte_tokenizer(), sources, 512, 0, False, str(tmp_path / "prepared"), num_proc=n, rows_per_task=7)
    assert [p.name for p in (tmp_path / "prepared").iterdir() if not p.name.endswith(".lock")] == []
    with pytest.raises(ConfigError, match=r"data file .*missing.jsonl does not exist"):
        prepare(byte_tokenizer(), [{"path": str(tmp_path / "missing.jsonl")}], 512, 0, False, str(tmp_path / "p"))
    with pytest.raises(ConfigError, match=r"no sample fits seq_len=16 \(210 were longer\)"):
        prepare(byte_tokenizer(), write_mixture(tmp_path / "d2", 100, 20), 16, 0, False, str(tmp_path / "p"))


def test_two_ranks_read_disjoint_rows_that_together_are_what_one_rank_reads(tmp_path):
    folder = prepare(byte_tokenizer(), write_mixture(tmp_path / "data", 120, 40), 512, 0, False,
                     str(tmp_path / "prepared"))
    rows = PreparedRows(folder)
    n = len(rows)
    steps = n // 4 + 3  # past the first data epoch

    def read(dp: int, rank: int, batch: int) -> list[list[tuple[int, bytes]]]:
        """Each step's rows: (row index, what the Dataset gave for it)."""
        sampler = StepBatchSampler(n, batch, dp_size=dp, dp_rank=rank, seed=5, start=0, total=steps)
        return [[(r, rows[r]["input_ids"].numpy().tobytes() + rows[r]["labels"].numpy().tobytes()) for r in batch_rows]
                for batch_rows in sampler]

    one = read(1, 0, 4)
    ranks = [read(2, r, 2) for r in (0, 1)]
    for t in range(steps):
        assert sorted(ranks[0][t] + ranks[1][t]) == sorted(one[t])
    per_epoch = n // 4  # steps of one data epoch, in which no row is read twice
    seen = [{r for t in range(per_epoch) for r, _ in ranks[k][t]} for k in (0, 1)]
    assert not seen[0] & seen[1] and len(seen[0]) + len(seen[1]) == 4 * per_epoch
    assert isinstance(rows._open()[0], np.memmap)


def test_two_processes_starting_together_build_once(tmp_path):
    """Two train.py-like processes on one mixture: one builds, the other waits for it and maps the same rows."""
    sources = write_mixture(tmp_path / "data", 400, 100)
    script = ("import json, sys; from lightning_modules.byte_tokenizer import byte_tokenizer; "
              "from lightning_modules.prepare import prepare; "
              "print(prepare(byte_tokenizer(), json.loads(sys.argv[1]), 512, 0, True, sys.argv[2]))")
    procs = [subprocess.Popen([sys.executable, "-c", script, json.dumps(sources), str(tmp_path / "prepared")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    folders = {o[0].strip().splitlines()[-1] for o in outs}
    assert len(folders) == 1
    name = os.path.basename(folders.pop())
    assert len((tmp_path / "prepared" / "builds.jsonl").read_text().splitlines()) == 1
    assert sorted(os.listdir(tmp_path / "prepared")) == sorted([name, f"{name}.lock", "builds.jsonl"])


def test_best_fit_fills_the_passkey_rows_within_one_percent_of_any_packing(tmp_path):
    """The passkey export draws lengths uniformly from 25% to 100% of a row. Two samples longer than half a row
    never share one, so no packing that keeps samples whole beats the bound below (Martello and Toth's L2);
    best-fit decreasing comes within 1% of it (greedy packing in order fills about 74%: test_data.py)."""
    path = write_passkey(tmp_path / "passkey" / "train_1024.jsonl", 1024, 600)
    folder = prepare(byte_tokenizer(), [{"path": str(path)}], 1024, 0, True, str(tmp_path / "prepared"))
    stats = load_stats(folder)
    lengths = np.asarray([int((r["doc_ids"] == d).sum()) for r in (PreparedRows(folder)[i] for i in range(stats.rows))
                          for d in range(int(r["doc_ids"].max()) + 1)])
    assert len(lengths) == 600 and lengths.min() >= 250 and lengths.max() <= 1024

    def l2_bound(cap: int) -> int:
        best = 0
        for a in range(0, cap // 2 + 1):
            big, mid = lengths[lengths > cap - a], lengths[(lengths > cap // 2) & (lengths <= cap - a)]
            small = lengths[(lengths >= a) & (lengths <= cap // 2)]
            room = len(mid) * cap - mid.sum()
            best = max(best, len(big) + len(mid) + max(0, -(-(small.sum() - room) // cap)))
        return best

    best_possible = lengths.sum() / (1024 * l2_bound(1024))
    assert stats.fill >= 0.99 * best_possible and stats.fill > 0.91, (stats.fill, best_possible)


def test_a_pickled_dataset_maps_the_files_again_instead_of_copying_them(tmp_path):
    import pickle

    rows = PreparedRows(prepare(byte_tokenizer(), write_mixture(tmp_path / "data"), 512, 0, False,
                                str(tmp_path / "prepared")))
    first = rows[0]
    blob = pickle.dumps(rows)  # what DataLoader workers and ddp_spawn ranks receive
    assert len(blob) < 2000
    again = pickle.loads(blob)[0]
    assert all(np.array_equal(first[k].numpy(), again[k].numpy()) for k in first)
