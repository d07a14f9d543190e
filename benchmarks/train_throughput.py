"""Training throughput and peak activation memory against sequence length.

    python benchmarks/train_throughput.py                       # CPU: model=tiny, 512 ... 16384 tokens
    python benchmarks/train_throughput.py --gpu                 # CUDA: Llama-3.2-1B-shaped, 16k ... 128k

One training step = forward, chunked loss, backward, AdamW step, exactly what the trainer runs, on
one packed row of S tokens (one document, so attention takes its causal fast path: SDPA's flash
kernel on CPU, our Triton kernel on GPU). Each length runs in a fresh process.
CPU: activation memory = the bytes of the distinct storages autograd saves for backward during
the step (what grows with S; counted through saved-tensor hooks, as CPU has no allocator peak
counter); fitted as a + b*S + c*S^2, with the quadratic share at the largest S printed — it must
be ~0 (no S x S tensor is kept). GPU: torch.cuda.max_memory_allocated above the weights and
optimizer state, tokens/s and MFU = tokens/s * (6 N + 6 L S d) / peak.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True)


def saved_activation_mb(fn) -> float:
    """MB of distinct storages autograd saves while `fn` runs its forward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values()) / 2**20


def worker(seq_len: int, gpu: bool, steps: int) -> dict:
    """Measure one length in this process."""
    from lightning_modules.loss import chunked_cross_entropy
    from lightning_modules.model import build_model
    from lightning_modules.module import flops_per_token

    torch.manual_seed(0)
    device = "cuda" if gpu else "cpu"
    if gpu:
        base = LLAMA_1B
    else:  # the trainer's model=tiny, read from its config file
        from omegaconf import OmegaConf

        base = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml"), resolve=True)["config"]
    config = {**base, "max_position_embeddings": seq_len}
    model = build_model(None, config, 500000.0 if gpu else 10000.0, seq_len, "flash" if gpu else "sdpa").to(device)
    if gpu:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, config["vocab_size"], (1, seq_len), device=device)
    labels = torch.roll(ids, -1, 1)

    def forward() -> torch.Tensor:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=gpu):
            hidden = model.base_model(input_ids=ids).last_hidden_state
            total, count = chunked_cross_entropy(hidden, model.get_output_embeddings().weight, labels)
        return total / count

    def step() -> None:
        forward().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up; optimizer state allocated
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    seconds = sorted(times)[len(times) // 2]
    out = {"seq_len": seq_len, "tokens_per_s": seq_len / seconds}
    if gpu:
        out["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
        flops = flops_per_token(n, config["num_hidden_layers"], config["hidden_size"], seq_len)
        out["mfu"] = seq_len / seconds * flops / 989e12
    else:
        loss = []
        out["peak_mb"] = saved_activation_mb(lambda: loss.append(forward()))
        loss[0].backward()
    return out


def fit(rows: list[dict]) -> tuple[float, float, float]:
    """Least squares a + b*S + c*S^2 of peak memory (MB) against S."""
    s = torch.tensor([r["seq_len"] for r in rows], dtype=torch.float64)
    y = torch.tensor([r["peak_mb"] for r in rows], dtype=torch.float64)
    a = torch.stack([torch.ones_like(s), s, s * s], 1)
    coef = torch.linalg.lstsq(a, y[:, None]).solution[:, 0]
    return tuple(float(c) for c in coef)


def main() -> None:
    """Run each length in its own process and print the table and the fit."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--lengths", default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.gpu, args.steps)))
        return
    if args.gpu and not torch.cuda.is_available():
        print("--gpu needs a CUDA device", file=sys.stderr)
        sys.exit(2)
    default = "16384,32768,65536,131072" if args.gpu else "512,1024,2048,4096,8192,16384"
    rows = []
    for seq_len in [int(x) for x in (args.lengths or default).split(",")]:
        cmd = [sys.executable, __file__, "--worker", str(seq_len), "--steps", str(args.steps)]
        cmd += ["--gpu"] if args.gpu else []
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"S={seq_len}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    name = torch.cuda.get_device_name() if args.gpu else f"CPU, {torch.get_num_threads()} threads"
    what = "Llama-3.2-1B-shaped, bf16, Triton attention" if args.gpu else "model=tiny, fp32, SDPA causal"
    print(f"{what} on {name}")
    print(f"{'S':>7} {'tokens/s':>10} {'MB' if args.gpu else 'saved MB':>9}" + (f" {'MFU':>6}" if args.gpu else ""))
    for r in rows:
        mfu = f" {r['mfu']:>6.1%}" if args.gpu else ""
        print(f"{r['seq_len']:>7} {r['tokens_per_s']:>10.0f} {r['peak_mb']:>9.1f}{mfu}")
    if len(rows) >= 3:
        a, b, c = fit(rows)
        big = rows[-1]["seq_len"]
        share = c * big * big / max(rows[-1]["peak_mb"], 1e-9)
        print(f"memory fit: {a:.1f} MB + {b * 1024:.3f} MB per 1k tokens + {c * 1e6:.3g} MB per M tokens^2; "
              f"quadratic share at S={big}: {abs(share):.2%}")


if __name__ == "__main__":
    main()
