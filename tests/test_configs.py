"""Every shipped config composes and instantiates (nothing is loaded or written by constructors)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tests.conftest import ROOT

CONF = ROOT / "conf"
OPTIONS = {group: sorted(p.stem for p in (CONF / group).glob("*.yaml")) for group in ("corpus", "embedder", "chunker", "store")}
RUN_KEYS = {"mode", "num_samples", "target_lengths", "shard", "num_shards", "out_dir", "samples_in_flight",
            "max_error_rate", "min_finished_for_stop", "progress", "acer_input", "retry_rejected"}
REQUIRED = {"files": ["corpus.path=/tmp/some/docs"]}


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in OPTIONS.items() for o in opts])
def test_each_option_composes_and_instantiates(group, option, minilm_tokenizer):
    cfg = _compose("index", [f"{group}={option}", *REQUIRED.get(option, [])])
    obj = instantiate(cfg[group], **({"tokenizer": minilm_tokenizer} if group == "chunker" else {}))
    assert type(obj).__module__.startswith("agents.")


def test_index_defaults(tmp_path):
    cfg = _compose("index", [])
    assert cfg.corpus._target_ == "agents.corpus.PythonDocsCorpus"
    assert cfg.embedder._target_ == "agents.embedder.SentenceTransformerEmbedder"
    assert Path(cfg.store.path).parts[-1] == "chroma" and cfg.query is None


def test_no_secret_is_read_into_config():
    for path in CONF.rglob("*.yaml"):
        text = path.read_text().lower()
        assert "api_key:" not in text, f"{path}: keys are read from the environment by name (api_key_env)"


@pytest.mark.parametrize("llm", sorted(p.stem for p in (CONF / "llm").glob("*.yaml")))
@pytest.mark.parametrize("synth", sorted(p.stem for p in (CONF / "synth").glob("*.yaml")))
def test_synthesize_config_builds_the_graph_context(llm, synth):
    from omegaconf import OmegaConf

    from graphs.context import SynthContext

    cfg = _compose("synthesize", [f"llm={llm}", f"synth={synth}"])
    plain = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("llm", "embedder", "store", "synth")}
    ctx = SynthContext.from_config(corpus=instantiate(cfg.corpus).name, **plain)
    assert ctx.llm_model == cfg.llm.model and __import__("json").loads(ctx.store)["path"] == cfg.store.path
    assert instantiate(OmegaConf.create(__import__("json").loads(ctx.embedder))).name == cfg.embedder.name


def test_synth_config_and_context_fields_stay_in_sync():
    from dataclasses import fields

    from graphs.context import SynthContext

    cfg = _compose("synthesize", [])
    context_fields = {f.name for f in fields(SynthContext)}
    graph_keys = set(cfg.synth) - RUN_KEYS
    assert graph_keys <= context_fields, graph_keys - context_fields
    from_other_groups = {f"llm_{k}" for k in cfg.llm} | {"embedder", "store", "corpus"}
    assert context_fields == graph_keys | from_other_groups


TRAIN_GROUPS = ("model", "data", "trainer", "stage", "attention", "logger", "callbacks")
TRAIN_REQUIRED = {"llama": ["model.path=/models/some-llama"]}


@pytest.mark.parametrize("group,option", [(g, p.stem) for g in TRAIN_GROUPS for p in sorted((CONF / g).glob("*.yaml"))])
def test_each_train_option_composes_and_instantiates(group, option):
    """Every train option resolves, and what the entry point builds from it builds: logger, callbacks,
    strategy, module (no model is loaded until configure_model)."""
    from omegaconf import OmegaConf

    from lightning_modules.module import LongContextLM
    from lightning_modules.stages import register_resolvers

    register_resolvers()
    cfg = _compose("train", [f"{group}={option}", *TRAIN_REQUIRED.get(option, [])])
    c = OmegaConf.to_container(cfg, resolve=True)
    s, a = c["stage"], c["attention"]
    assert set(s) == {"name", "previous", "seq_len", "rope_theta", "cp_degree", "init_from", "max_steps", "lr",
                      "warmup_steps", "batch_size", "checkpoint_every"}
    assert a["name"] in ("sdpa", "flash", "ring")
    if cfg.logger:
        instantiate(cfg.logger)
    for cb in cfg.callbacks.values():
        instantiate(cb)
    if isinstance(c["trainer"]["strategy"], dict):
        assert c["trainer"]["strategy"]["_target_"].startswith("lightning.")
    LongContextLM(init_from=s["init_from"], model_config=c["model"]["config"], rope_theta=s["rope_theta"],
                  seq_len=s["seq_len"], attention=a["name"], cp_degree=s["cp_degree"], **c["optim"])


def test_stage_ladder_doubles_length_and_multiplies_theta_by_four():
    from lightning_modules.stages import register_resolvers

    register_resolvers()
    # (stages, θ multiplier of the first stage): the GPU ladder's first stage already extends the base model
    ladders = {"tiny": (["tiny_1k", "tiny_2k", "tiny_4k"], 1), "llama": (["128k", "256k", "512k", "1m"], 4)}
    for model, (stages, first) in ladders.items():
        extra = [f"model={model}", *TRAIN_REQUIRED.get(model, [])]
        start = _compose("train", [*extra, f"stage={stages[0]}"]).stage.seq_len
        for i, stage in enumerate(stages):
            cfg = _compose("train", [*extra, f"stage={stage}"])
            assert cfg.stage.rope_theta == cfg.model.rope_theta * first * 4 ** i, stage
            assert cfg.stage.seq_len == start * 2 ** i, stage
            if i:
                assert cfg.stage.previous == stages[i - 1]
                assert cfg.stage.init_from == f"{cfg.out_dir}/{stages[i - 1]}/hf"
            assert cfg.stage.seq_len % (2 * cfg.stage.cp_degree * 128) == 0, stage


EVAL_REQUIRED = {"checkpoint": ["target.path=/models/some-llama/hf"], "pregenerated": ["task.path=/data/ruler"],
                 "sweep": ["target.path=/data/train/ablation"]}


@pytest.mark.parametrize("group,option",
                         [(g, p.stem) for g in ("target", "task") for p in sorted((CONF / g).glob("*.yaml"))])
def test_each_evaluate_option_composes_and_its_settings_are_known(group, option):
    from omegaconf import OmegaConf

    from evals.evaluation import KINDS
    from tests.conftest import compose

    cfg = compose("evaluate", [f"{group}={option}", *EVAL_REQUIRED.get(option, [])])
    target, task = (OmegaConf.to_container(cfg[k], resolve=True) for k in ("target", "task"))
    assert target["kind"] in ("endpoint", "checkpoint", "sweep") and target["api"] in ("completions", "chat")
    assert "/" not in target["name"] and task["kind"] in KINDS
    assert cfg.out_dir.endswith(f"/eval/{target['name']}/{task['name']}")
    if task["kind"] == "niah":
        from evals.needles import NeedleFormat

        NeedleFormat(**task["needle"])
        assert task["needle"] == task["formats"][task["format"]]
    if task["kind"] == "ruler":
        from evals.ruler import TASKS

        assert tuple(task["tasks"]) == TASKS


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_each_ablation_experiment_is_a_stage_2_variant_from_the_shared_stage_1_export(experiment):
    from omegaconf import OmegaConf

    from tests.conftest import compose

    base = compose("train", ["model=tiny", "stage=demo_2k"])
    cfg = compose("train", ["model=tiny", f"+experiment={experiment}"])
    assert cfg.stage.name == "demo_2k" and cfg.stage.init_from == f"{cfg.out_dir}/demo_512/hf"
    assert cfg.stage_dir == f"{cfg.out_dir}/demo_2k"  # a single run; under -m, runs_dir is the job's folder
    changed = {k for k in ("rope_theta", "max_steps") if cfg.stage[k] != base.stage[k]}
    sources = OmegaConf.to_container(cfg.data.sources, resolve=True)
    expected = {"full": set(), "long_base_theta": {"rope_theta"}, "short_only": set(), "theta_only": {"max_steps"}}
    assert changed == expected[experiment]
    assert sources[0]["path"].endswith("train_512.jsonl" if experiment == "short_only" else "train_2048.jsonl")
