"""Make long-context training samples with a synthesis graph against an OpenAI-compatible endpoint.

    python synthesize.py synth.num_samples=100 synth.target_lengths=[131072] llm.base_url=http://host:8000/v1
    python synthesize.py synth.mode=backtranslation | synth.mode=acer synth.acer_input=qa.jsonl
    python synthesize.py ... report=true      # then the quality table, and report.png beside the samples
"""

import asyncio
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched from a hub at run time
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from agents.acer import read_acer_inputs
from agents.errors import InputError
from evals.synthesis_report import png_beside, report
from graphs import acer, backtranslation, synthesis
from graphs.context import SynthContext
from graphs.run import RunStopped, make_jobs, output_paths, run_jobs

GRAPHS = {"selflong": synthesis.graph, "backtranslation": backtranslation.graph, "acer": acer.graph}


@hydra.main(version_base="1.3", config_path="conf", config_name="synthesize")
def main(cfg: DictConfig) -> None:
    """Build the context from config, run this shard's samples, print the summary."""
    s = cfg.synth
    try:
        if s.mode not in GRAPHS:
            raise InputError(f"synth.mode={s.mode!r} must be one of {', '.join(GRAPHS)}")
        plain = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("llm", "embedder", "store", "synth")}
        ctx = SynthContext.from_config(corpus=instantiate(cfg.corpus).name, **plain)
        records = read_acer_inputs(s.acer_input) if s.mode == "acer" else ()
        lengths = OmegaConf.to_container(s.target_lengths, resolve=True)
        jobs = make_jobs(s.mode, s.num_samples, lengths, s.shard, s.num_shards, records, s.seed)
        samples_path, rejected_path = output_paths(s.out_dir, s.shard, s.num_shards)
        summary = asyncio.run(run_jobs(
            GRAPHS[s.mode], ctx, s.mode, jobs, samples_path, rejected_path, s.samples_in_flight,
            s.max_error_rate, s.min_finished_for_stop, s.progress, s.retry_rejected,
        ))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except RunStopped as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"{samples_path}: {summary.line()}")
    if cfg.report:  # everything in the samples file, this run's and earlier runs' samples
        if samples_path.exists():
            report(samples_path, png_beside(samples_path))
        else:
            print(f"report: no samples in {samples_path} yet")


if __name__ == "__main__":
    main()
