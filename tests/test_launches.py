"""The SHD net's ops per time step stay under their goals (online <= 20, time-fused <= 4) (a count is exact: one run decides)."""
from __future__ import annotations

import pytest
import torch

from stllr_kernels.backends import unavailable_reason

from conftest import backend

pytestmark = pytest.mark.skipif(unavailable_reason("cpu", "cpu") is not None,
                                reason="the counts are for the compiled cpu backend (extension not built)")


@pytest.mark.parametrize("mode", ["online", "time-fused"])
def test_shd_ops_per_step_under_the_goals(seed, mode):
    from benchmarks import launches
    from benchmarks.networks import SHD
    spec = SHD.with_(T=20, delay_ls=18)  # the shape the goals were set at; a count does not depend on the batch
    with backend("cpu"):
        counter = launches.count_ops(launches.batch_runner(spec, mode, 2, torch.device("cpu")))
    per_step = counter.total / spec.T
    assert per_step <= launches.GOALS[mode], (per_step, counter.ops.most_common(10))
    assert counter.host_syncs == 0, "a host synchronization in the forward or backward"
    assert counter.ops["stllr::recurrent_sequence"] == (spec.T if mode == "online" else 1)
