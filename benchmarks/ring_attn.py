"""Ring attention: work balance by layout, the ring's cost against one process, its overhead at W=1.

    python benchmarks/ring_attn.py [--seq-len 4096] [--world 2] [--heads 8] [--dim 64]

1. Causal work (visible query-key pairs) per rank for W = 2..8, zigzag and contiguous: max/mean.
2. CPU, gloo: forward+backward of one ring over W spawned processes (torch reference blocks), against
   one process doing the whole sequence with the same block function. Printed: the ring's wall time
   / the single process's. On a machine with at least W free cores the ideal is about 1/W (zigzag
   splits the causal work evenly); above that is communication, the merge and stragglers.
3. GPU (when CUDA is present): `ring_attn` at world size 1 with the Triton blocks against the bare
   `flash_attn` on the same tensors — the ring's own overhead (goal: at most 5% slower).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels.ring_attn import RingComm, causal_work, ring_attn, shard_positions  # noqa: E402


def balance_table() -> None:
    """Print max/mean of per-rank causal work by layout."""
    print("causal work imbalance (max / mean over ranks), seq_len = 1024 x W")
    print(f"{'W':>3} {'zigzag':>8} {'contiguous':>11}")
    for world in range(2, 9):
        row = []
        for layout in ("zigzag", "contiguous"):
            work = causal_work(1024 * world, world, layout)
            row.append(max(work) / (sum(work) / world))
        print(f"{world:>3} {row[0]:>8.3f} {row[1]:>11.3f}")


def _tensors(seq_len: int, heads: int, dim: int, dtype=torch.float32, device="cpu"):
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, heads, seq_len, dim, generator=g, dtype=dtype, device=device)
    k = torch.randn(1, heads // 4 or 1, seq_len, dim, generator=g, dtype=dtype, device=device)
    v = torch.randn_like(k)
    return q, k, v


def _fwd_bwd(q, k, v, **kw) -> float:
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    start = time.perf_counter()
    out = ring_attn(q, k, v, **kw)
    out.backward(torch.ones_like(out))
    return time.perf_counter() - start


def _ring_worker(rank: int, world: int, port: int, args, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        q, k, v = _tensors(args.seq_len, args.heads, args.dim)
        pos = shard_positions(args.seq_len, world, rank, args.layout)
        local = [t[:, :, pos] for t in (q, k, v)]
        times = []
        for _ in range(args.repeats + 1):
            dist.barrier()
            times.append(_fwd_bwd(*local, positions=pos, comm=RingComm(None)))
            slowest = torch.tensor(times[-1])
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            times[-1] = slowest.item()
        if rank == 0:
            results.put(sorted(times[1:])[len(times[1:]) // 2])
    finally:
        dist.destroy_process_group()


def cpu_ring(args) -> None:
    """Print the gloo ring's time against one process on the whole sequence."""
    from tests.servers import free_port

    torch.set_num_threads(1)
    q, k, v = _tensors(args.seq_len, args.heads, args.dim)
    pos = torch.arange(args.seq_len)
    single = sorted(_fwd_bwd(q, k, v, positions=pos, comm=RingComm(None)) for _ in range(args.repeats))
    single_s = single[len(single) // 2]
    results = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_ring_worker, args=(args.world, free_port(), args, results), nprocs=args.world,
                       start_method="spawn")
    ring_s = results.get()
    print(f"\nCPU gloo, {args.layout}, S={args.seq_len}, Hq={args.heads}, D={args.dim}, fp32, 1 thread per rank, "
          f"{os.cpu_count()} cores")
    print(f"  one process, whole sequence:  {single_s * 1e3:8.1f} ms (fwd+bwd)")
    print(f"  ring over W={args.world} processes:     {ring_s * 1e3:8.1f} ms (slowest rank)")
    print(f"  ring / one process = {ring_s / single_s:.3f}   (ideal with W free cores: {1 / args.world:.3f})")


def gpu_overhead(args) -> None:
    """Print ring at W=1 with Triton blocks against the bare Triton kernel."""
    import triton

    from kernels import flash_attn, triton_block_attn, triton_block_attn_backward

    print(f"\nGPU: {torch.cuda.get_device_name()}, bf16, ring at W=1 (Triton blocks) vs bare flash_attn, fwd+bwd")
    print(f"{'S':>7} {'bare ms':>9} {'ring ms':>9} {'ring/bare':>10}")
    for seq_len in (8192, 16384, 32768, 65536):
        q, k, v = _tensors(seq_len, 32, 128, torch.bfloat16, "cuda")
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        pos = torch.arange(seq_len, device="cuda")
        do = torch.randn_like(q)

        def bare():
            flash_attn(q, k, v, causal=True).backward(do)

        def ring():
            ring_attn(q, k, v, positions=pos, comm=RingComm(None), block_attn_fn=triton_block_attn,
                      block_attn_backward_fn=triton_block_attn_backward).backward(do)

        bare_ms, ring_ms = triton.testing.do_bench(bare), triton.testing.do_bench(ring)
        print(f"{seq_len:>7} {bare_ms:>9.2f} {ring_ms:>9.2f} {ring_ms / bare_ms:>10.3f}")


def main() -> None:
    """Print every table this machine can measure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layout", default="zigzag", choices=["zigzag", "contiguous"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    balance_table()
    cpu_ring(args)
    if torch.cuda.is_available():
        gpu_overhead(args)
    else:
        print("\nno CUDA device: the W=1 overhead against the bare Triton kernel is measured on a GPU machine")


if __name__ == "__main__":
    main()
