"""A candidate's measured inference latency: its net's forward pass in this process, as served.

The net is the one ``model.build_net`` makes (latency depends on the architecture, not on the
weights), hybridized as the logged model runs it, fed normalised images; each call waits for
MXNet's result. Batches of 1 and of 100, the median of repeated calls after a warm-up, in
milliseconds, labelled with the machine (``machine``) and its load: a figure of this machine at
that moment, to compare candidates measured in one run, not across machines.
"""

import os
import platform
import statistics
import time

import numpy as np

BATCHES = (1, 100)


def machine() -> str:
    """This machine in one line: CPU model, cores this process may use, and the load average."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} cores, load {os.getloadavg()[0]:.1f}"


def measure(hidden1: int, hidden2: int, repeat: int = 50, warmup: int = 5) -> dict[str, float]:
    """``latency_batch1_ms`` and ``latency_batch100_ms``: median milliseconds of ``repeat`` forward calls."""
    from mxnet import nd

    from legoexp.model import INPUT_SIZE, build_net

    net = build_net(hidden1, hidden2, seed=0)
    net.hybridize(static_alloc=True, static_shape=True)
    result = {}
    for batch in BATCHES:
        x = nd.array(np.random.default_rng(0).standard_normal((batch, INPUT_SIZE), dtype=np.float32))
        seconds = []
        for i in range(warmup + repeat):
            start = time.perf_counter()
            net(x).wait_to_read()
            if i >= warmup:
                seconds.append(time.perf_counter() - start)
        result[f"latency_batch{batch}_ms"] = 1000 * statistics.median(seconds)
    return result
