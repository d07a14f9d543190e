"""Per-GPU memory of a training stage, computed from the code's own choices, and which GPU counts fit.

    python benchmarks/memory.py                                  # Llama-3.2-1B and Llama-3.1-8B, every stage
    python benchmarks/memory.py --config /models/Foo/config.json # any local Hugging Face config.json
    python benchmarks/memory.py --markdown                       # the README's tables

What is counted (bytes; S = stage seq_len / cp_degree tokens per GPU, one row per rank):
- weights+optimizer: fp32 parameters, fp32 gradients, AdamW's two fp32 moments (16 B/parameter) and its
  fp32 step counter per tensor. trainer=fsdp: FSDP2 shards them over every rank (dp x cp, one flat mesh;
  dim 0 padded to a multiple of the world size); trainer=gpu (DDP): replicated.
- gathered: FSDP2 with MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32): two decoder layers'
  bf16 parameters (current + prefetched), one layer's bf16 gradient and the previous layer's fp32
  reduce-scatter input, the root unit (embeddings, final norm, LM head) in bf16 with its bf16 gradients for
  the whole step. DDP: its fp32 gradient buckets (a copy of every gradient) and autocast's bf16 copies of
  one layer's matrices and of the LM head.
- activations: gradient checkpointing per decoder layer (non-reentrant): every layer's input [S, hidden]
  (bf16 under FSDP's bf16 parameters, fp32 under DDP's autocast), one layer's recompute (each tensor it
  saves is listed in `layer_saved`), the gradients through that layer, the final norm and the RoPE tables.
- attention+ring: the ring's working buffers, the larger of forward (merged fp32 out, fp32 block outs, K/V
  blocks in flight) and backward (dout, fp32 dq accumulator and block gradients, dK/dV accumulators and K/V
  blocks in flight): `ring_forward`, `ring_backward`.
- loss: one chunk of `loss_chunk_tokens` x vocab fp32 logits (log-softmax, its gradient, d logits), the
  gradient of the final hidden state, one chunk's LM-head gradient before it is accumulated.
- allowance: 10% on top, for the CUDA context, NCCL buffers and allocator fragmentation.
Everything is counted as live at once (an upper bound: e.g. the MLP's saved tensors are freed before the
ring's backward runs, the sharded gradients fill up while the checkpointed inputs are freed). The optimizer
step comes after backward has freed all of this; the total is the larger of the two peaks
(`optimizer_step_bytes`: the step is the peak only where the activations are small next to the state).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_modules.context_parallel import check_seq_len  # noqa: E402

CONFIGS = [ROOT / "benchmarks" / "configs" / "llama-3.2-1b.json", ROOT / "benchmarks" / "configs" / "llama-3.1-8b.json"]
STAGES = ["128k", "256k", "512k", "1m"]
GPU_COUNTS = [1, 2, 4, 8, 16, 32]
GIB = 2**30
# usable memory as nvidia-smi reports it: H100 SXM 81559 MiB, H200 143771 MiB
CAPACITY = {"H100 80 GB": 81559 * 2**20, "H200 141 GB": 143771 * 2**20}
ALLOWANCE = 0.10
RING = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "attention" / "ring.yaml"))  # kernel_block, layout
LOSS_CHUNK_TOKENS: int = OmegaConf.load(ROOT / "conf" / "train.yaml").loss_chunk_tokens


@dataclass(frozen=True)
class ModelShape:
    """The shapes of a Llama-family causal LM, from a Hugging Face config.json."""

    name: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    attention_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_hf_config(cls, config: dict, name: str) -> ModelShape:
        """Read the keys of a config.json (LlamaConfig's defaults where a key is absent)."""
        heads = config["num_attention_heads"]
        return cls(name=name, vocab=config["vocab_size"], hidden=config["hidden_size"],
                   intermediate=config["intermediate_size"], layers=config["num_hidden_layers"], heads=heads,
                   kv_heads=config.get("num_key_value_heads") or heads,
                   head_dim=config.get("head_dim") or config["hidden_size"] // heads,
                   tied=bool(config.get("tie_word_embeddings", False)),
                   attention_bias=bool(config.get("attention_bias", False)),
                   mlp_bias=bool(config.get("mlp_bias", False)))

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_params(self) -> list[tuple[int, ...]]:
        """Shapes of one decoder layer's parameters, as `LlamaDecoderLayer` makes them."""
        h, i, q, kv = self.hidden, self.intermediate, self.q_dim, self.kv_dim
        shapes = [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i), (h,), (h,)]
        if self.attention_bias:
            shapes += [(q,), (kv,), (kv,), (h,)]
        if self.mlp_bias:
            shapes += [(i,), (i,), (h,)]
        return shapes

    def root_params(self) -> list[tuple[int, ...]]:
        """Embeddings, final norm and (untied) LM head: FSDP's root unit."""
        return [(self.vocab, self.hidden), (self.hidden,)] + ([] if self.tied else [(self.vocab, self.hidden)])

    def params(self) -> list[tuple[int, ...]]:
        return self.layer_params() * self.layers + self.root_params()

    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.params())


@dataclass(frozen=True)
class Setup:
    """One stage on `world` GPUs: `seq_len` tokens split over a ring of `cp` ranks, `batch` rows per ring."""

    seq_len: int
    cp: int
    world: int
    fsdp: bool = True
    batch: int = 1
    loss_chunk_tokens: int = 4096

    @property
    def tokens(self) -> int:
        """Tokens each rank holds: its zigzag share of every row."""
        return self.batch * self.seq_len // self.cp


def numel(shapes: Iterable[tuple[int, ...]], world: int = 1, shard: bool = False) -> int:
    """Elements of `shapes` with dim 0 padded to a multiple of `world` (FSDP2's padding); one shard's if `shard`."""
    total = 0
    for s in shapes:
        rows = math.ceil(s[0] / world) * (1 if shard else world)
        total += rows * math.prod(s[1:])
    return total


# --- per-term bytes -------------------------------------------------------------------------------


def weight_terms(m: ModelShape, s: Setup) -> dict[str, int]:
    """fp32 master parameters, gradients and AdamW state held by one rank."""
    world = s.world if s.fsdp else 1
    return {"fp32 parameters + gradients + AdamW exp_avg, exp_avg_sq (16 B each)": 16 * numel(m.params(), world, True),
            "AdamW step counter per tensor (fp32 scalar)": 4 * len(m.params())}


def gathered_terms(m: ModelShape, s: Setup) -> dict[str, int]:
    """Unsharded copies: FSDP2's bf16 all-gathers and gradients before reduce-scatter, or DDP's buckets and
    autocast's bf16 weight copies."""
    if s.fsdp:
        layer, root = numel(m.layer_params(), s.world), numel(m.root_params(), s.world)
        return {"2 decoder layers' bf16 parameters (current + prefetched)": 2 * 2 * layer,
                "one layer's bf16 gradient before reduce-scatter": 2 * layer,
                "previous layer's fp32 reduce-scatter input (reduce_dtype=fp32)": 4 * layer,
                "root unit's bf16 parameters (gathered all step: the root does not reshard after forward)": 2 * root,
                "root unit's bf16 gradients (LM head's from the loss backward on)": 2 * root}
    matrices = sum(math.prod(x) for x in m.layer_params() if len(x) == 2)
    return {"DDP gradient buckets (fp32, gradient_as_bucket_view=False)": 4 * m.n_params(),
            "autocast bf16 copies of one layer's matrices (its recompute)": 2 * matrices,
            "autocast bf16 copy of the LM head (one loss chunk)": 2 * m.vocab * m.hidden}


def layer_saved(m: ModelShape, fsdp: bool) -> dict[str, int]:
    """Bytes per token one decoder layer saves for its backward (its recompute under checkpointing).

    Not here: the layer's input (kept by checkpointing), its weights (gathered), RoPE cos/sin, positions and
    document ids (shared by all layers). Checked against saved-tensor hooks in tests/test_memory_estimate.py.
    """
    h, i, q, kv, hq = m.hidden, m.intermediate, m.q_dim, m.kv_dim, m.heads
    # q and k leave RoPE fp32 under autocast (fp32 cos/sin); the attention casts q, k, v to one dtype (bf16)
    attention = {"q, k after RoPE, v (bf16)": 2 * q + 2 * kv + 2 * kv,
                 "ring: out (bf16), lse (fp32)": 2 * q + 4 * hq,
                 "o_proj input (out transposed, contiguous, bf16)": 2 * q}
    mlp = {"MLP: gate, silu(gate), up, silu(gate) * up (bf16)": 4 * 2 * i}
    if fsdp:  # bf16 parameters: RMSNorm upcasts to fp32, the rest is bf16
        norm = 4 * h + 4 + 2 * h + 2 * h  # x.float(), 1/rms (fp32), normalized x.to(bf16), output (the projections')
        return {"input norm: x in fp32, 1/rms, normalized bf16, output bf16": norm, **attention,
                "post-attention norm (as the input norm)": norm, **mlp}
    # DDP: fp32 parameters under bf16 autocast; the residual stream and the norms are fp32
    return {"input norm: 1/rms, normalized fp32 (x.float() is x itself)": 4 + 4 * h,
            "q/k/v projections: three autocast bf16 casts of the norm output": 3 * 2 * h, **attention,
            "post-attention norm: input (fp32 residual sum), 1/rms, normalized fp32": 4 * h + 4 + 4 * h,
            "gate/up projections: two autocast bf16 casts": 2 * 2 * h, **mlp}


def ring_forward(m: ModelShape, cp: int) -> dict[str, int]:
    """Bytes per token of the ring's forward working set (in the forward and in each recompute); q, k, v bf16."""
    q, kv, hq = m.q_dim, m.kv_dim, m.heads
    terms = {"merged out (fp32)": 4 * q,
             # block outs come back fp32 (out_dtype): the previous one is still referenced while the next is
             # computed, or, in `merge`, the current one and its rescaled product
             "two block outs (fp32)": 2 * 4 * q,
             "merged lse, 2 block lse, merge temporaries (fp32 per head)": 6 * 4 * hq}
    if cp > 1:
        terms["K/V blocks in flight (current + receiving, bf16)"] = 2 * 2 * 2 * kv
    return terms


def ring_backward(m: ModelShape, cp: int) -> dict[str, int]:
    """Bytes per token of the ring's backward working set."""
    q, kv, hq = m.q_dim, m.kv_dim, m.heads
    steps = 2 if cp > 1 else 1  # the previous step's block gradients are referenced while the next are made
    terms = {"dout (bf16; a strided view is taken as is)": 2 * q, "delta (fp32 per head)": 4 * hq,
             "dq accumulator (fp32)": 4 * q, "block dq, dk, dv (fp32)": steps * (4 * q + 2 * 4 * kv)}
    if cp > 1:
        terms["dK/dV accumulators in flight (fp32, sent + receiving)"] = 2 * 2 * 4 * kv
        terms["K/V blocks in flight (current + receiving, bf16)"] = 2 * 2 * 2 * kv
    return terms


def attention_terms(m: ModelShape, s: Setup) -> dict[str, int]:
    """The ring's larger working set (forward or backward), in bytes."""
    fwd, bwd = ring_forward(m, s.cp), ring_backward(m, s.cp)
    phase, terms = max((("forward", fwd), ("backward", bwd)), key=lambda p: sum(p[1].values()))
    return {f"{phase}: {k}": v * s.tokens for k, v in terms.items()}


def residual_bytes(fsdp: bool) -> int:
    """Element size of the residual stream: bf16 under FSDP's bf16 parameters, fp32 under DDP's autocast."""
    return 2 if fsdp else 4


def checkpointed_inputs(m: ModelShape, s: Setup) -> int:
    """Bytes of the layer inputs gradient checkpointing keeps: `layers` x [tokens, hidden]."""
    return m.layers * residual_bytes(s.fsdp) * m.hidden * s.tokens


def activation_terms(m: ModelShape, s: Setup) -> dict[str, int]:
    """Checkpointed layer inputs, one layer's recompute and the tensors outside the layers, in bytes."""
    t, h, res = s.tokens, m.hidden, residual_bytes(s.fsdp)
    final_norm = 4 * h + 4 + 2 * h if s.fsdp else 4 * h + 4 + 4 * h  # x.float() (DDP: the input), 1/rms, normalized
    return {f"layer inputs kept by checkpointing ({m.layers} x [S, hidden])": checkpointed_inputs(m, s),
            "one layer's recompute (layer_saved)": sum(layer_saved(m, s.fsdp).values()) * t,
            "gradients into and out of that layer": 2 * res * h * t,
            "MLP backward: two [S, intermediate] bf16 gradients": 2 * 2 * m.intermediate * t,
            "final norm's saved tensors and its output (held by the loss)": (final_norm + res * h) * t,
            "RoPE cos, sin": 2 * res * m.head_dim * t,
            "batch: full rows (ids, labels, doc ids) + local shard (4 x int64)":
                3 * 8 * s.batch * s.seq_len + 4 * 8 * t}


def loss_terms(m: ModelShape, s: Setup) -> dict[str, int]:
    """The chunked cross-entropy's peak: one chunk's logits in backward, in bytes."""
    chunk, res = min(s.loss_chunk_tokens, s.tokens), residual_bytes(s.fsdp)
    head_grad = 2 * m.vocab * m.hidden + (0 if s.fsdp else 4 * m.vocab * m.hidden)
    return {"one chunk's log-softmax output, its gradient and d logits (fp32)": 3 * 4 * chunk * m.vocab,
            "gradient of the final hidden state: accumulator + one chunk's full-size slice gradient":
                2 * res * m.hidden * s.tokens,
            "one chunk's LM-head gradient before accumulation (DDP: bf16 and its fp32 cast)": head_grad}


def optimizer_step_bytes(m: ModelShape, s: Setup) -> int:
    """Peak of the AdamW step (foreach): the state, one fp32 temporary per parameter (sqrt of exp_avg_sq) and,
    under DDP, the gradient buckets; plus the allowance."""
    world = s.world if s.fsdp else 1
    held = sum(weight_terms(m, s).values()) + 4 * numel(m.params(), world, True)
    held += 0 if s.fsdp else 4 * m.n_params()
    return round((1 + ALLOWANCE) * held)


# --- the estimate ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """Per-GPU bytes by kind at the backward peak, with its allowance, and the optimizer step's peak."""

    weights: int
    gathered: int
    activations: int
    attention: int
    loss: int
    allowance: int
    step: int

    @property
    def backward(self) -> int:
        return self.weights + self.gathered + self.activations + self.attention + self.loss + self.allowance

    @property
    def total(self) -> int:
        return max(self.backward, self.step)


def estimate(m: ModelShape, s: Setup) -> Estimate:
    """Sum each kind's terms, add the allowance; the optimizer step's peak beside it."""
    parts = [sum(f(m, s).values()) for f in (weight_terms, gathered_terms, activation_terms, attention_terms,
                                              loss_terms)]
    return Estimate(*parts, allowance=round(ALLOWANCE * sum(parts)), step=optimizer_step_bytes(m, s))


def splits(seq_len: int, cp: int) -> bool:
    """Whether the ring can split `seq_len` over `cp` ranks (the trainer's own check)."""
    try:
        check_seq_len(seq_len, cp, RING["kernel_block"], RING["layout"])
    except ValueError:
        return False
    return True


def stage_setup(stage: dict, gpus: int, fsdp: bool) -> Setup:
    """A stage on `gpus` GPUs forming one ring."""
    return Setup(seq_len=stage["seq_len"], cp=gpus, world=gpus, fsdp=fsdp, batch=stage["batch_size"],
                 loss_chunk_tokens=LOSS_CHUNK_TOKENS)


def fewest_gpus(m: ModelShape, stage: dict, fsdp: bool, capacity: int, counts: list[int]) -> int | None:
    """Smallest count in `counts` (one ring of that many GPUs) whose per-GPU total fits `capacity`."""
    for n in counts:
        if splits(stage["seq_len"], n) and estimate(m, stage_setup(stage, n, fsdp)).total <= capacity:
            return n
    return None


# --- configs and printing -------------------------------------------------------------------------


def load_model(path: Path) -> ModelShape:
    """A ModelShape from a config.json; named after its file (or its folder, for a config.json)."""
    name = path.parent.name if path.name == "config.json" else path.stem
    return ModelShape.from_hf_config(json.loads(path.read_text()), name)


def load_stage(name: str) -> dict:
    """seq_len, cp_degree and batch_size of conf/stage/<name>.yaml (θ and paths are not needed)."""
    cfg = OmegaConf.load(ROOT / "conf" / "stage" / f"{name}.yaml")
    return {"name": name, "seq_len": cfg.seq_len, "cp_degree": cfg.cp_degree, "batch_size": cfg.batch_size}


def gib(n: int) -> str:
    return f"{n / GIB:.1f}"


def fewest_text(n: int | None, counts: list[int]) -> str:
    return str(n) if n is not None else f">{counts[-1]}"


def print_text(models: list[ModelShape], stages: list[dict], counts: list[int]) -> None:
    """Per model and trainer: every stage x GPU count with its breakdown, then the fewest GPUs per stage."""
    head = (f"{'stage':>6} {'GPUs':>4} {'S/GPU':>7} {'weights':>8} {'gathered':>8} {'activ.':>7} {'ring':>6} "
            f"{'loss':>5} {'allow.':>6} {'total':>6}  " + "  ".join(c.split()[0] for c in CAPACITY))
    for m in models:
        print(f"\n{m.name}: {m.n_params() / 1e9:.2f} B parameters, {m.layers} layers, hidden {m.hidden}, "
              f"{m.heads}/{m.kv_heads} heads x {m.head_dim}, vocab {m.vocab}, {'tied' if m.tied else 'untied'}")
        for fsdp in (True, False):
            print(f"{'FSDP2 (trainer=fsdp)' if fsdp else 'DDP (trainer=gpu)'}, one ring over all GPUs, GiB per GPU")
            print(head)
            for stage in stages:
                for n in counts:
                    if not splits(stage["seq_len"], n):
                        continue
                    s = stage_setup(stage, n, fsdp)
                    e = estimate(m, s)
                    fits = "  ".join(f"{'yes' if e.total <= c else '-':>4}" for c in CAPACITY.values())
                    step = "  (AdamW step's peak)" if e.step > e.backward else ""
                    print(f"{stage['name']:>6} {n:>4} {s.tokens:>7} {gib(e.weights):>8} {gib(e.gathered):>8} "
                          f"{gib(e.activations):>7} {gib(e.attention):>6} {gib(e.loss):>5} {gib(e.allowance):>6} "
                          f"{gib(e.total):>6}  {fits}{step}")
            for stage in stages:
                fewest = ", ".join(f"{gpu} {fewest_text(fewest_gpus(m, stage, fsdp, c, counts), counts)}"
                                   for gpu, c in CAPACITY.items())
                print(f"  fewest GPUs for {stage['name']}: {fewest}")


def print_markdown(models: list[ModelShape], stages: list[dict], counts: list[int]) -> None:
    """Two tables: total GiB per GPU by GPU count with the fewest that fit; the breakdown at each stage's
    own cp_degree (FSDP)."""
    gpus = list(CAPACITY)
    print("GiB per GPU with FSDP2 over N GPUs forming one ring (`trainer=fsdp attention=ring stage.cp_degree=N`);\n"
          "the fewest GPUs that fit, with FSDP2 and with DDP (`trainer=gpu`):\n")
    print("| model | stage | " + " | ".join(f"{n} GPU{'s' * (n > 1)}" for n in counts) + " | "
          + " | ".join(f"fewest {g}" for g in gpus) + " | DDP: fewest " + " / ".join(g.split()[0] for g in gpus) + " |")
    print("|---|---|" + "---:|" * (len(counts) + len(gpus)) + "---:|")
    for m in models:
        for stage in stages:
            cells = [gib(estimate(m, stage_setup(stage, n, True)).total) if splits(stage["seq_len"], n) else "—"
                     for n in counts]
            fsdp = [fewest_text(fewest_gpus(m, stage, True, c, counts), counts) for c in CAPACITY.values()]
            ddp = [fewest_text(fewest_gpus(m, stage, False, c, counts), counts) for c in CAPACITY.values()]
            print(f"| {m.name} | {stage['name']} | " + " | ".join(cells + fsdp) + " | " + " / ".join(ddp) + " |")
    print("\nBreakdown at each stage's own `cp_degree` (FSDP2, GiB per GPU):\n")
    print("| model | stage | GPUs | tokens/GPU | weights+optimizer | gathered params | activations | attention+ring "
          "| loss | allowance | total |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in models:
        for stage in stages:
            s = stage_setup(stage, stage["cp_degree"], True)
            e = estimate(m, s)
            print(f"| {m.name} | {stage['name']} | {s.cp} | {s.tokens} | {gib(e.weights)} | {gib(e.gathered)} | "
                  f"{gib(e.activations)} | {gib(e.attention)} | {gib(e.loss)} | {gib(e.allowance)} | {gib(e.total)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", type=Path, help="a Hugging Face config.json (repeatable); "
                        "default: benchmarks/configs/llama-3.2-1b.json and llama-3.1-8b.json")
    parser.add_argument("--stages", default=",".join(STAGES), help="names of conf/stage/*.yaml")
    parser.add_argument("--gpus", default=",".join(map(str, GPU_COUNTS)), help="GPU counts (= cp_degree)")
    parser.add_argument("--markdown", action="store_true", help="print the README's tables")
    args = parser.parse_args()
    models = [load_model(p) for p in (args.config or CONFIGS)]
    stages = [load_stage(name) for name in args.stages.split(",")]
    counts = sorted(int(n) for n in args.gpus.split(","))
    (print_markdown if args.markdown else print_text)(models, stages, counts)


if __name__ == "__main__":
    main()
