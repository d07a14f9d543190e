"""bf16-mixed training reaches the kernels in one dtype and matches fp32 within bf16's precision: with
`attention=flash` in one process and with `ring` (Triton blocks) over 2 gloo processes under FSDP2's
mixed-precision policy."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.servers import free_port

BF16_LOSS_TOL = 2e-2  # relative: bf16 keeps 8 bits of mantissa (~4e-3 per rounding)


def _qkv_dtypes(launches: list[dict]) -> set[tuple[str, ...]]:
    return {tuple(launch["types"][a] for a in ("Q", "K", "V")) for launch in launches if "V" in launch["types"]}


def test_autocast_gives_the_attention_mixed_dtypes_which_reach_the_kernels_as_one():
    """The finding: under bf16 autocast a Llama hands its attention fp32 q, k (RoPE's fp32 cos/sin) and bf16 v."""
    from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    from lightning_modules.attention import compute_dtype

    seen = []

    def spy(module, q, k, v, attention_mask, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype, compute_dtype(q, k, v)))
        return v.transpose(1, 2).repeat_interleave(q.shape[1] // v.shape[1], dim=2), None

    AttentionInterface.register("dtype_spy", spy)
    AttentionMaskInterface.register("dtype_spy", flash_attention_mask)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, use_cache=False)
    model = LlamaForCausalLM(config)
    model.set_attn_implementation("dtype_spy")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randint(0, 97, (1, 16)))
    assert seen == [(torch.float32, torch.float32, torch.bfloat16, torch.bfloat16)]


def test_a_bf16_mixed_flash_step_launches_one_dtype_and_matches_fp32(bf16_flash_step):
    loss16, launches16, grads16 = bf16_flash_step["bf16"]
    loss32, launches32, grads32 = bf16_flash_step["fp32"]
    assert {launch["name"] for launch in launches16} == {"_fwd_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel"}
    assert _qkv_dtypes(launches16) == {("*bf16", "*bf16", "*bf16")}
    assert _qkv_dtypes(launches32) == {("*fp32", "*fp32", "*fp32")}
    assert abs(loss16 - loss32) <= BF16_LOSS_TOL * abs(loss32), (loss16, loss32)
    for name, g32 in grads32.items():  # gradients: the same direction within bf16 noise
        cos = torch.nn.functional.cosine_similarity(grads16[name].flatten(), g32.flatten(), dim=0)
        assert cos > 0.98, (name, float(cos))


def test_the_launcher_refuses_mixed_dtypes_naming_them():
    from kernels.flash_attn import triton_block_attn

    q = torch.randn(1, 2, 32, 16)
    with pytest.raises(TypeError, match=r"one compute dtype, got q=float32, k=float32, v=bfloat16"):
        triton_block_attn(q, q, q.to(torch.bfloat16), softmax_scale=0.25, causal=True)


def _fsdp_ring_worker(rank: int, world: int, port: int, results) -> None:
    from tests.lightning_modules.steps import step

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        out = {}
        for bf16 in (False, True):
            loss, launches, _ = step("ring", bf16, cp_degree=2, ring_blocks="triton", fsdp=True)
            total = torch.tensor(loss)
            dist.all_reduce(total)  # each rank returns its share x world; the sum is the row mean x world
            out[bf16] = (float(total), sorted(_qkv_dtypes(launches)))
        dist.barrier()
        if rank == 0:
            results.put(out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_bf16_mixed_ring_step_under_fsdp_launches_one_dtype_and_matches_fp32():
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(_fsdp_ring_worker, args=(2, free_port(), results), nprocs=2, start_method="spawn")
    out = results.get()
    (loss32, dtypes32), (loss16, dtypes16) = out[False], out[True]
    assert dtypes32 == [("*fp32", "*fp32", "*fp32")]
    assert dtypes16 == [("*bf16", "*bf16", "*bf16")]  # FSDP's bf16 parameters: q, k, v all bf16
    assert abs(loss16 - loss32) <= BF16_LOSS_TOL * abs(loss32), (loss16, loss32)
