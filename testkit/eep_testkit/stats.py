"""Statistics of benchmark results: the bootstrap interval of a median.

Standard library only: bench/gpu_recovery.py imports it on GPU machines that carry only torch, mooncake,
pydantic and this repository's source folders. Who uses it: bench/gpu_recovery.py (the step-time ratio of
one run), bench/pooled_step_ratio.py (the same ratio over several runs' rounds pooled): one estimator, so
the two intervals compare.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence

__all__ = ["bootstrap_median_ci"]


def bootstrap_median_ci(values: Sequence[float], resamples: int = 2000) -> list[float]:
    """95 % interval `[low, high]` of the median of `values` (percentile bootstrap, fixed seed: the same
    values give the same interval). Raises statistics.StatisticsError when `values` is empty. Pure."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return [medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]]
