# The two commands of README.md. Both build .venv on first use (torch first, pinned: an unpinned
# torch pulls gigabytes of CUDA wheels), then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.selflong-installed
DEMO_DIR ?= data/demo
# stage-1 training samples; evaluation samples per length; extra overrides of the index and of each stage
# (the test suite runs a short demo with them)
DEMO_SAMPLES ?= 8000
DEMO_EVAL ?= 100
DEMO_INDEX ?=
DEMO_STAGE1 ?=
DEMO_STAGE2 ?=

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

# Attention blocks on CPU are tens of MB, allocated and freed many times a step; above 32 MB glibc maps and unmaps
# each one (page faults: most of the ring's time). Keeping them in the heap makes a ring step 3x faster.
demo: export MALLOC_MMAP_THRESHOLD_ = 1073741824
demo: export MALLOC_TRIM_THRESHOLD_ = 4294967296
demo: $(STAMP)
	$(PY) index.py store.path=$(DEMO_DIR)/chroma $(DEMO_INDEX)
	$(PY) index.py store.path=$(DEMO_DIR)/chroma $(DEMO_INDEX) top_k=3 \
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
	@echo "Training data: programmatic only (passkeys in the digit-free Python docs), from the one needle generator"
	$(PY) evaluate.py task=passkey export_training=$(DEMO_DIR)/passkey/train_512.jsonl export.seq_len=512 \
		export.samples=$(DEMO_SAMPLES)
	$(PY) evaluate.py task=passkey export_training=$(DEMO_DIR)/passkey/train_2048.jsonl export.seq_len=2048 \
		export.samples=2000
	@echo "Stage 1: model=tiny from random init at 512 tokens, base θ"
	SELFLONG_DATA=$(DEMO_DIR) $(PY) train.py model=tiny stage=demo_512 $(DEMO_STAGE1)
	@echo "Stage 2: 4x the length (2048), θ x4, ring attention over 2 CPU processes"
	SELFLONG_DATA=$(DEMO_DIR) OMP_NUM_THREADS=1 $(PY) train.py model=tiny stage=demo_2k attention=ring \
		stage.cp_degree=2 trainer.devices=2 trainer.strategy=ddp_spawn $(DEMO_STAGE2)
	@echo "θ only: stage 1 with stage 2's θ and length, no training"
	SELFLONG_DATA=$(DEMO_DIR) $(PY) train.py model=tiny stage=demo_2k stage.max_steps=0 \
		stage_dir=$(DEMO_DIR)/train/theta_only
	@echo "NIAH through transformers serve: each model at 512 and 2048 tokens ($(DEMO_EVAL) samples per length)"
	for run in demo_512 theta_only demo_2k; do \
		$(PY) evaluate.py target=checkpoint target.path=$(DEMO_DIR)/train/$$run/hf target.allow_longer=true \
			task=passkey 'task.lengths=[512,2048]' task.num_depths=5 task.samples_per_cell=$$(($(DEMO_EVAL) / 5)) \
			out_dir=$(DEMO_DIR)/eval/$$run progress=false > /dev/null || exit 1; \
	done
	@echo
	@echo "Exact match of the 5-digit key (%), 512 and 2048 tokens:"
	@$(PY) -m evals.report $(DEMO_DIR)/eval --first "model (demo_512: stage 1; theta_only: θ x4, untrained; demo_2k: stage 2)"
	@echo "Tables and heatmaps: $(DEMO_DIR)/eval/<model>/{scores.md,heatmap_passkey.png}; checkpoints: $(DEMO_DIR)/train/{demo_512,demo_2k}/hf"

clean:
	rm -rf $(VENV) $(DEMO_DIR)
