"""The LightningModule of a context-extension stage: a Hugging Face causal LM, sharded along the
sequence over its context-parallel group, trained with a chunked next-token loss."""

from __future__ import annotations

import math
import time

import lightning as L
import torch
import torch.distributed as dist

from kernels.reference import visibility
from lightning_modules import attention
from lightning_modules.context_parallel import shard_batch
from lightning_modules.errors import ConfigError
from lightning_modules.loss import ChunkedLossLM
from lightning_modules.model import build_model, checkpoint_files, load_shards


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 per parameter plus causal attention's 6 * L * S * d."""
    return 6.0 * n_params + 6.0 * n_layers * seq_len * hidden


def mixed_precision_policy(mixed_precision: str | None):
    """FSDP2's policy: bf16 parameters for compute, fp32 gradient reduction (None: everything fp32)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if mixed_precision is None:
        return MixedPrecisionPolicy()
    if mixed_precision != "bf16":
        raise ConfigError(f"mixed_precision must be 'bf16' or None, not {mixed_precision!r}")
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


class LongContextLM(L.LightningModule):
    """One stage of context extension. Every argument is plain; `train.py` maps the config to them.

    `mixed_precision="bf16"`: bf16 compute over fp32 master weights. Under FSDP2 a `MixedPrecisionPolicy`
    gathers parameters in bf16 (the residual stream is bf16) and reduces gradients in fp32; under DDP the
    trainer's bf16 autocast does it (weights and gradient reduction stay fp32). Pure bf16 weights are not
    offered: AdamW updates of ~1e-5 relative size vanish in bf16's 8-bit mantissa."""

    def __init__(self, init_from: str | None = None, model_config: dict | None = None, rope_theta: float = 1e4,
                 seq_len: int = 1024, attention: str = "sdpa", cp_degree: int = 1, layout: str = "zigzag",
                 ring_blocks: str = "auto", gradient_checkpointing: bool = False, loss_chunk_tokens: int = 4096,
                 lr: float = 1e-5, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95),
                 warmup_steps: int = 0, schedule: str = "constant", max_steps: int = 1, fsdp: bool = False,
                 peak_tflops: float | None = None, response_loss_weight: float = 0.0,
                 mixed_precision: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net: ChunkedLossLM | None = None
        self.cp_group, self.cp_rank, self.world = None, 0, 1
        self._flops_per_token = 0.0
        self._t0 = 0.0

    # --- model -----------------------------------------------------------------------------------

    @property
    def model(self):
        """The Hugging Face model (what is exported)."""
        return self.net.model if self.net is not None else None

    def _context_parallel_groups(self) -> None:
        """Consecutive ranks form a context-parallel group (on one node, where the links are fast)."""
        cp = self.hparams.cp_degree
        if dist.is_available() and dist.is_initialized():
            self.world, rank = dist.get_world_size(), dist.get_rank()
            if self.world % cp:
                raise ConfigError(f"{self.world} processes cannot be split into context-parallel groups of "
                                  f"stage.cp_degree={cp}; use a multiple of {cp} devices")
            # every rank makes every group (new_group is collective)
            groups = [dist.new_group(list(range(s, s + cp))) for s in range(0, self.world, cp)]
            self.cp_group, self.cp_rank = groups[rank // cp], rank % cp
        elif cp != 1:
            raise ConfigError(f"stage.cp_degree={cp} needs {cp} processes (trainer.devices x trainer.num_nodes)")
        attention.use_context_parallel(self.cp_group, self.hparams.ring_blocks)

    def configure_model(self) -> None:
        """Build the model once per process, after the process group exists (FSDP wraps it here).

        Under FSDP no rank makes the whole model: each builds it on the meta device, shards it, then makes and
        fills only its own rows (`load_shards`, reading them from the checkpoint). A random init is drawn whole
        by rank 0 alone, as one process would draw it, and scattered. Otherwise the checkpoint is read straight
        into the weights on the strategy's device."""
        if self.net is not None:
            return
        h = self.hparams
        self._context_parallel_groups()
        source = None
        if h.fsdp and not checkpoint_files(h.init_from) and dist.get_rank() == 0:  # before the meta build
            source = build_model(h.init_from, h.model_config, h.rope_theta, h.seq_len, h.attention, device="cpu")
        model = build_model(h.init_from, h.model_config, h.rope_theta, h.seq_len, h.attention,
                            device="meta" if h.fsdp else None)
        model.train()  # from_pretrained returns eval mode, where HF skips gradient checkpointing
        if h.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.net = ChunkedLossLM(model, h.loss_chunk_tokens)
        n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
        self._flops_per_token = flops_per_token(n, model.config.num_hidden_layers, model.config.hidden_size,
                                                h.seq_len)  # counted before FSDP shards the parameters
        if h.fsdp:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            # CP ranks hold the same parameters: shard over every rank (dp x cp flattened); one unit
            # per decoder layer, and the root (embeddings, norm, head) around the loss's forward
            gpu = torch.cuda.is_available()
            mesh = init_device_mesh("cuda" if gpu else "cpu", (self.world,))
            policy = mixed_precision_policy(h.mixed_precision)
            for layer in model.base_model.layers:
                fully_shard(layer, mesh=mesh, mp_policy=policy)
            fully_shard(self.net, mesh=mesh, mp_policy=policy)
            device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
            load_shards(self.net, model, h.init_from, source, device)  # fp32 shards of the checkpoint's weights
            del source

    # --- training --------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss = sum of token losses / tokens counted over every rank (dp x cp), plus, with
        `response_loss_weight` w, w x the mean loss over assistant-turn tokens (the answer, in a needle task);
        scaled by the world size because data-parallel gradient reduction averages over ranks."""
        h = self.hparams
        weighted = h.response_loss_weight > 0
        part = shard_batch(batch["input_ids"], batch["labels"], batch["doc_ids"], world=h.cp_degree,
                           rank=self.cp_rank, layout=h.layout, response=batch.get("response") if weighted else None)
        kwargs = {"doc_ids": part.doc_ids}
        if h.attention in ("sdpa", "eager"):  # a dense causal, same-document mask [B, 1, S, S]
            b, s = part.input_ids.shape
            mask = visibility(b, s, s, True, part.position_ids, part.position_ids, part.doc_ids, part.doc_ids,
                              part.input_ids.device)
            # padding sees nothing; a row of SDPA with no key is NaN, so a pad sees itself (its labels are ignored)
            mask |= torch.diag_embed((part.doc_ids < 0))[:, None]
            kwargs = {"attention_mask": mask}
        loss_sum, count, response_sum, response_count = self.net(part.input_ids, part.labels, part.position_ids,
                                                                 part.response, **kwargs)
        totals = torch.stack([loss_sum.detach(), count.to(loss_sum.dtype), response_sum.detach(),
                              response_count.to(loss_sum.dtype)])
        if self.world > 1:
            dist.all_reduce(totals)
        self.log("train/loss", totals[0] / totals[1].clamp(min=1), prog_bar=True, rank_zero_only=True)
        self.log("train/tokens", totals[1], reduce_fx="sum", rank_zero_only=True)
        loss = loss_sum / totals[1].clamp(min=1)
        if weighted:
            self.log("train/response_loss", totals[2] / totals[3].clamp(min=1), prog_bar=True, rank_zero_only=True)
            loss = loss + h.response_loss_weight * response_sum / totals[3].clamp(min=1)
        return loss * self.world

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Log tokens/s over all ranks' distinct tokens and, with `peak_tflops` set, an MFU estimate."""
        h = self.hparams
        seconds = max(time.perf_counter() - self._t0, 1e-9)
        tokens = batch["input_ids"].numel() * (self.world // h.cp_degree)  # a CP group shares its rows
        self.log("train/tokens_per_s", tokens / seconds, rank_zero_only=True)
        if h.peak_tflops:
            achieved = tokens / seconds * self._flops_per_token
            self.log("train/mfu", achieved / (h.peak_tflops * 1e12 * self.world), rank_zero_only=True)

    def configure_optimizers(self):
        """AdamW (no decay on vectors), linear warmup then constant or cosine to 10%."""
        h = self.hparams
        decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": h.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=h.lr, betas=tuple(h.betas))
        if h.schedule not in ("constant", "cosine"):
            raise ConfigError(f"optim.schedule must be 'constant' or 'cosine', not {h.schedule!r}")

        def factor(step: int) -> float:
            if step < h.warmup_steps:
                return (step + 1) / h.warmup_steps
            if h.schedule == "constant":
                return 1.0
            progress = min(1.0, (step - h.warmup_steps) / max(1, h.max_steps - h.warmup_steps))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
