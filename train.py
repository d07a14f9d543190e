"""Train one stage of context extension; its export is the next stage's start (see conf/train.yaml).

    python train.py model=tiny stage=tiny_1k && python train.py model=tiny stage=tiny_2k
    python train.py model=llama model.path=/models/Llama-3.2-1B-Instruct data=selflong trainer=gpu \
        attention=ring stage=128k [ckpt_path=last]
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched from a hub at run time
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_modules.datamodule import PackedDataModule
from lightning_modules.errors import ConfigError
from lightning_modules.export import ExportHF, export_hf
from lightning_modules.model import load_tokenizer
from lightning_modules.module import LongContextLM
from lightning_modules.progress import quiet
from lightning_modules.stages import check_stage, register_resolvers, resolve_ckpt

register_resolvers()
quiet()  # Lightning's tips and the understood warnings off, in every process (spawned ranks re-import this file)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    """Check the start, build data, module and trainer from config, fit, export `hf/`."""
    s, a, c = cfg.stage, cfg.attention, OmegaConf.to_container(cfg, resolve=True)
    trainer_kw = c["trainer"]
    peak_tflops, fsdp = trainer_kw.pop("peak_tflops"), trainer_kw.pop("fsdp")
    try:
        remake = f"python train.py model={HydraConfig.get().runtime.choices['model']} stage={s.previous}"
        check_stage(name=s.name, previous=s.previous, init_from=s.init_from, seq_len=s.seq_len,
                    cp_degree=s.cp_degree, attention=a.name, kernel_block=a.kernel_block, layout=a.layout,
                    processes=trainer_kw["devices"] * trainer_kw["num_nodes"], remake=remake,
                    dense_max_len=a.max_len)
        ckpt_path = resolve_ckpt(cfg.ckpt_path, cfg.stage_dir)
        tokenizer = load_tokenizer(cfg.model.tokenizer)
        d = c["data"]
        data = PackedDataModule(tokenizer, d["sources"], s.seq_len, d["batch_size"], cfg.seed, s.cp_degree,
                                s.max_steps, d["num_workers"], cfg.response_loss_weight > 0, d["prepared_dir"],
                                d["num_proc"])
        data.setup("fit")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    L.seed_everything(cfg.seed, workers=True)
    module = LongContextLM(init_from=s.init_from, model_config=c["model"]["config"], rope_theta=s.rope_theta,
                           seq_len=s.seq_len, attention=a.name, cp_degree=s.cp_degree, layout=a.layout,
                           ring_blocks=a.blocks, gradient_checkpointing=cfg.model.gradient_checkpointing,
                           loss_chunk_tokens=cfg.loss_chunk_tokens, **c["optim"], max_steps=s.max_steps, fsdp=fsdp,
                           peak_tflops=peak_tflops, response_loss_weight=cfg.response_loss_weight,
                           mixed_precision="bf16" if "bf16" in str(trainer_kw["precision"]) else None)
    if s.max_steps == 0:  # "θ only": the start model with this stage's θ and length, exported untrained
        module.configure_model()
        export_hf(module.model, tokenizer, f"{cfg.stage_dir}/hf")
        print(f"stage {s.name}: no training (max_steps=0), exported to {cfg.stage_dir}/hf (rope_theta "
              f"{s.rope_theta:g}, {s.seq_len} tokens)")
        return
    if isinstance(trainer_kw["strategy"], dict):
        trainer_kw["strategy"] = instantiate(trainer_kw["strategy"])
    callbacks = [instantiate(cb) for cb in cfg.callbacks.values()] + [ExportHF(f"{cfg.stage_dir}/hf", tokenizer)]
    trainer = L.Trainer(**trainer_kw, max_steps=s.max_steps, logger=instantiate(cfg.logger) if cfg.logger else False,
                        callbacks=callbacks, use_distributed_sampler=False, default_root_dir=cfg.stage_dir)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    if trainer.is_global_zero:
        print(f"stage {s.name}: final loss {float(trainer.callback_metrics['train/loss']):.6f}, "
              f"exported to {cfg.stage_dir}/hf (rope_theta {s.rope_theta:g}, {s.seq_len} tokens)")


if __name__ == "__main__":
    main()
