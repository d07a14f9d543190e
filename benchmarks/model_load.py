"""Peak CPU memory per rank of loading a Llama-3.2-1B-shaped model for training, the old way and the new.

    python benchmarks/model_load.py                  # 2 gloo ranks on the CPU, checkpoint in /tmp/selflong_llama1b
    python benchmarks/model_load.py --world 2 --no-random --dir /data/llama1b

The checkpoint (random weights, bf16 safetensors, tied embeddings, 2.5 GB) is written once. Each case runs in
fresh processes, one per rank (torch.distributed over gloo, FSDP2 as `trainer=fsdp` shards it: one unit per
decoder layer and the root):

- old: what `LongContextLM.configure_model` did before (kept here): every rank `from_pretrained(..., dtype=fp32)`
  (or `LlamaForCausalLM(config)` for a random init), i.e. the whole fp32 model on the CPU, then `fully_shard`;
- new: `LongContextLM.configure_model()` as it is now: meta build, `fully_shard`, then each rank makes and reads
  its own rows only (a random init: rank 0 draws it whole and scatters).

Per rank: VmHWM (the kernel's RSS high-water mark, which counts the mmap'ed checkpoint pages a rank touched),
the peak of RssAnon (sampled every 5 ms: memory the process itself allocated), RssAnon held after the load
and the load's seconds; ratios new / old. One process without FSDP (old: from_pretrained in fp32; new:
`build_model`) is measured too: it holds the whole fp32 model by design. A checksum of every rank's fp32
shard shows old and new hold the same weights.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
                max_position_embeddings=131072, rope_theta=500000.0, attention_dropout=0.0)
THETA, SEQ = 500000.0, 8192


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmHWM, VmRSS, RssAnon, RssFile)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class AnonPeak:
    """The highest RssAnon seen by a thread sampling /proc/self/status every 5 ms."""

    def __init__(self) -> None:
        self.peak_kb, self._stop = status_kb("RssAnon"), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_kb = max(self.peak_kb, status_kb("RssAnon"))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak_kb, status_kb("RssAnon"))


def write_checkpoint(folder: Path) -> None:
    """A random Llama-3.2-1B-shaped model as one bf16 model.safetensors (tied: no lm_head.weight)."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**LLAMA_1B, dtype="bfloat16")
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaForCausalLM(config).state_dict().items() if k != "lm_head.weight"}
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.ones(s) if k.endswith("norm.weight") else torch.randn(s, generator=g) * 0.02)
             .to(torch.bfloat16) for k, s in shapes.items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    config.save_pretrained(folder)  # last: its presence marks a complete checkpoint


def old_build_model(init_from: str | None, config: dict | None, rope_theta: float, max_position_embeddings: int):
    """`build_model` as it was (HEAD before this change), sdpa attention: the whole model in fp32 on the CPU."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from lightning_modules.model import _as_dtype, set_rope_theta

    if init_from is not None:
        saved = json.loads((Path(init_from) / "config.json").read_text())
        base_dtype = saved.get("dtype") or saved.get("torch_dtype")
        model = AutoModelForCausalLM.from_pretrained(init_from, attn_implementation="sdpa", dtype=torch.float32)
    else:
        model = LlamaForCausalLM(LlamaConfig(**config))
        model.set_attn_implementation("sdpa")
        base_dtype = model.config.dtype
    set_rope_theta(model, rope_theta, max_position_embeddings)
    model.config.use_cache = False
    model.base_dtype = _as_dtype(base_dtype)
    return model


def old_configure_model(init_from: str | None, config: dict | None, world: int):
    """The old `configure_model` under FSDP: every rank builds the whole fp32 model, then fully_shard."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from lightning_modules.loss import ChunkedLossLM
    from lightning_modules.module import mixed_precision_policy

    model = old_build_model(init_from, config, THETA, SEQ)
    model.train()
    net = ChunkedLossLM(model)
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.base_model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mixed_precision_policy(None))
    fully_shard(net, mesh=mesh, mp_policy=mixed_precision_policy(None))
    return model


def new_configure_model(init_from: str | None, config: dict | None, fsdp: bool):
    from lightning_modules.module import LongContextLM

    module = LongContextLM(init_from=init_from, model_config=config, rope_theta=THETA, seq_len=SEQ, fsdp=fsdp)
    module.configure_model()
    return module.model


def checksum(model) -> float:
    """Sum over this rank's parameters (its shard under FSDP) of x_i * (1 + i mod 7), in float64, 4M at a time."""
    total, step = 0.0, 1 << 22
    weights = 1 + torch.arange(step, dtype=torch.float64) % 7
    for p in model.parameters():
        flat = (p.to_local() if hasattr(p, "to_local") else p).detach().reshape(-1)
        for start in range(0, flat.numel(), step):
            piece = flat[start:start + step].double()
            total += float(piece @ weights[:piece.numel()])
    return total


def rank_worker(rank: int, world: int, port: int, way: str, init_from: str | None, fsdp: bool, results) -> None:
    """Load the model one way in this process (a rank) and report its memory."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if fsdp:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    config = None if init_from else {k: v for k, v in LLAMA_1B.items()}
    import lightning_modules.module  # noqa: F401 (imports counted in the baseline, not the load)
    import transformers  # noqa: F401
    gc.collect()
    before = {"rss_mb": status_kb("VmRSS") / 1024, "hwm_mb": status_kb("VmHWM") / 1024}
    sampler = AnonPeak()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    if way == "old":
        model = old_configure_model(init_from, config, world) if fsdp else old_build_model(init_from, config,
                                                                                            THETA, SEQ)
    else:
        model = new_configure_model(init_from, config, fsdp)
    if fsdp:
        dist.barrier()
    seconds = time.perf_counter() - t0
    gc.collect()
    out = dict(rank=rank, seconds=seconds, before=before, hwm_mb=status_kb("VmHWM") / 1024,
               anon_peak_mb=sampler.stop() / 1024, anon_held_mb=status_kb("RssAnon") / 1024,
               file_mb=status_kb("RssFile") / 1024, checksum=checksum(model),
               dtypes=sorted({str(p.dtype) for p in model.parameters()}), base_dtype=str(model.base_dtype),
               tied=model.lm_head.weight is model.model.embed_tokens.weight,
               inv_freq_1=float(model.model.rotary_emb.inv_freq[1]))
    results.put(json.dumps(out))
    if fsdp:
        dist.barrier()
        dist.destroy_process_group()


def run_case(way: str, init_from: str | None, fsdp: bool, world: int) -> list[dict]:
    from tests.servers import free_port

    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    n = world if fsdp else 1
    procs = mp.start_processes(rank_worker, args=(n, free_port(), way, init_from, fsdp, results), nprocs=n,
                               start_method="spawn", join=False)
    rows = sorted((json.loads(results.get()) for _ in range(n)), key=lambda r: r["rank"])
    while not procs.join():
        pass
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/tmp/selflong_llama1b", help="where the bf16 checkpoint is (written once)")
    parser.add_argument("--world", type=int, default=2, help="FSDP ranks (gloo processes)")
    parser.add_argument("--no-random", action="store_true", help="skip the random-init case")
    parser.add_argument("--no-single", action="store_true", help="skip the one-process case")
    args = parser.parse_args()
    folder = Path(args.dir)
    if not (folder / "config.json").is_file():
        t0 = time.perf_counter()
        proc = mp.get_context("spawn").Process(target=write_checkpoint, args=(folder,))
        proc.start()
        proc.join()
        print(f"wrote {folder} in {time.perf_counter() - t0:.0f} s")
    size = (folder / "model.safetensors").stat().st_size / 2**30
    print(f"checkpoint: {folder}/model.safetensors, {size:.2f} GiB bf16; fp32 weights: {2 * size:.2f} GiB")
    cases = [("checkpoint, FSDP", str(folder), True)]
    if not args.no_random:
        cases.append(("random init, FSDP", None, True))
    if not args.no_single:
        cases.append(("checkpoint, one process", str(folder), False))
    header = (f"{'case':<24} {'rank':>4} {'way':>4} {'VmHWM MB':>9} {'peak RssAnon MB':>16} {'held RssAnon MB':>16} "
              f"{'load s':>7} {'HWM new/old':>12} {'anon new/old':>13}")
    lines = []
    for name, init_from, fsdp in cases:
        got = {way: run_case(way, init_from, fsdp, args.world) for way in ("old", "new")}
        for old, new in zip(got["old"], got["new"]):
            same = abs(old["checksum"] - new["checksum"]) <= 1e-9 * max(1.0, abs(old["checksum"]))
            for way, row in (("old", old), ("new", new)):
                ratios = (f"{new['hwm_mb'] / old['hwm_mb']:>12.2f} {new['anon_peak_mb'] / old['anon_peak_mb']:>13.2f}"
                          if way == "new" else "")
                lines.append(f"{name:<24} {row['rank']:>4} {way:>4} {row['hwm_mb']:>9.0f} {row['anon_peak_mb']:>16.0f} "
                             f"{row['anon_held_mb']:>16.0f} {row['seconds']:>7.1f} {ratios}")
            print(f"{name}, rank {new['rank']}: baseline after imports VmRSS {new['before']['rss_mb']:.0f} MB; "
                  f"same weights as old: {same}; new {new['dtypes']} (base {new['base_dtype']}), "
                  f"tied {new['tied']}, inv_freq[1] {new['inv_freq_1']:.6g} (old {old['inv_freq_1']:.6g})",
                  flush=True)
    print()
    print(header)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
