"""The executor's lab: tools that measure, fit or tabulate, run by a person or `make`, never imported by the
runtime (a test checks it).

`bench` the executor's throughput, `profile` whole steps over a grid of batch shapes, `operator_profile`
operators in the shared vLLM format, `bandwidth` the bytes a step reads over its time, `fidelity` the
simulator against the executor, `gpu_check` the whole GPU validation in one run, `own_lengths` the served
model's own answer lengths, `reprediction` a probe re-predicting remaining lengths from the served model's hidden
states, `natural` S3 on them.
"""
