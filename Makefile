# The two commands of README.md. Both build .venv on first use (torch first, pinned: an unpinned
# torch pulls gigabytes of CUDA wheels), then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.selflong-installed
DEMO_DIR ?= data/demo

.PHONY: test demo install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) index.py store.path=$(DEMO_DIR)/chroma
	$(PY) index.py store.path=$(DEMO_DIR)/chroma top_k=3 \
		'query=["How do I catch an exception and re-raise it?","What does the yield keyword do in a function?","How can I read a CSV file?"]'
ifdef SELFLONG_LLM_URL
	$(PY) synthesize.py store.path=$(DEMO_DIR)/chroma synth.out_dir=$(DEMO_DIR)/synth synth.num_samples=4 \
		'synth.target_lengths=[16384]' synth.qfs_chunk_tokens=2048 synth.qfs_budget_tokens=4096
	$(PY) -c "import json; s = json.loads(open('$(DEMO_DIR)/synth/samples.jsonl').readline()); \
		print('first sample:', s['n_tokens'], 'tokens from', len(s['doc_ids']), 'documents; instruction:', s['instruction'])"
else
	@echo
	@echo "Synthesis skipped: no endpoint configured. Point it at any OpenAI-compatible server, e.g."
	@echo "  vllm serve meta-llama/Llama-3.1-8B-Instruct --port 8000"
	@echo "  SELFLONG_LLM_URL=http://127.0.0.1:8000/v1 SELFLONG_LLM_MODEL=meta-llama/Llama-3.1-8B-Instruct make demo"
	@echo "(OPENAI_API_KEY is read from the environment when the server needs a key.)"
endif
	@echo "Programmatic training data (passkeys in the digit-free Python docs), from the one needle generator:"
	$(PY) evaluate.py task=passkey export_training=$(DEMO_DIR)/passkey/train_1024.jsonl export.seq_len=1024
	$(PY) evaluate.py task=passkey export_training=$(DEMO_DIR)/passkey/train_2048.jsonl export.seq_len=2048
	SELFLONG_DATA=$(DEMO_DIR) $(PY) train.py model=tiny stage=tiny_1k
	SELFLONG_DATA=$(DEMO_DIR) $(PY) train.py model=tiny stage=tiny_2k
	@echo "NIAH of both stages through transformers serve (lengths past a stage's own are run on purpose):"
	for stage in tiny_1k tiny_2k; do \
		$(PY) evaluate.py target=checkpoint target.path=$(DEMO_DIR)/train/$$stage/hf target.allow_longer=true \
			task=passkey 'task.lengths=[512,1024,2048]' out_dir=$(DEMO_DIR)/eval/$$stage progress=false || exit 1; \
	done
	@echo "Heatmaps: $(DEMO_DIR)/eval/tiny_1k/heatmap_passkey.png $(DEMO_DIR)/eval/tiny_2k/heatmap_passkey.png"

clean:
	rm -rf $(VENV) $(DEMO_DIR)
