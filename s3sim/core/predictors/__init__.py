from s3sim.core.predictors.base import Predictor
from s3sim.core.predictors.buckets import Buckets
from s3sim.core.predictors.oracle import OraclePredictor
from s3sim.core.predictors.synthetic import ERROR_SHAPES, SyntheticPredictor

__all__ = ["Buckets", "Predictor", "OraclePredictor", "SyntheticPredictor", "ERROR_SHAPES"]
