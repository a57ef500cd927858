"""Re-predicting a request's remaining length as it generates: an error model whose spread shrinks with the
tokens generated, measured on a served model's own hidden states (`s3exec.lab.reprediction`, TRAIL's idea).

At each checkpoint g of the measured table (g > 0: before the first, the length predictor's estimate from the
prompt stands), a running request's remaining length is re-predicted as its true remaining length times
exp(bias(g) + spread(g) x z), z a standard normal correlated with the request's previous z as the table's
`log_corr` says (0 where it has none), drawn from (seed, request id, checkpoint) only, so the same request gets
the same estimate in every engine, batching and jump. Between checkpoints, and after the last,
the latest estimate is carried (less the tokens generated since). The estimate is at least one token and at
most what max_seq_len leaves.
"""
from __future__ import annotations

import bisect
import math

import numpy as np

from s3sim.core.errors import ConfigError
from s3sim.core.predictors.synthetic import uniforms


def carried(left: float, at: int, generated: int, max_seq_len: int | None) -> int:
    """An estimate of `left` tokens made at `at` generated, once `generated` are: less the tokens since, at least 1
    and at most what max_seq_len leaves."""
    left = round(left) - (generated - at)
    return int(max(1, min(left, max_seq_len - generated))) if max_seq_len else int(max(1, left))


class RePrediction:
    def __init__(self, checkpoints, log_sd, log_bias, seed: int = 0, max_seq_len: int | None = None,
                 name: str = "measured", log_corr=None):
        self.name = name  # where the spreads come from (the summary's `repredict`)
        g = [int(x) for x in checkpoints]
        sd, bias = [float(x) for x in log_sd], [float(x) for x in log_bias]
        corr = [0.0] * len(g) if log_corr is None else [float(x) for x in log_corr]
        if not g or not len(g) == len(sd) == len(bias) == len(corr):
            raise ConfigError("predictor.repredict: the table needs one spread, one bias (and one correlation) per "
                              "checkpoint")
        if any(b <= a for a, b in zip(g, g[1:])) or g[0] < 0:
            raise ConfigError(f"predictor.repredict: checkpoints must rise from 0 or more, got {g}")
        if any(not (0 <= s < math.inf) for s in sd) or any(not math.isfinite(b) for b in bias):
            raise ConfigError("predictor.repredict: spreads must be finite and non-negative, biases finite")
        if any(not -1.0 <= c <= 1.0 for c in corr):
            raise ConfigError("predictor.repredict: correlations must be between -1 and 1")
        keep = [i for i, x in enumerate(g) if x > 0]  # at 0 the prompt's predictor stands
        self.checkpoints = [g[i] for i in keep]
        self.log_sd = [sd[i] for i in keep]
        self.log_bias = [bias[i] for i in keep]
        self.log_corr = [corr[i] for i in keep]  # with the previous checkpoint's error (the first one's is unused)
        self.seed = int(seed)
        self.max_seq_len = max_seq_len
        self._z: dict[int, list[float]] = {}  # request id -> its standard normal errors, checkpoint by checkpoint

    def _normal(self, rid: int, k: int) -> float:
        ids = np.array([rid], dtype=np.int64)
        u1 = max(float(uniforms(self.seed, ids, 101 + 2 * k)[0]), 1e-300)
        u2 = float(uniforms(self.seed, ids, 102 + 2 * k)[0])
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)  # Box-Muller

    def _factor(self, rid: int, k: int) -> float:
        """exp(bias + spread x z) at checkpoint k, z correlated with the previous checkpoint's as the table says
        (z_k = rho z_(k-1) + sqrt(1 - rho^2) e_k, every e drawn from (seed, request, checkpoint))."""
        z = self._z.setdefault(rid, [])
        while len(z) <= k:
            j, e = len(z), self._normal(rid, len(z))
            rho = self.log_corr[j] if j else 0.0
            z.append(rho * z[-1] + math.sqrt(1.0 - rho * rho) * e if j else e)
        return math.exp(self.log_bias[k] + self.log_sd[k] * z[k])

    def remaining(self, r, generated: int) -> int | None:
        """Re-predicted output tokens `r` has left once it has `generated`, or None before the first checkpoint."""
        k = bisect.bisect_right(self.checkpoints, generated) - 1
        if k < 0:
            return None
        c = self.checkpoints[k]
        return carried(max(r.output_len - c, 1) * self._factor(r.id, k), c, generated, self.max_seq_len)


class HiddenStateRePrediction:
    """Re-prediction from the served model's own hidden states (the executor only): at each checkpoint g > 0 the
    executor hands over the last layer's state that samples token g + 1 (`observe`), and a linear probe fitted on
    the model's answers (`s3exec.lab.reprediction`) predicts log(remaining tokens) from it and log(1 + g). Between
    checkpoints the latest estimate is carried, as in `RePrediction`."""
    name = "hidden"

    def __init__(self, mean, scale, weights, checkpoints, max_seq_len: int | None = None):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.weights = np.asarray(weights, dtype=np.float64)
        if not (self.mean.shape == self.scale.shape == self.weights.shape) or self.mean.ndim != 1:
            raise ConfigError("predictor.repredict=hidden: the probe's mean, scale and weights differ in shape")
        self.checkpoints = frozenset(int(g) for g in checkpoints if int(g) > 0)
        self.max_seq_len = max_seq_len
        self._latest: dict[int, tuple[int, float]] = {}  # request id -> (checkpoint, predicted remaining there)

    @property
    def width(self) -> int:
        """The hidden size the probe reads (its features less log(1 + g) and the constant)."""
        return len(self.weights) - 2

    def wants(self, generated: int) -> bool:
        return generated in self.checkpoints

    def observe(self, rid: int, generated: int, state) -> None:
        x = np.concatenate([np.asarray(state, dtype=np.float64).ravel(), [math.log1p(generated), 1.0]])
        if len(x) != len(self.weights):
            raise ConfigError(f"predictor.repredict=hidden: the probe reads states of {self.width} values, the "
                              f"served model gave {len(x) - 2}: it was fitted on another model")
        self._latest[rid] = (generated, math.exp(float(((x - self.mean) / self.scale) @ self.weights)))

    def remaining(self, r, generated: int) -> int | None:
        seen = self._latest.get(r.id)
        if seen is None or seen[0] > generated:  # none yet, or from before a preemption that lost it (recompute)
            return None
        return carried(seen[1], seen[0], generated, self.max_seq_len)


def hidden_state_probe(scheduler) -> HiddenStateRePrediction | None:
    """The re-predictor of `scheduler`'s predictor that reads the served model's hidden states
    (predictor.repredict=hidden), or None: what the executor must feed each step."""
    rp = getattr(getattr(scheduler, "predictor", None), "reprediction", None)
    return rp if isinstance(rp, HiddenStateRePrediction) else None
