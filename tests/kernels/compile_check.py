"""Compile the Triton kernels for an NVIDIA target without a GPU (Triton ships ptxas) from launches
recorded during a real step, and report what only a GPU build shows: compile errors (e.g. mixed
operand dtypes at a `tl.dot`), async copies in the compiled loops (software pipelining), register
spills (ptxas -v).

    python tests/kernels/compile_check.py LAUNCHES.json [--sm 90] [--head-dims 64,128] [--module kernels.flash_attn]

LAUNCHES.json is a list of {"name", "types", "divisible", "ones", "constexprs"} records (see `record`).
Each launch is compiled with every autotune configuration of its kernel, at the recorded head dim and
each of `--head-dims`, with the block sizes the module uses on a GPU. Prints one JSON line per
compilation: kernel, config, ok/error, async copies, registers, spill bytes. Run with TRITON_INTERPRET
unset (the script unsets it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

_TYPES = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.int32": "i32",
          "torch.int64": "i64", "torch.float64": "fp64"}
PASS = {"_fwd_kernel": "fwd", "_bwd_dkdv_kernel": "dkdv", "_bwd_dq_kernel": "dq"}
SPACE = {"_fwd_kernel": "FWD_SPACE", "_bwd_dkdv_kernel": "DKDV_SPACE", "_bwd_dq_kernel": "DQ_SPACE"}


def record(name: str, args: dict, consts: dict) -> dict:
    """A launch as Triton's JIT specializes it: pointer dtypes, 16-divisible and ==1 integers, constexprs."""
    import torch

    types, divisible, ones = {}, [], []
    for arg, value in args.items():
        if isinstance(value, torch.Tensor):
            types[arg] = "*" + _TYPES[str(value.dtype)]
            if value.data_ptr() % 16 == 0:
                divisible.append(arg)
        elif isinstance(value, float):
            types[arg] = "fp32"
        else:
            types[arg] = "i64" if abs(int(value)) >= 2**31 else "i32"
            if int(value) == 1:
                ones.append(arg)
            elif int(value) % 16 == 0:
                divisible.append(arg)
    return {"name": name, "types": types, "divisible": divisible, "ones": ones, "constexprs": dict(consts)}


def _jit(kernel):
    import triton

    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn
    return kernel


def compile_launch(module, launch: dict, head_dim: int, num_warps: int, num_stages: int, sm: int,
                   block_sizes: dict | None = None) -> dict:
    """Compile one recorded launch for sm_`sm`; the report of `main`. `block_sizes` overrides the module's."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    fn = _jit(getattr(module, launch["name"]))
    consts = dict(launch["constexprs"], HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
                  UPCAST=False)
    if hasattr(module, "blocks") and launch["name"] in PASS:
        rows, cols = module.blocks(head_dim)[PASS[launch["name"]]]
        consts.update({"BLOCK_M": rows, "BLOCK_N": cols} if PASS[launch["name"]] != "dkdv"
                      else {"BLOCK_N": rows, "BLOCK_M": cols})
    consts.update(block_sizes or {})
    signature, attrs = {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg in consts:
            signature[arg] = "constexpr"
        elif arg in launch["ones"]:
            signature[arg] = "constexpr"
            consts[arg] = 1
        else:
            signature[arg] = launch["types"][arg]
            if arg in launch["divisible"]:
                attrs[(i,)] = [["tt.divisibility", 16]]
    report = {"kernel": launch["name"], "head_dim": head_dim, "num_warps": num_warps, "num_stages": num_stages,
              "blocks": [consts.get("BLOCK_M"), consts.get("BLOCK_N")],
              "types": {a: launch["types"][a] for a in ("Q", "K", "V", "DO", "O") if a in launch["types"]}}
    try:
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs),
                                  target=GPUTarget("cuda", sm, 32),
                                  options={"num_warps": num_warps, "num_stages": num_stages})
    except Exception as err:  # the compile error is the finding
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        return {**report, "ok": False, "error": lines[-1][:300] if lines else repr(err)}
    ttgir = compiled.asm["ttgir"]
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        arch = f"sm_{sm}a" if sm >= 90 else f"sm_{sm}"
        log = subprocess.run([get_ptxas(sm).path, "-v", "--regAllocOptLevel=2", f"--gpu-name={arch}", ptx, "-o",
                              ptx + ".o"], capture_output=True, text=True).stderr
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]
    regs = [int(x) for x in re.findall(r"Used (\d+) registers", log)]
    return {**report, "ok": True,
            "async_copies": len(re.findall(r"async_copy_global_to_local|async_tma_copy_global_to_local", ttgir)),
            "registers": max(regs) if regs else None, "spill_bytes": sum(spills)}


def main() -> None:
    """Compile every recorded launch with every configuration; print one JSON report per line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("launches")
    parser.add_argument("--sm", type=int, default=90)
    parser.add_argument("--head-dims", default="")
    parser.add_argument("--module", default="kernels.flash_attn")
    args = parser.parse_args()
    module = importlib.import_module(args.module)
    with open(args.launches) as f:
        launches = json.load(f)
    seen = set()
    for launch in launches:
        if launch["name"] not in SPACE:
            continue
        dims = [launch["constexprs"]["HEAD_DIM"]] + [int(d) for d in args.head_dims.split(",") if d]
        if hasattr(module, SPACE[launch["name"]]):
            space = [(w, s, None) for w, s in getattr(module, SPACE[launch["name"]])]
        else:  # a module whose autotuner picks block sizes too (the kernels before fixed blocks)
            space = [(c.num_warps, c.num_stages, c.kwargs) for c in getattr(module, launch["name"]).configs]
        for d in dims:
            for warps, stages, sizes in space:
                key = (launch["name"], json.dumps(launch["types"], sort_keys=True),
                       json.dumps({k: v for k, v in launch["constexprs"].items() if "BLOCK" not in k}, sort_keys=True),
                       d, warps, stages, json.dumps(sizes))
                if key in seen:
                    continue
                seen.add(key)
                print(json.dumps(compile_launch(module, launch, d, warps, stages, args.sm, sizes)), flush=True)


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU target, never interpret
    sys.path.insert(0, os.getcwd())
    main()
