"""Prepare a stage's training mixture ahead of time: tokenized, masked and packed once into memory-mapped
files that every later `train.py` run with the same settings maps instead of tokenizing (see conf/data/).

    python prepare.py model=llama model.path=/models/Llama-3.2-1B-Instruct data=selflong stage=128k \
        data.num_proc=32
    python train.py   model=llama model.path=/models/Llama-3.2-1B-Instruct data=selflong stage=128k ...
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched from a hub at run time
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra
from omegaconf import DictConfig, OmegaConf

from lightning_modules.errors import ConfigError
from lightning_modules.model import load_tokenizer
from lightning_modules.prepare import load_stats, prepare
from lightning_modules.stages import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    """Build (or find) the preparation `train.py` with the same overrides would read, and print it."""
    d = OmegaConf.to_container(cfg.data, resolve=True)
    try:
        tokenizer = load_tokenizer(cfg.model.tokenizer)
        folder = prepare(tokenizer, d["sources"], cfg.stage.seq_len, cfg.seed, cfg.response_loss_weight > 0,
                         d["prepared_dir"], d["num_proc"])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    st = load_stats(folder)
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(f"{folder}: {st.samples} samples ({st.too_long} longer than {st.seq_len}, dropped) in {st.rows} rows, "
          f"{st.tokens} tokens, fill {100 * st.fill:.1f}%, {size / 2 ** 30:.2f} GiB")


if __name__ == "__main__":
    main()
