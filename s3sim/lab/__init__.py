"""The simulator's lab: tools that measure, fit or tabulate, run by a person or `make`, never imported by the
runtime (a test checks it).

`calibrate` fits the roofline to an executor profile, `operator_calibration` fits the datasheet operator
model to measured operators (`make calibrate`), `parallel_table` sets tensor parallelism on the operator model
side by side, `token_counts` counts the text data sets' tokens into `s3sim/workload/tables/`. What the
runtime needs from a measurement (a latency model, a length table) lives in its runtime package; a lab
module imports it from there.
"""
