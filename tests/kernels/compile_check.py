"""Compile every Triton kernel of kernels/flash_attn.py for an NVIDIA target without a GPU
(Triton ships ptxas), catching what the CPU interpreter cannot: type and layout errors of the
compiled path. Run as a script with TRITON_INTERPRET unset: python tests/kernels/compile_check.py [sm]
"""

import importlib
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

SCALARS = {"HQ", "HKV", "GROUPS", "SQ", "SK"}


def signature(kernel, pointers: dict[str, str], constants: dict) -> tuple:
    """The JIT function under the autotuner and a signature for it (unnamed pointers fp32, ints i32)."""
    fn = kernel
    while not isinstance(fn, triton.runtime.jit.JITFunction):
        fn = fn.fn
    sig = {}
    for name in fn.arg_names:
        if name in constants:
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = pointers[name]
        elif name in ("qk_scale", "softmax_scale"):
            sig[name] = "fp32"
        elif name[0].isupper() and name not in SCALARS:
            sig[name] = "*fp32"
        else:
            sig[name] = "i32"
    return fn, sig


def main() -> None:
    """Compile each kernel for bf16 and fp16, causal with documents and plain, head dim 64 and 128."""
    capability = int(sys.argv[1]) if len(sys.argv) > 1 else 90
    fa = importlib.import_module("kernels.flash_attn")
    target = GPUTarget("cuda", capability, 32)
    done = 0
    for dt in ("bf16", "fp16"):
        ints = {"QPOS": "*i32", "KPOS": "*i32", "QDOC": "*i32", "KDOC": "*i32"}
        for kernel, typed in [
            (fa._fwd_kernel, ("Q", "K", "V", "O")),
            (fa._bwd_dkdv_kernel, ("Q", "K", "V", "DO")),
            (fa._bwd_dq_kernel, ("Q", "K", "V", "DO")),
        ]:
            for d, causal, docs in [(128, True, True), (64, False, False)]:
                consts = dict(HEAD_DIM=d, BLOCK_D=d, BLOCK_M=128 if kernel is fa._fwd_kernel else 64, BLOCK_N=64,
                              CAUSAL=causal, HAS_DOCS=docs, UPCAST=False)
                fn, sig = signature(kernel, {**ints, **{p: f"*{dt}" for p in typed}}, consts)
                triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target,
                               options={"num_warps": 8, "num_stages": 2})
                done += 1
    print(f"compiled {done} kernels for sm_{capability} with triton {triton.__version__}")


if __name__ == "__main__":
    main()
