"""The trained output-length predictor: an encoder fine-tuned to classify a prompt into length buckets.

torch and transformers are imported only by the modules that need them (`model`, `train`, `evaluate`), so
the simulator's core stays light; `TrainedPredictor` in table mode needs neither.
"""
