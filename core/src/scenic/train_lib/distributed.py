"""Multi-process (multi-host) start-up through JAX's own `jax.distributed`.

Each process runs the same command; JAX connects them through a coordinator. The address,
process count and id come from flags, from JAX's environment variables
(`JAX_COORDINATOR_ADDRESS`, ...), or from cluster auto-detection (SLURM, Open MPI,
Kubernetes, Cloud TPU) when `auto` is set. Nothing is initialised for a single process.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("scenic")


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
) -> bool:
    """Joins the distributed run if one is configured; returns whether it did."""
    import jax

    explicit = (coordinator_address, num_processes, process_id)
    if (
        not auto
        and all(v is None for v in explicit)
        and not os.environ.get("JAX_COORDINATOR_ADDRESS")
    ):
        return False
    # Cross-process collectives on CPU need gloo (the default is none); GPU and TPU ignore
    # this. It must be set, like everything here, before JAX creates its backends.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
    logger.info(
        "Process %d of %d; %d local and %d global devices.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True
