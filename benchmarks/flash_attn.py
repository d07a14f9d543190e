"""Flash attention speed: our Triton kernel against PyTorch's scaled_dot_product_attention.

    python benchmarks/flash_attn.py [--dtype bf16] [--lengths 1024,2048,...] [--batch-tokens 16384]

For each sequence length, head dim (64, 128) and causal or not, prints TFLOP/s of forward,
backward and forward+backward for ours and for SDPA's flash and cuDNN backends (where present), and
the ratio ours / SDPA-flash. FLOPs: forward = 4·B·H·S²·D (two matmuls, 2 FLOPs per multiply-add),
halved when causal; backward = 2.5 × forward (five matmuls instead of two). Needs CUDA.
"""

import argparse
import math
import sys

import torch


def flops(b: int, h: int, s: int, d: int, causal: bool, mode: str) -> float:
    """FLOPs of one attention call (see the module docstring)."""
    fwd = 4 * b * h * s * s * d * (0.5 if causal else 1.0)
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[mode]


def time_ms(fn) -> float:
    """Median milliseconds of `fn` (triton.testing.do_bench)."""
    import triton

    return triton.testing.do_bench(fn, warmup=25, rep=100)


def measure(attn, q, k, v, do, mode: str) -> float:
    """Milliseconds of one mode of an attention function."""
    if mode == "fwd":
        return time_ms(lambda: attn(q, k, v))
    out = attn(q, k, v)
    if mode == "bwd":
        return time_ms(lambda: out.backward(do, retain_graph=True))
    return time_ms(lambda: attn(q, k, v).backward(do))


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768,65536,131072")
    parser.add_argument("--batch-tokens", type=int, default=16384, help="B = max(1, this / S)")
    parser.add_argument("--heads", type=int, default=16, help="query heads (K/V heads = heads / 4)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/flash_attn.py needs a CUDA GPU (run it on the GPU machine)", file=sys.stderr)
        sys.exit(2)
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from kernels import flash_attn

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
          f"{args.dtype}")
    print("FLOPs: fwd = 4*B*H*S^2*D (x0.5 causal); bwd = 2.5 x fwd; TFLOP/s = FLOPs / median time")
    backends = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}
    header = f"{'S':>7} {'D':>4} {'causal':>6} {'mode':>8} {'ours':>8}" + "".join(f"{n:>12}" for n in backends)
    print(header + f"{'ours/flash':>12}")
    hkv = max(1, args.heads // 4)
    for s in (int(x) for x in args.lengths.split(",")):
        b = max(1, args.batch_tokens // s)
        for d in (64, 128):
            for causal in (False, True):
                q = torch.randn(b, args.heads, s, d, device="cuda", dtype=dtype, requires_grad=True)
                k = torch.randn(b, hkv, s, d, device="cuda", dtype=dtype, requires_grad=True)
                v = torch.randn(b, hkv, s, d, device="cuda", dtype=dtype, requires_grad=True)
                do = torch.randn_like(q)

                def ours(q, k, v):
                    return flash_attn(q, k, v, causal=causal)

                def make_sdpa(backend):
                    def run(q, k, v):
                        with sdpa_kernel(backend):
                            return torch.nn.functional.scaled_dot_product_attention(
                                q, k, v, is_causal=causal, enable_gqa=True)
                    return run

                for mode in ("fwd", "bwd", "fwd+bwd"):
                    f = flops(b, args.heads, s, d, causal, mode)
                    row = {"ours": f / measure(ours, q, k, v, do, mode) / 1e9}
                    for name, backend in backends.items():
                        try:
                            row[name] = f / measure(make_sdpa(backend), q, k, v, do, mode) / 1e9
                        except RuntimeError:
                            row[name] = math.nan
                    ratio = row["ours"] / row["sdpa-flash"]
                    print(f"{s:>7} {d:>4} {str(causal):>6} {mode:>8} {row['ours']:>8.1f}"
                          + "".join(f"{row[n]:>12.1f}" for n in backends) + f"{ratio:>12.2f}")
                del q, k, v, do
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
