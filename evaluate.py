"""Evaluate a model's context with needle-in-a-haystack or RULER (see conf/evaluate.yaml), or write the
needle task's training JSONL.

    python evaluate.py target=checkpoint target.path=data/train/tiny_1k/hf task=passkey
    python evaluate.py target.base_url=http://gpu:8000/v1 target.model=M target.tokenizer=/models/M task=ruler
"""

import os
import signal
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched from a hub at run time
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from agents.errors import InputError
from evals.client import EvalFailure
from evals.evaluation import (check_group_choices, evaluate, evaluate_heads, evaluate_heads_sweep, evaluate_sweep,
                              export_training, register_resolvers)

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """Export training data, or evaluate and print the score table."""
    target, task = (OmegaConf.to_container(cfg[k], resolve=True) for k in ("target", "task"))
    try:
        if cfg.export_training:
            from lightning_modules.model import load_tokenizer

            e = cfg.export
            path = export_training(cfg.export_training, load_tokenizer(e.tokenizer), task, e.seq_len, e.samples,
                                   e.min_fraction, cfg.seed)
            print(f"{path}: {e.samples} programmatic {task['name']} samples of up to {e.seq_len} tokens")
            return
        if task["kind"] == "retrieval_heads":
            sweep = target["kind"] == "sweep"
            (evaluate_heads_sweep if sweep else evaluate_heads)(target, task, cfg.out_dir, cfg.seed,
                                                                OmegaConf.to_yaml(cfg))
            print(open(os.path.join(cfg.out_dir, "heads_sweep.md" if sweep else "heads.md")).read(), end="")
            return
        corpus = instantiate(cfg.corpus)
        run = evaluate_sweep if target["kind"] == "sweep" else evaluate
        result = run(target, task, corpus, cfg.out_dir, cfg.seed, OmegaConf.to_yaml(cfg), cfg.progress,
                     OmegaConf.to_container(cfg.corpus, resolve=True))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except EvalFailure as err:
        print(f"error: {err}; rerun the same command to resume", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"interrupted: {cfg.out_dir} keeps every scored sample; rerun the same command to resume",
              file=sys.stderr)
        sys.exit(130)
    if target["kind"] == "sweep":
        print(open(os.path.join(cfg.out_dir, "sweep.md"), encoding="utf-8").read())
        print(f"{cfg.out_dir}: {len(result['scores'])} jobs")
        return
    print(open(os.path.join(cfg.out_dir, "scores.md"), encoding="utf-8").read())
    print(f"{cfg.out_dir}: {result['samples']} samples, average {result['average']} over "
          f"{result['tasks_counted']} task(s)")


if __name__ == "__main__":
    check_group_choices(sys.argv[1:], os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf"))
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a scheduler's kill stops the server we started
    main()
