"""Training data at scale: preparation throughput, and the memory each rank holds while training on it.

    python benchmarks/train_data.py                        # this checkout: 1x, 10x and 100x the test mixture
    python benchmarks/train_data.py --code /tmp/old        # another checkout's train.py on the same mixtures

The test mixture is 200 conversations of 256-1024 tokens (the passkey export's 25-100% of a 1024-token row) in
one JSONL file, about 130k tokens; 10x and 100x repeat its shape with other text. For each size:
- preparation tokens/s with 1 and 2 processes (`lightning_modules.prepare`, byte tokenizer; none for `--code`);
- `train.py model=tiny stage=tiny_1k` for 20 steps on 2 ranks (`trainer.devices=2 strategy=ddp_spawn`, gloo),
  with the peak resident memory of each rank (VmHWM, polled from /proc every 50 ms) and its anonymous share
  (RssAnon: what is not a mapped file). Flat in dataset size is the goal; the ratios are against the 1x run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ("the river bank holds seven stones and a key opened the door of a long corridor where every lamp was "
         "lit by hand before dawn").split()


def write_mixture(path: Path, samples: int, seed: int) -> int:
    """`samples` conversations of 256-1024 byte tokens; returns the bytes of text written."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(samples):
            n = rng.randint(256, 1024) - 80  # the chat template adds about 80 tokens
            text = ""
            while len(text) < n:
                text += rng.choice(WORDS) + " "
            f.write(json.dumps({"messages": [{"role": "user", "content": text[:n]},
                                             {"role": "assistant", "content": str(rng.randint(10000, 99999))}]})
                    + "\n")
    return path.stat().st_size


def status(pid: int) -> dict[str, int]:
    """VmHWM and RssAnon of a process, in kB (empty once it has exited)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in lines) if k in ("VmHWM", "RssAnon")}


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def train_peak_rss(code: Path, data_dir: Path, steps: int, *overrides: str) -> tuple[list[dict[str, int]], float]:
    """Run a 2-rank train.py on `data_dir`; each process's peak VmHWM/RssAnon (kB), largest first, and the wall
    seconds."""
    cmd = [sys.executable, "train.py", "model=tiny", "stage=tiny_1k", f"stage.max_steps={steps}",
           "stage.warmup_steps=2", "stage.checkpoint_every=1000", "trainer.devices=2", "trainer.strategy=ddp_spawn",
           *overrides]
    env = {**os.environ, "SELFLONG_DATA": str(data_dir), "PYTHONPATH": str(code)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks: dict[int, dict[str, int]] = {}
    while proc.poll() is None:
        for p in descendants(proc.pid):
            s = status(p)
            if s:
                seen = peaks.setdefault(p, {"VmHWM": 0, "RssAnon": 0})
                seen["VmHWM"], seen["RssAnon"] = max(seen["VmHWM"], s["VmHWM"]), max(seen["RssAnon"], s["RssAnon"])
        time.sleep(0.05)
    out = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"train.py failed in {code}:\n{out[-3000:]}")
    ranks = sorted(peaks.values(), key=lambda s: -s["VmHWM"])
    return ranks, time.perf_counter() - t0


def main() -> None:
    """Print preparation tokens/s and per-rank peak memory while training, per mixture size."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", type=Path, default=ROOT, help="the checkout whose train.py runs")
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--samples", type=int, default=200, help="conversations in the 1x mixture")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    from lightning_modules.byte_tokenizer import byte_tokenizer
    from lightning_modules.prepare import load_stats, prepare

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale in args.scales:
            data = Path(tmp) / f"x{scale}"
            (data / "passkey").mkdir(parents=True)
            path = data / "passkey" / "train_1024.jsonl"
            write_mixture(path, args.samples * scale, seed=scale)
            prep, overrides = {}, []
            if args.code.resolve() == ROOT:
                for n in (1, 2):
                    t0 = time.perf_counter()
                    folder = prepare(byte_tokenizer(), [{"path": str(path)}], 1024, 0, True,
                                     str(data / "bench" / f"p{n}"), num_proc=n)
                    prep[n] = load_stats(folder).tokens / (time.perf_counter() - t0)
                stats = load_stats(folder)
                disk = sum(f.stat().st_size for f in folder.iterdir())
                overrides = [f"data.prepared_dir={data / 'bench' / 'p1'}"]  # training maps what was prepared
            ranks, seconds = train_peak_rss(args.code, data, args.steps, *overrides)
            results.append((scale, prep, ranks, seconds, stats if prep else None, disk if prep else 0))
            print(f"x{scale}: done in {seconds:.0f} s", file=sys.stderr, flush=True)
    print(f"code: {args.code}; 2 ranks (ddp_spawn, gloo), model=tiny, {args.steps} steps of 4 x 1024 tokens")
    print("| mixture | tokens | rows (fill) | prepared on disk | prep tok/s, 1 proc | 2 procs | "
          "peak RSS per process, MB (VmHWM) | anon MB (RssAnon) | RSS vs 1x |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = max(r["VmHWM"] for r in results[0][2])
    for scale, prep, ranks, _, stats, disk in results:
        top = max(r["VmHWM"] for r in ranks)
        tokens = f"{stats.tokens:,}" if stats else "-"
        rows = f"{stats.rows:,} ({100 * stats.fill:.1f}%)" if stats else "-"
        print(f"| {scale}x | {tokens} | {rows} | {disk / 2 ** 20:.1f} MB | "
              f"{prep.get(1, 0):,.0f} | {prep.get(2, 0):,.0f} | "
              f"{' / '.join(str(r['VmHWM'] // 1024) for r in ranks[:3])} | "
              f"{' / '.join(str(r['RssAnon'] // 1024) for r in ranks[:3])} | {top / base:.2f}x |")


if __name__ == "__main__":
    main()
