"""Where the folds of ``audio-ssl cv`` run when they do not run one after another in the calling process.

Both launchers run the same per-fold function, :func:`audio_ssl.evaluation.runner.run_fold` (``run_cv`` of one
fold, output in ``<run>/logs/fold{k}.log``), and return ``{fold: why it failed}``; the runner then summarises
the run folder as the sequential loop does (:func:`audio_ssl.evaluation.runner.run_cv`, ``launcher=``).

- :class:`ProcessLauncher` (``audio-ssl cv --parallel N``): at most N folds at a time on this machine, each in a
  fresh Python process (``python -m audio_ssl.evaluation.launchers JOB``; a fresh interpreter, so CUDA starts
  cleanly in each, as multiprocessing's spawn would give) with ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` and torch
  threads set to the job's ``threads``, and ``AUDIO_SSL_CV_PARALLEL=N`` (a Lightning stage refuses DDP
  there: N folds each spreading over every device would fight over them). The processes share the GPU.
- :class:`SubmititLauncher` (``audio-ssl cv --launcher submitit``): one job per fold through submitit's
  ``AutoExecutor`` (https://github.com/facebookincubator/submitit): SLURM where ``sbatch`` exists, else local
  processes; ``cluster="local"`` forces the local executor. A fold with several GPUs or nodes is one job with
  one task per GPU (``tasks_per_node = gpus_per_node``), where Lightning's own DDP finds the ranks from SLURM
  (set ``trainer.devices``/``trainer.num_nodes`` to match with ``--set``). submitit is an optional dependency
  (``pip install audio-ssl[cluster]``), imported only here, when used.

What the folds share: a stage trained once for every fold (transductive pretraining) is trained by the first
fold before the others start (:func:`audio_ssl.evaluation.runner.launch_folds`). The waveform cache
(:mod:`audio_ssl.data.cache`) and the run's embedding cache (:mod:`audio_ssl.evaluation.embeddings`) are written
atomically with deterministic contents, so folds that miss the same entry at the same time each compute it and
one identical file wins; only the work is repeated (build a new dataset's waveform cache with one fold first to
avoid decoding it N times).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from audio_ssl.evaluation.lightning_stage import PARALLEL_ENV
from audio_ssl.evaluation.runner import FoldJob, log_tail, run_fold

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """``preexec_fn`` of a fold process (Linux): it receives SIGTERM when its launcher dies, even by SIGKILL (a
    device call's timeout), so no orphaned fold keeps writing into a run folder that the next invocation is
    running again (``prctl(PR_SET_PDEATHSIG)``). Elsewhere, or in a libc without ``prctl``, a no-op: the fold
    then outlives a killed launcher."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


TAIL_LINES = 20
"""Lines of a failed fold's log quoted in the error."""


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(parallel: int) -> int:
    """Threads per fold when ``parallel`` folds share this machine: ``available_cpus() // parallel``, at least 1."""
    return max(1, available_cpus() // parallel)


def failure_report(why: str, log_file: str | os.PathLike) -> str:
    """``why``, where the log is, and its last :data:`TAIL_LINES` lines, indented."""
    tail = log_tail(log_file, TAIL_LINES).replace("\n", "\n    ")
    return f"{why}; log {log_file}, last lines:\n    {tail}\n"


class ProcessLauncher:
    """``parallel`` folds at a time on this machine, each in its own Python process; see the module docstring.

    ``threads``: torch/OpenMP threads per fold (default :func:`default_threads`). ``poll_s``: how often the
    processes are checked. Raises ``ValueError`` for ``parallel < 1`` or ``threads < 1``.
    """

    def __init__(self, parallel: int, threads: int | None = None, poll_s: float = 0.2):
        if parallel < 1:
            raise ValueError(f"--parallel {parallel}: the number of folds at once must be at least 1")
        if threads is not None and threads < 1:
            raise ValueError(f"--threads-per-fold {threads}: must be at least 1")
        self.parallel = parallel
        self.threads = threads or default_threads(parallel)
        self.poll_s = poll_s

    def environment(self) -> dict[str, str]:
        """The environment of a fold's process: this one's, the thread counts, and :data:`PARALLEL_ENV`."""
        env = dict(os.environ)
        env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads), PYTHONUNBUFFERED="1")
        if self.parallel > 1:
            env[PARALLEL_ENV] = str(self.parallel)
        else:
            env.pop(PARALLEL_ENV, None)
        return env

    def launch(self, jobs: Sequence[FoldJob]) -> dict[int, str]:
        """Run every job, at most ``parallel`` at once, in fold order; ``{fold: failure report}``."""
        waiting = [FoldJob.from_json({**job.to_json(), "threads": job.threads or self.threads}) for job in jobs]
        running: dict[int, tuple[subprocess.Popen, FoldJob, float]] = {}
        failures: dict[int, str] = {}
        env = self.environment()
        try:
            while waiting or running:
                while waiting and len(running) < self.parallel:
                    job = waiting.pop(0)
                    Path(job.log_file).parent.mkdir(parents=True, exist_ok=True)
                    with open(job.log_file, "ab") as sink:
                        process = subprocess.Popen(
                            [sys.executable, "-m", "audio_ssl.evaluation.launchers", json.dumps(job.to_json())],
                            stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            preexec_fn=die_with_parent)
                    running[job.fold] = (process, job, time.perf_counter())
                    log.info("fold %d: started (process %d, %d threads), log %s", job.fold, process.pid,
                             job.threads, job.log_file)
                time.sleep(self.poll_s)
                for fold, (process, job, start) in list(running.items()):
                    code = process.poll()
                    if code is None:
                        continue
                    del running[fold]
                    seconds = time.perf_counter() - start
                    if code == 0:
                        log.info("fold %d: finished in %.1f s", fold, seconds)
                    else:
                        failures[fold] = failure_report(f"exit status {code} after {seconds:.1f} s", job.log_file)
                        log.error("fold %d: failed with exit status %d, log %s", fold, code, job.log_file)
        finally:  # interrupted (Ctrl-C): no fold process outlives the runner
            for process, _, _ in running.values():
                process.terminate()
            for process, _, _ in running.values():
                process.wait()
        return failures


SUBMITIT_CLUSTERS = ("auto", "slurm", "local")


class SubmititLauncher:
    """One submitit job per fold; see the module docstring.

    ``folder``: submitit's folder (its job scripts, pickles and logs, ``{job id}_*``; default ``<run>/submitit/``). ``cluster``: ``"auto"``
    (SLURM where available, else local processes), ``"slurm"`` or ``"local"``. ``gpus_per_fold``,
    ``nodes_per_fold``: the fold's Lightning DDP world (one task per GPU). ``cpus_per_task`` also sets the fold's
    torch threads. ``timeout_min``, ``mem_gb``, ``partition``, ``account``, ``qos``: the usual SLURM requests
    (``None``: not asked for). ``slurm_extra``: any other ``slurm_*`` parameter of submitit's AutoExecutor, by
    name without the prefix (``{"constraint": "a100"}``).

    Raises ``ImportError`` with the install command when submitit is not installed, ``ValueError`` for an
    unknown cluster, a count below its minimum, an unknown ``slurm_extra`` name, or ``cluster="slurm"`` on a
    machine without SLURM.
    """

    def __init__(self, folder: str | os.PathLike | None = None, cluster: str = "auto", *, gpus_per_fold: int = 0,
                 nodes_per_fold: int = 1, cpus_per_task: int | None = None, timeout_min: int | None = None,
                 mem_gb: float | None = None, partition: str | None = None, account: str | None = None,
                 qos: str | None = None, slurm_extra: dict | None = None):
        try:
            import submitit  # noqa: F401  (imported here to name the missing package before anything runs)
        except ImportError as err:
            raise ImportError("--launcher submitit needs submitit: pip install 'audio-ssl[cluster]' (or pip install "
                              "--constraint requirements/lock.txt submitit)") from err
        if cluster not in SUBMITIT_CLUSTERS:
            raise ValueError(f"--launcher-cluster {cluster!r}: expected one of {', '.join(SUBMITIT_CLUSTERS)}")
        for option, value, low in (("--gpus-per-fold", gpus_per_fold, 0), ("--nodes-per-fold", nodes_per_fold, 1),
                                   ("--cpus-per-task", cpus_per_task, 1), ("--timeout-min", timeout_min, 1)):
            if value is not None and value < low:
                raise ValueError(f"{option} {value}: must be at least {low}")
        self.folder = Path(folder) if folder is not None else None
        self.cluster = None if cluster == "auto" else cluster
        self.cpus_per_task = cpus_per_task
        parameters: dict = {"nodes": nodes_per_fold, "tasks_per_node": max(1, gpus_per_fold)}
        if gpus_per_fold:
            parameters["gpus_per_node"] = gpus_per_fold
        for key, value in (("cpus_per_task", cpus_per_task), ("timeout_min", timeout_min), ("mem_gb", mem_gb),
                           ("slurm_partition", partition), ("slurm_account", account), ("slurm_qos", qos)):
            if value is not None:
                parameters[key] = value
        parameters.update({f"slurm_{k}": v for k, v in (slurm_extra or {}).items()})
        self.parameters = parameters
        try:  # checked in a folder of its own: the local executor makes its folder at once
            with tempfile.TemporaryDirectory() as scratch:
                self.executor(Path(scratch))
        except (RuntimeError, NameError) as err:  # no srun on this machine; an unknown slurm_* parameter
            raise ValueError(f"--launcher submitit (cluster {cluster}): {err}") from err

    def executor(self, run_dir: Path):
        """submitit's AutoExecutor with the launcher's parameters, writing into ``folder`` (default
        ``run_dir/submitit``)."""
        import submitit

        folder = self.folder if self.folder is not None else run_dir / "submitit"
        executor = submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        executor.update_parameters(**self.parameters)
        return executor

    def launch(self, jobs: Sequence[FoldJob]) -> dict[int, str]:
        """Submit every job, wait for all of them; ``{fold: failure report}`` (submitit's error and the log)."""
        jobs = [FoldJob.from_json({**job.to_json(), "threads": job.threads or self.cpus_per_task}) for job in jobs]
        if not jobs:
            return {}
        executor = self.executor(Path(jobs[0].out) / jobs[0].name)
        folder = Path(executor.folder)
        submitted = []
        for job in jobs:
            executor.update_parameters(name=f"{job.name}-fold{job.fold}")
            handle = executor.submit(run_fold, job)
            log.info("fold %d: submitted as job %s (%s), log %s", job.fold, handle.job_id, executor.cluster,
                     job.log_file)
            submitted.append((job, handle))
        failures: dict[int, str] = {}
        for job, handle in submitted:
            try:
                handle.results()  # every task's result; raises when a task failed
                log.info("fold %d: job %s finished", job.fold, handle.job_id)
            except Exception as err:  # submitit's FailedJobError / UncompletedJobError: reported per fold
                first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                failures[job.fold] = failure_report(f"job {handle.job_id}: {type(err).__name__}: {first_line} "
                                                    f"(submitit logs: {folder}/{handle.job_id}_*)",
                                                    job.log_file)
                log.error("fold %d: job %s failed", job.fold, handle.job_id)
        return failures


def main(argv: list[str] | None = None) -> None:
    """A fold's process of :class:`ProcessLauncher`: ``python -m audio_ssl.evaluation.launchers JOB_JSON``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m audio_ssl.evaluation.launchers JOB_JSON (started by audio-ssl cv "
                         "--parallel N)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run_fold(FoldJob.from_json(json.loads(argv[0])))
    except Exception:  # run_fold wrote the traceback into the fold's log
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
