"""Loading a stage's model without a full fp32 copy per rank: one process reads the checkpoint straight into
its fp32 weights, and under FSDP2 (gloo ranks on the CPU) each rank makes and reads only its own rows. Either
way the weights are exactly the checkpoint's (bf16 values held in fp32), tied weights stay tied and the rotary
tables are the stage's θ; a random init under FSDP is the one one process draws."""

from __future__ import annotations

import io

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM

from lightning_modules.errors import ConfigError
from lightning_modules.model import build_model, set_rope_theta
from tests.servers import free_port

# odd sizes: FSDP's dim-0 shards of the embeddings (97 rows) and the MLP (45) are uneven over 2 ranks
CONFIG = dict(vocab_size=97, hidden_size=32, intermediate_size=45, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, attention_dropout=0.0)
RANDOM = {**CONFIG, "tie_word_embeddings": True}  # as model=tiny
THETA, SEQ = 40000.0, 512


def _checkpoint(folder, tie: bool, dtype: torch.dtype = torch.bfloat16, seed: int = 0, shard: str | None = None):
    """A random Llama saved in `dtype` (bf16 as Llama-3 ships), with a generation_config of its own."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG, tie_word_embeddings=tie)).to(dtype)
    model.generation_config = GenerationConfig(eos_token_id=[3, 5], temperature=0.6, top_p=0.9, do_sample=True)
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    return str(folder)


def _inv_freq(theta: float, dim: int = 8) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)


def _expected(folder) -> dict[str, torch.Tensor]:
    """What the old path held: from_pretrained in fp32."""
    return {k: v.detach().clone() for k, v in
            AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict().items()}


@pytest.mark.parametrize("tie", [True, False])
def test_one_process_reads_the_checkpoint_into_fp32_weights_as_from_pretrained(tmp_path, tie):
    folder = _checkpoint(tmp_path, tie)
    model = build_model(folder, None, THETA, SEQ, "sdpa")
    old = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    saved = load_file(tmp_path / "model.safetensors")
    assert model.base_dtype == torch.bfloat16 and not model.training
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu", name
        assert torch.equal(tensor, old.state_dict()[name]), name
    assert torch.equal(model.model.embed_tokens.weight, saved["model.embed_tokens.weight"].float())
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    assert set(saved) == set(model.state_dict()) - ({"lm_head.weight"} if tie else set())
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, _inv_freq(THETA), rtol=0, atol=0)
    torch.testing.assert_close(model.model.rotary_emb.original_inv_freq, _inv_freq(THETA), rtol=0, atol=0)
    # what export and serving read: the same config and generation config as from_pretrained gives
    set_theta = old.config.rope_parameters | {"rope_theta": THETA}
    old.config.rope_parameters, old.config.max_position_embeddings, old.config.use_cache = set_theta, SEQ, False
    assert model.config.to_dict() == old.config.to_dict()
    assert model.generation_config.to_dict() == old.generation_config.to_dict()
    assert model.generation_config.eos_token_id == [3, 5]
    ids = torch.arange(40).unsqueeze(0) % 97
    with torch.no_grad():
        set_rope_theta(old, THETA, SEQ)
        torch.testing.assert_close(model(input_ids=ids).logits, old(input_ids=ids).logits, rtol=0, atol=0)


def test_a_sharded_checkpoint_and_one_without_the_base_prefix_load_the_same(tmp_path):
    folder = _checkpoint(tmp_path / "sharded", tie=False, shard="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    model = build_model(folder, None, THETA, SEQ, "sdpa")
    for name, tensor in _expected(folder).items():
        assert torch.equal(model.state_dict()[name], tensor), name
    folder = _checkpoint(tmp_path / "base", tie=True)  # a base model's keys: embed_tokens.weight, layers.0...
    state = load_file(tmp_path / "base" / "model.safetensors")
    save_file({k.removeprefix("model."): v for k, v in state.items()}, tmp_path / "base" / "model.safetensors",
              metadata={"format": "pt"})
    model = build_model(folder, None, THETA, SEQ, "sdpa")
    for name, tensor in state.items():
        assert torch.equal(model.state_dict()[name], tensor.float()), name


def test_meta_builds_no_weights_and_a_missing_tensor_is_named(tmp_path):
    folder = _checkpoint(tmp_path, tie=False)
    model = build_model(folder, None, THETA, SEQ, "sdpa", device="meta")
    assert all(p.is_meta for p in model.parameters()) and model.base_dtype == torch.bfloat16
    state = load_file(tmp_path / "model.safetensors")
    del state["lm_head.weight"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="lacks 1 of the model's tensors: lm_head.weight"):
        build_model(folder, None, THETA, SEQ, "sdpa")


def test_a_checkpoint_without_safetensors_is_still_read(tmp_path):
    folder = _checkpoint(tmp_path, tie=True)
    state = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    model = build_model(folder, None, THETA, SEQ, "sdpa")
    assert torch.equal(model.model.embed_tokens.weight, state["model.embed_tokens.weight"].float())
    assert model.lm_head.weight is model.model.embed_tokens.weight


# --- FSDP2 over gloo ranks ---------------------------------------------------------------------------------


def _full(model) -> dict[str, torch.Tensor]:
    """Every rank's view of the gathered weights (collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))


def _fsdp_worker(rank: int, world: int, port: int, cases: dict, results) -> None:
    from lightning_modules.module import LongContextLM
    from tests.lightning_modules.steps import batch

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        out = {}
        for case, init_from in cases.items():
            torch.manual_seed(1234)
            module = LongContextLM(init_from=init_from, model_config=None if init_from else RANDOM,
                                   rope_theta=THETA, seq_len=SEQ, fsdp=True, loss_chunk_tokens=64)
            module.configure_model()
            model = module.model
            params = dict(model.named_parameters())
            local = {n: p.to_local().numel() for n, p in params.items()}
            # one step's loss and an embedding gradient: FSDP's lazy init after the meta build, ties included
            b = batch(64, rows=2, seed=3)
            b = {k: v % 97 if k == "input_ids" else v for k, v in b.items()}
            b["labels"] = torch.where(b["labels"] >= 0, b["labels"] % 97, b["labels"])
            loss = module.training_step(b, 0)
            loss.backward()
            grad = model.model.embed_tokens.weight.grad.full_tensor()
            state = _full(model)
            rng = torch.get_rng_state()
            gathered = [None] * world
            dist.all_gather_object(gathered, rng)
            out[case] = dict(
                state=state if rank == 0 else None, loss=float(loss.detach()), grad=grad,
                local=local, shapes={n: p.shape for n, p in params.items()},
                dtypes={str(p.dtype) for p in params.values()}, base_dtype=model.base_dtype,
                tied=model.lm_head.weight is model.model.embed_tokens.weight, names=sorted(params),
                inv_freq=model.model.rotary_emb.inv_freq.clone(),
                original_inv_freq=model.model.rotary_emb.original_inv_freq.clone(),
                rng_same=all(torch.equal(g, gathered[0]) for g in gathered), rng=rng)
        buffer = io.BytesIO()  # bytes, not shared-memory tensors, which die with this process
        torch.save(out, buffer)
        results.put((rank, buffer.getvalue()))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _one_process(init_from: str | None) -> dict:
    """The same stage in one process: the reference for weights, loss and gradient."""
    from lightning_modules.module import LongContextLM
    from tests.lightning_modules.steps import batch

    torch.manual_seed(1234)
    module = LongContextLM(init_from=init_from, model_config=None if init_from else RANDOM, rope_theta=THETA,
                           seq_len=SEQ, loss_chunk_tokens=64)
    module.configure_model()
    rng = torch.get_rng_state()
    state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    b = batch(64, rows=2, seed=3)
    b = {k: v % 97 if k == "input_ids" else v for k, v in b.items()}
    b["labels"] = torch.where(b["labels"] >= 0, b["labels"] % 97, b["labels"])
    loss = module.training_step(b, 0)
    loss.backward()
    return dict(state=state, loss=float(loss.detach()), grad=module.model.model.embed_tokens.weight.grad, rng=rng)


@pytest.mark.slow
def test_fsdp_ranks_hold_only_their_rows_of_exactly_the_checkpoint_and_of_one_process_random_init(tmp_path):
    world = 2
    cases = {"bf16_tied": _checkpoint(tmp_path / "tied", tie=True),
             "fp32_untied": _checkpoint(tmp_path / "untied", tie=False, dtype=torch.float32, seed=1),
             "random": None}
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    workers = mp.start_processes(_fsdp_worker, args=(world, free_port(), cases, results), nprocs=world,
                                 start_method="spawn", join=False)
    by_rank = {rank: torch.load(io.BytesIO(out), weights_only=False)
               for rank, out in (results.get() for _ in range(world))}  # before join: a full pipe blocks a worker
    while not workers.join():
        pass
    for case, init_from in cases.items():
        got = [by_rank[r][case] for r in range(world)]
        want = _one_process(init_from)
        if init_from is not None:  # exactly the checkpoint's values, as from_pretrained in fp32 reads them
            expected = _expected(init_from)
            assert set(want["state"]) == set(expected)
            for name, tensor in expected.items():
                assert torch.equal(want["state"][name], tensor), (case, name)
        for name, tensor in want["state"].items():  # the gathered shards: the unsharded model's weights
            assert torch.equal(got[0]["state"][name], tensor), (case, name)
        for r in range(world):
            g = got[r]
            assert g["dtypes"] == {"torch.float32"}, case  # fp32 master weights
            assert g["base_dtype"] == (torch.bfloat16 if case == "bf16_tied" else torch.float32), case
            assert g["tied"] == (case != "fp32_untied"), case
            torch.testing.assert_close(g["inv_freq"], _inv_freq(THETA), rtol=0, atol=0)
            torch.testing.assert_close(g["original_inv_freq"], _inv_freq(THETA), rtol=0, atol=0)
            for name, shape in g["shapes"].items():  # the rank's rows only: torch.chunk's piece of dim 0
                chunk = -(-shape[0] // world)
                assert g["local"][name] == max(0, min(chunk, shape[0] - r * chunk)) * shape[1:].numel(), name
            # the rank's loss is its share x world of the row mean, so equal to one process's on the same rows
            torch.testing.assert_close(g["loss"], want["loss"], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(g["grad"], want["grad"], rtol=1e-4, atol=1e-6)
        assert sum(by_rank[r][case]["local"]["model.embed_tokens.weight"] for r in range(world)) == 97 * 32
        if init_from is None:  # every rank leaves with the random-number state one process has after its init
            assert got[0]["rng_same"] and torch.equal(got[0]["rng"], want["rng"])
