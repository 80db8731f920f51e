"""Where jobs run: Ray tasks (a local Ray by default, a cluster with ``--address``), or one after
another in this process when Ray is not installed. Both run :func:`task.run_attempt`."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from threestudio_like.sweep.grid import JobSpec
from threestudio_like.sweep.task import run_attempt

# set to 1 to run as if Ray were not installed (the sequential executor)
NO_RAY_ENV = "THREESTUDIO_LIKE_NO_RAY"
REPO_ROOT = Path(__file__).resolve().parents[2]
RAY_TASK_RETRIES = 3  # relaunches of a task whose worker process or node was lost


class ExecutorError(ValueError):
    """The executor cannot start as asked (no Ray with --address, no cluster there): one line."""


def ray_module():
    """The ``ray`` package, or None when it is missing (or hidden by THREESTUDIO_LIKE_NO_RAY=1)."""
    if os.environ.get(NO_RAY_ENV, "") not in ("", "0"):
        return None
    try:
        import ray
    except ImportError:
        return None
    return ray


def make_executor(kind: str, address: Optional[str], cpus_per_run: float, gpus_per_run: float):
    """``kind``: auto (Ray when installed), ray, or sequential."""
    ray = ray_module()
    if kind == "sequential" or (kind == "auto" and ray is None):
        if address:
            raise ExecutorError(f"--address {address} needs Ray, which is not installed here: pip install 'threestudio_like[dist]' "
                                "(or drop --address to run the jobs one after another)")
        return SequentialExecutor()
    if ray is None:
        raise ExecutorError("--executor ray: Ray is not installed here: pip install 'threestudio_like[dist]'")
    return RayExecutor(ray, address, cpus_per_run, gpus_per_run)


class SequentialExecutor:
    """One job at a time, in this process's child."""

    name = "sequential"
    slots = 1

    def __init__(self) -> None:
        self.queue: list[tuple[JobSpec, str]] = []

    def submit(self, job: JobSpec, log_dir: str) -> None:
        self.queue.append((job, log_dir))

    def wait(self, timeout: float) -> list[tuple[str, dict]]:
        if not self.queue:
            return []
        job, log_dir = self.queue.pop(0)
        return [(job.hash, run_attempt(job, log_dir))]

    def describe(self) -> str:
        return "sequential (Ray not in use): one job at a time"

    def close(self) -> None:
        self.queue.clear()


def start_ray(ray, address: Optional[str]) -> bool:
    """Join the cluster at ``address`` or start a light local one; False when Ray was already up."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet = dict(log_to_driver=False, logging_level=logging.WARNING)
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, **quiet)
    except Exception as error:  # connection errors come in many types; one line says enough
        where = f"at --address {address}" if address else "locally"
        lines = str(error).strip().splitlines() or [type(error).__name__]
        raise ExecutorError(f"cannot start Ray {where}: {lines[0]}") from None
    return True


def _ray_attempt(job: JobSpec, log_dir: str) -> dict:
    import ray

    return run_attempt(job, log_dir, use_gpu=bool(ray.get_gpu_ids()))


class RayExecutor:
    """Each job a Ray task holding one GPU (or a fraction) where the cluster has GPUs, CPUs
    otherwise; Ray relaunches a task whose worker is lost, and the relaunch resumes the run."""

    name = "ray"

    def __init__(self, ray, address: Optional[str], cpus_per_run: float, gpus_per_run: float) -> None:
        self.ray = ray
        self.started = start_ray(ray, address)
        resources = ray.cluster_resources()
        self.gpus = float(resources.get("GPU", 0.0))
        self.cpus = float(resources.get("CPU", 1.0))
        use_gpus = self.gpus > 0 and gpus_per_run > 0
        self.per_run = {"num_cpus": cpus_per_run, "num_gpus": gpus_per_run if use_gpus else 0}
        by_cpu = int(self.cpus // cpus_per_run) if cpus_per_run > 0 else 1 << 20
        self.slots = max(1, min(by_cpu, int(self.gpus // gpus_per_run)) if use_gpus else by_cpu)
        # workers import this package from the same checkout (a shared file system on a cluster)
        path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self.remote = ray.remote(_ray_attempt).options(
            **self.per_run, max_retries=RAY_TASK_RETRIES, runtime_env={"env_vars": {"PYTHONPATH": path}})
        self.inflight: dict = {}

    def submit(self, job: JobSpec, log_dir: str) -> None:
        self.inflight[self.remote.remote(job, log_dir)] = job.hash

    def wait(self, timeout: float) -> list[tuple[str, dict]]:
        if not self.inflight:
            return []
        ready, _ = self.ray.wait(list(self.inflight), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = self.ray.wait(list(self.inflight), num_returns=len(self.inflight), timeout=0)
        return [(self.inflight.pop(ref), self._result(ref)) for ref in ready]

    def _result(self, ref) -> dict:
        try:
            return self.ray.get(ref)
        except Exception as error:  # the task raised, or its worker was lost more often than retried
            lines = str(error).strip().splitlines() or [type(error).__name__]
            return {"kind": "crash", "rc": None, "error": f"{type(error).__name__}: {lines[-1][:300]}", "wall_s": None, "metrics": {}}

    def describe(self) -> str:
        where = "GPU" if self.per_run["num_gpus"] else "CPU"
        per = self.per_run["num_gpus"] or self.per_run["num_cpus"]
        return f"Ray: {self.cpus:g} CPUs, {self.gpus:g} GPUs; {per:g} {where} per run, up to {self.slots} at once"

    def close(self) -> None:
        for ref in list(self.inflight):
            self.ray.cancel(ref)  # the task stops its run (SIGTERM: a checkpoint first)
        self.inflight.clear()
        if self.started:
            self.ray.shutdown()
