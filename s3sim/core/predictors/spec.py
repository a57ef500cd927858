"""The `predictor` config group's structured configs: one dataclass per predictor, each knob with one default
(the value its conf/predictor/<name>.yaml states too, a test holds them equal) and one check.

`s3sim.config.predictor_spec` reads a run's `predictor` node into the dataclass of its `name`: an unknown key
or a value of the wrong type is one line naming `predictor.<key>`, a value out of range one line from
`__post_init__`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from s3sim.core.errors import ConfigError

BUCKETINGS = ("equal", "quantile")
FEEDBACK = ("mispredicted", "all")
ERROR_SHAPES = ("uniform", "adjacent", "under", "over")


MAX_LATENCY_MS = 1e12  # one prediction's cost at most: the simulator refuses runs past 1e9 s anyway


@dataclass
class PredictorSpec:
    """The fields every predictor takes."""

    name: str = "oracle"
    num_buckets: int = 10
    bucketing: str = "equal"  # equal (width max_seq_len / num_buckets) | quantile (edges from the lengths)
    latency_ms: float = 0.0  # one prediction's cost, charged before admission; 0: free
    feedback: str = "mispredicted"  # what the supervisor reports to the predictor: mispredicted | all
    # re-predicting the remaining length as tokens are generated: null (never) | measured (the error model
    # measured on SmolLM2's hidden states, s3sim/predictor/tables/reprediction.csv) | a CSV of the same columns
    # | hidden (the executor on SmolLM2: its probe reads the served model's hidden states as it generates)
    repredict: Optional[str] = None

    def __post_init__(self):
        if self.num_buckets < 2:
            raise ConfigError(f"predictor.num_buckets must be an integer of at least 2, got {self.num_buckets!r}")
        if self.bucketing not in BUCKETINGS:
            raise ConfigError(f"predictor.bucketing '{self.bucketing}' is unknown; valid: {', '.join(BUCKETINGS)}")
        if not 0 <= self.latency_ms < math.inf:
            raise ConfigError(f"predictor.latency_ms must be a non-negative number of milliseconds, got "
                              f"{self.latency_ms!r}")
        if self.latency_ms > MAX_LATENCY_MS:
            raise ConfigError(f"predictor.latency_ms must be at most {MAX_LATENCY_MS:g} (1e9 s, the simulator's latest "
                              f"time), got {self.latency_ms!r}")
        if self.feedback not in FEEDBACK:
            raise ConfigError(f"predictor.feedback '{self.feedback}' is unknown; valid: {', '.join(FEEDBACK)}")
        if self.repredict is not None and not str(self.repredict).strip():
            raise ConfigError("predictor.repredict must be null, measured or the path of a CSV "
                              "(generated, log_sd, log_bias), got an empty string")


@dataclass
class OracleSpec(PredictorSpec):
    name: str = "oracle"

    def __post_init__(self):
        super().__post_init__()
        if self.repredict is not None:
            raise ConfigError(f"predictor.repredict={self.repredict} adds estimation error to the oracle, which "
                              f"knows every length; use predictor=trained or synthetic, or repredict=null")


@dataclass
class SyntheticSpec(PredictorSpec):
    name: str = "synthetic"
    accuracy: float = 0.8  # share of requests predicted in their true bucket
    error_shape: str = "adjacent"  # where the others land: uniform | adjacent | under | over

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.accuracy <= 1.0:
            raise ConfigError(f"predictor.accuracy must be between 0 and 1, got {self.accuracy!r}")
        if self.error_shape not in ERROR_SHAPES:
            raise ConfigError(f"predictor.error_shape '{self.error_shape}' is unknown; valid: {', '.join(ERROR_SHAPES)}")


@dataclass
class RetrainSpec:
    """Online retraining of the trained predictor (predictor.source=model)."""

    every: int = 0  # observations between retraining rounds; 0 never retrains
    steps: int = 8  # optimizer steps per round
    batch_size: int = 16
    replay: float = 0.25  # share of each batch drawn from the model's training data
    window: int = 512  # most recent observations kept
    lr: float = 5.0e-5
    head_lr: float = 1.0e-3
    seed: int = 0

    def __post_init__(self):
        for key, least in (("every", 0), ("seed", 0), ("steps", 1), ("batch_size", 1), ("window", 1)):
            if getattr(self, key) < least:
                raise ConfigError(f"predictor.retrain.{key} must be an integer of at least {least}, got "
                                  f"{getattr(self, key)!r}")
        if not 0.0 <= self.replay <= 1.0:
            raise ConfigError(f"predictor.retrain.replay must be between 0 and 1, got {self.replay!r}")
        for key in ("lr", "head_lr"):
            if not 0 < getattr(self, key) < math.inf:
                raise ConfigError(f"predictor.retrain.{key} must be a positive number, got {getattr(self, key)!r}")


@dataclass
class TrainedSpec(PredictorSpec):
    name: str = "trained"
    source: str = "table"  # table: committed predictions (no torch needed) | model: run the model live
    table: Optional[str] = None  # default: s3sim/predictor/tables/<workload>[-<generator>].csv.gz
    allow_in_sample: bool = False  # rows the predictor was trained on are refused unless true
    model: Optional[str] = None  # source=model: a run folder from `s3predict train`; null: the shipped predictor
    threads: int = 1  # torch CPU threads for source=model
    retrain: RetrainSpec = field(default_factory=RetrainSpec)

    def __post_init__(self):
        super().__post_init__()
        if self.source not in ("table", "model"):
            raise ConfigError(f"predictor.source must be table or model, got {self.source!r}")
        if self.threads < 1:
            raise ConfigError(f"predictor.threads must be a positive integer, got {self.threads!r}")


SPECS = {"oracle": OracleSpec, "synthetic": SyntheticSpec, "trained": TrainedSpec}
