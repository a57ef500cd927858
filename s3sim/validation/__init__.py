"""`s3sim-validate`: replay a real vLLM serving run in the simulator and compare the two, metric by metric.

    s3sim-validate RUN_DIR --out DIR [--profile PROFILE_DIR|none] [--model PRESET_OR_CONFIG_JSON] [--gpu PRESET]

RUN_DIR holds what a real run recorded (`meta.json`, `requests.jsonl`, and `timeseries.csv` for the plot where
recorded; the folder above it, with `run/` inside, is accepted too). Every request is replayed with the `vllm` policy (vLLM's V1 scheduler)
under the run's engine settings, arriving at its `queued_ts` (relative to the earliest one: the zero of every
real metric) with the run's prompt and output lengths. vLLM stamps `queued_ts` when its engine takes a request
in, between two steps; the replay's `queued` is likewise the first iteration boundary from the arrival (at once
where the engine was idle). The metrics, real and simulated alike: TTFT = first token - queued; TPOT = (last
token - first token) / (output tokens - 1) over requests with more than one output token; end-to-end latency =
last token - queued; throughput = requests (output tokens) / (last token of the run - first queued). Times are
reported in milliseconds, like the peer's table, and their metric names say so (`ttft_p50_ms`).

KV capacity: `kv_cache.num_gpu_blocks * block_size` when meta.json gives it; otherwise vLLM's memory accounting,

    blocks = floor((floor(gpu_memory_utilization * device memory) - weights - NON_KV_RESERVE_BYTES)
                   / (block_size * KV bytes per token))          (per GPU: weights and KV heads split by TP)

with the device memory from meta.json (`hardware.device_total_memory_bytes`) or else the GPU preset, and the
non-KV reserve calibrated on the one run where every term is known (see `kv_capacity.NON_KV_RESERVE_BYTES`).

Latency: the run's operator profile (`RUN_DIR/profile`, else `RUN_DIR/../profile`, unless --profile says otherwise) through
`s3sim.latency.operators.OperatorLatency`; without one (`--profile none`) the operator sum on the GPU's datasheet
(`s3sim.latency.datasheet`). Tensor parallelism's all-reduces (`--all-reduce`, default auto) are priced from the
all-reduce table measured on the run's GPUs where the GPU preset names one (`measured_all_reduce`: the two PCIe
RTX PRO 6000, the A100 DGX), as the engine ran it where the preset also names whole steps to fit that to
(`engine`: the table's floor plus the bytes at its measured bandwidth over a factor fitted to whole steps,
`s3sim.latency.operators.in_engine_factor`; the logits' and expert parallelism's all-gathers get the same
factor), else as a ring over the preset's interconnect, and the latency line says which.

Before any replay the inputs are checked against each other and against physics (`s3sim.validation.checks`):
meta.json against itself, requests.jsonl against meta.json (every request once, timestamps in seconds within
the run's recorded duration, no tokens at one instant), the recorded KV blocks against the recorded device
memory, every request within `max_model_len`, and --gpu / --model against the GPU and model the run and its
profile name (a disagreement is refused: `--profile none --fit-from PRESET` prices a run with another GPU's
fitted efficiencies, and says so).

Writes into DIR only once the replay has succeeded: `timeline.png` and `timeline_data.csv` (running, waiting and KV
use over time, real against simulated), `peer.csv` (the errors another simulator reports on the same run, from
`llmservingsim_summary.txt`, when there is one) and `validation.csv` last (`metric, real, simulated, error_pct,
sensitivity, kv_capacity_source, unserved_requests` with error_pct = 100 * (simulated - real) / real, sensitivity
how far error_pct moves were every step 1 % slower (a second replay), kv_capacity_source `recorded` (meta.json's
block count) or `derived` (vLLM's memory accounting), and unserved_requests the rows of requests.jsonl whose three
times are all null (requests the run did not serve: left out of both sides, and said)). They are written into a
temporary folder inside DIR and moved into place, validation.csv last; an earlier run's outputs (`outputs.OUTPUTS`)
are removed from DIR once the inputs have passed their checks, so DIR never holds a file this run did not write, and
a replay that fails leaves no validation.csv. Other files in DIR are left alone.
Bad input is one line on stderr and exit status 2, before the replay and before DIR is touched.

The parts: `cli` (the command line), `replay` (one replay end to end), `run_files` and `checks` (reading and
checking a run), `engine`, `model_gpu`, `kv_capacity` and `pricing` (what the replay is built from), `metrics`,
`peer`, `verdict` and `timeline` (what it reports), `outputs` (how it writes).
"""
