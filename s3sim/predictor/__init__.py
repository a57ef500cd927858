from s3sim.predictor.base import Predictor
from s3sim.predictor.buckets import Buckets
from s3sim.predictor.oracle import OraclePredictor
from s3sim.predictor.synthetic import ERROR_SHAPES, SyntheticPredictor

__all__ = ["Buckets", "Predictor", "OraclePredictor", "SyntheticPredictor", "ERROR_SHAPES"]
