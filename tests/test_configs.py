"""Every shipped config composes and instantiates (nothing is loaded or written by constructors)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tests.conftest import ROOT

CONF = ROOT / "conf"
OPTIONS = {group: sorted(p.stem for p in (CONF / group).glob("*.yaml")) for group in ("corpus", "embedder", "chunker", "store")}
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
