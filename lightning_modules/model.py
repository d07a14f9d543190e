"""Loading a Llama-family causal LM for a stage: weights, RoPE base, context length, attention.

A checkpoint's weights are read once, in its own dtype, straight into the fp32 tensors they train in: on the
target device for one process or DDP (no fp32 copy on the CPU first), and under FSDP2 each rank reads and holds
its own rows only (`build_model(..., device="meta")`, `fully_shard`, then `load_shards`)."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from torch import nn
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig,
                          LlamaForCausalLM, PreTrainedModel)

from lightning_modules import attention as attention_impls
from lightning_modules.byte_tokenizer import byte_tokenizer
from lightning_modules.errors import ConfigError

# config name -> transformers attn_implementation ("flash" is ours; transformers reserves names with "flash")
ATTENTION = {"sdpa": "sdpa", "eager": "eager", "flash": "triton_attn", "ring": "ring"}


def load_tokenizer(spec: str):
    """`bytes` (the byte tokenizer of `model=tiny`) or a local folder with a Hugging Face tokenizer."""
    if spec == "bytes":
        return byte_tokenizer()
    if not (Path(spec) / "tokenizer_config.json").is_file():
        raise ConfigError(f"no tokenizer in {spec} (tokenizer_config.json missing); set model.tokenizer to a "
                          f"local model folder")
    tokenizer = AutoTokenizer.from_pretrained(spec)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def set_rope_theta(model: PreTrainedModel, rope_theta: float, max_position_embeddings: int) -> None:
    """Give an existing model a new RoPE base and context length.

    transformers 5 keeps θ in `config.rope_parameters`; the rotary modules' `inv_freq` buffers are
    computed at construction and are not in the state dict, so the modules are rebuilt here (on the device
    their buffers are on; this also refills them after `to_empty`).
    """
    config = model.config
    config.rope_parameters["rope_theta"] = float(rope_theta)
    config.max_position_embeddings = int(max_position_embeddings)
    for name, module in list(model.named_modules()):
        if _is_rotary(module):
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            rebuilt = type(module)(config=config).to(module.inv_freq.device)
            setattr(parent, name.rpartition(".")[2], rebuilt)


def _is_rotary(module: nn.Module) -> bool:
    return hasattr(module, "inv_freq") and hasattr(module, "config")


def checkpoint_files(init_from: str | None) -> dict[str, Path]:
    """Tensor name -> safetensors file of a local checkpoint; {} for a random init or a folder without
    safetensors (which `from_pretrained` then reads whole)."""
    if init_from is None:
        return {}
    folder = Path(init_from)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return {name: folder / file for name, file in json.loads(index.read_text())["weight_map"].items()}
    files = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as f:
            files.update((name, path) for name in f.keys())
    return files


def build_model(init_from: str | None, config: dict | None, rope_theta: float, max_position_embeddings: int,
                attention: str = "sdpa", device: torch.device | str | None = None) -> PreTrainedModel:
    """The stage's starting model: the checkpoint in folder `init_from`, or a random init from `config` (a
    LlamaConfig's keys) when `init_from` is None; then the stage's θ, length and attention.

    Training runs on fp32 weights whatever the checkpoint holds; the checkpoint's own dtype (`dtype` or
    `torch_dtype` in its config.json, bf16 for Llama-3) is kept as `model.base_dtype`, the dtype the stage's
    export is written in. A random init takes `dtype` from `config` when set there, else float32.

    `device`: where the fp32 weights are made (None: the current default device, which Lightning's strategy
    sets). A checkpoint's safetensors are read tensor by tensor into weights already there, so no full copy
    is made anywhere else. "meta": no weights at all, for `load_shards` to make after `fully_shard`."""
    if attention not in ATTENTION:
        raise ConfigError(f"attention must be one of {sorted(ATTENTION)}, not {attention!r}")
    attention_impls.register()
    impl = ATTENTION[attention]
    device = torch.get_default_device() if device is None else torch.device(device)
    if init_from is not None:
        if not (Path(init_from) / "config.json").is_file():
            raise ConfigError(f"no model in {init_from} (config.json missing)")
        saved = json.loads((Path(init_from) / "config.json").read_text())  # loading overwrites its dtype
        base_dtype = saved.get("dtype") or saved.get("torch_dtype")
        files = checkpoint_files(init_from)
        if files or device.type == "meta":
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(init_from),
                                                         attn_implementation=impl, dtype=torch.float32)
            _generation_config(model, init_from)
            model.eval()  # as from_pretrained returns it
            if device.type != "meta":
                _to_empty(model, device)
                _fill_from_checkpoint(model, files)
        else:  # no safetensors: transformers reads the checkpoint (whole, on the CPU)
            model = AutoModelForCausalLM.from_pretrained(init_from, attn_implementation=impl, dtype=torch.float32)
            model.to(device)
    elif config is not None:
        with device:
            model = LlamaForCausalLM(LlamaConfig(**config))
        model.set_attn_implementation(impl)
        base_dtype = model.config.dtype
    else:
        raise ConfigError("set model.path (a local Hugging Face model folder) or use model=tiny")
    set_rope_theta(model, rope_theta, max_position_embeddings)
    model.config.use_cache = False
    model.base_dtype = _as_dtype(base_dtype)
    return model


@torch.no_grad()
def load_shards(root: nn.Module, model: PreTrainedModel, init_from: str | None, source: PreTrainedModel | None,
                device: torch.device) -> None:
    """Make the weights of a meta `model` (from `build_model(..., device="meta")`) after `fully_shard`, `root`
    being the outermost module sharded: each rank allocates only its dim-0 rows of every parameter on `device`
    and fills them from the checkpoint's safetensors, reading those rows only. Without safetensors (a random
    init, or .bin files) rank 0 holds the full model `source` (None on the other ranks; emptied as it is sent)
    and scatters its rows, and the other ranks take its random-number state, as if each had drawn the same
    init. Then the rotary tables are rebuilt for the model's θ."""
    files = checkpoint_files(init_from)
    if files:
        _to_empty(root, device)  # FSDP2's _apply re-pads each local shard
        _fill_from_checkpoint(model, files)
    else:
        _scatter_from_rank0(root, model, source, device)
    config = model.config
    set_rope_theta(model, config.rope_parameters["rope_theta"], config.max_position_embeddings)


def _places(module: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """id of each parameter -> every (module, name) holding it (several for tied weights)."""
    places: dict[int, list[tuple[nn.Module, str]]] = {}
    for sub in module.modules():
        for name, param in sub._parameters.items():
            if param is not None:
                places.setdefault(id(param), []).append((sub, name))
    return places


def _to_empty(module: nn.Module, device: torch.device) -> None:
    """`module.to_empty(device)`, keeping tied parameters tied (to_empty gives each module its own)."""
    for sub in module.modules():
        lost = set(sub._buffers) & sub._non_persistent_buffers_set
        if lost and not _is_rotary(sub):  # neither in a checkpoint nor rebuilt: to_empty would leave garbage
            raise ValueError(f"{type(sub).__name__} has non-persistent buffers {sorted(lost)} that a model built "
                             f"on the meta device cannot restore")
    places = _places(module)
    module.to_empty(device=device)
    for (first, first_name), *others in places.values():
        for sub, name in others:
            setattr(sub, name, getattr(first, first_name))


def _shard(param: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(this rank's rows of an FSDP2 parameter, the first one's index in the full tensor, rows per rank):
    fully_shard splits dim 0 in torch.chunk's pieces."""
    from torch.distributed.tensor import DTensor

    if not isinstance(param, DTensor) or len(param.placements) != 1 or not param.placements[0].is_shard(0):
        raise ValueError(f"expected a parameter sharded by fully_shard on dim 0, got {type(param).__name__}")
    local = param.to_local()
    chunk = -(-param.shape[0] // param.device_mesh.size())
    start = param.device_mesh.get_local_rank() * chunk
    assert local.shape[0] == max(0, min(chunk, param.shape[0] - start)), (local.shape, param.shape, start)
    return local, start, chunk


def _persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The buffers a state dict holds (none in a Llama: its rotary tables are non-persistent)."""
    return {f"{prefix}.{name}" if prefix else name: buf for prefix, sub in model.named_modules()
            for name, buf in sub._buffers.items() if buf is not None and name not in sub._non_persistent_buffers_set}


def _fill_from_checkpoint(model: PreTrainedModel, files: dict[str, Path]) -> None:
    """Copy the checkpoint's tensors into the model's materialised parameters (whole, or this rank's rows of
    an FSDP2 shard: only those are read) and persistent buffers, cast on copy (bf16 -> fp32 is exact)."""
    from torch.distributed.tensor import DTensor

    prefix = model.base_model_prefix + "."
    targets = {**dict(model.named_parameters()), **_persistent_buffers(model)}  # one name per tied weight
    missing = []
    with ExitStack() as stack, torch.no_grad(), torch.device("cpu"):  # get_slice follows a default device
        handles = {path: stack.enter_context(safe_open(path, framework="pt")) for path in set(files.values())}
        for name, param in targets.items():
            key = name if name in files else name.removeprefix(prefix)  # a base model's checkpoint has no prefix
            if key not in files:
                missing.append(name)
                continue
            saved = handles[files[key]].get_slice(key)
            if tuple(saved.get_shape()) != tuple(param.shape):
                raise ConfigError(f"{key} has shape {saved.get_shape()} in the checkpoint but the model's {name} "
                                  f"is {list(param.shape)}")
            if isinstance(param, DTensor):
                local, start, _ = _shard(param)
                if local.numel():
                    local.copy_(saved[start:start + local.shape[0]])  # only these rows are read
            else:
                param.detach().copy_(handles[files[key]].get_tensor(key))
    if missing:
        raise ConfigError(f"the checkpoint lacks {len(missing)} of the model's tensors: {', '.join(missing[:4])}"
                          f"{' ...' if len(missing) > 4 else ''}")


def _scatter_from_rank0(root: nn.Module, model: PreTrainedModel, source: PreTrainedModel | None,
                        device: torch.device) -> None:
    """Materialise `root` (see `_to_empty`) with each rank's rows of `source`'s parameters (the full model on
    rank 0, None on the others), then give every rank rank 0's CPU random-number state (what each would hold
    had it drawn the same init). Rank 0 frees each source parameter once sent and makes its shards only after:
    its peak is about one full model, not a full model and a shard."""
    rank = dist.get_rank()
    if (source is None) != (rank != 0):
        raise ValueError("rank 0, and it alone, holds the full model to scatter")
    if rank != 0:
        _to_empty(root, device)  # receive straight into the shards
    full, places = (dict(source.named_parameters()), _places(source)) if source is not None else ({}, {})
    own = {}  # rank 0: its rows [chunk, ...] of each parameter, until its shards exist
    for name, param in model.named_parameters():
        local, _, chunk = _shard(param)
        group = param.device_mesh.get_group()
        world = dist.get_world_size(group)
        pieces = None
        if rank == 0:
            held = full.pop(name)
            for sub, key in places.pop(id(held)):
                sub._parameters[key] = None  # the source lets go of it (under every tied name): freed once sent
            pieces = [_rows(held.detach(), r * chunk, chunk).to(device, param.dtype) for r in range(world)]
            del held
        if rank != 0 and local.shape[0] == chunk and local.is_contiguous():
            piece = local
        else:
            piece = torch.empty((chunk, *param.shape[1:]), dtype=param.dtype, device=device)  # padded rows
        dist.scatter(piece, pieces, src=dist.get_global_rank(group, 0), group=group)
        if rank == 0:
            own[name] = piece
        elif piece is not local:
            local.copy_(piece[:local.shape[0]])
        del pieces
    if rank == 0:
        _to_empty(root, device)
        for name, param in model.named_parameters():
            local, _, _ = _shard(param)
            local.copy_(own.pop(name)[:local.shape[0]])
    held_buffers = _persistent_buffers(source) if source is not None else {}
    for name, buf in _persistent_buffers(model).items():  # unsharded: all of each (none in a Llama)
        if rank == 0:
            buf.copy_(held_buffers[name])
        dist.broadcast(buf, src=0)
    rng = torch.get_rng_state().to(device)
    dist.broadcast(rng, src=0)
    torch.set_rng_state(rng.cpu())


def _rows(full: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """`count` rows of `full` from `start`, zero-padded past its end."""
    rows = full[start:start + count]
    if rows.shape[0] == count:
        return rows.contiguous()
    padded = full.new_zeros((count, *full.shape[1:]))
    padded[:rows.shape[0]] = rows
    return padded


def _generation_config(model: PreTrainedModel, folder: str) -> None:
    """The checkpoint's generation_config.json (Llama-3 Instruct's eos ids and sampling), as from_pretrained
    loads it; else one made from config.json."""
    try:
        model.generation_config = GenerationConfig.from_pretrained(folder, local_files_only=True)
    except OSError:
        model.generation_config = GenerationConfig.from_pretrained(folder, config_file_name="config.json",
                                                                   _from_model_config=True, local_files_only=True)


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """A config's dtype (a torch.dtype, a name such as "bfloat16", or unset) as a torch.dtype; unset is float32."""
    if dtype is None or dtype == "auto":
        return torch.float32
    if isinstance(dtype, str):
        named = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(named, torch.dtype):
            raise ConfigError(f"the model's config.json names an unknown dtype {dtype!r}")
        return named
    return dtype
