"""Each process of a multi-process run works in a child of a small supervisor, so that losing a process ends the
others with one line instead of a C++ stack dump.

When a process of a `jax.distributed` run dies, the coordination service tells the others (a peer's loss after
the heartbeat timeout, `MEDJAX_LOST_PROCESS_TIMEOUT_S`; the coordinator's at once) and jaxlib aborts them from a
C++ thread. jax 0.10 gives Python no hook there (the client's `missed_heartbeat_callback` cannot hand its status
to Python), so the supervisor watches from outside: it passes the worker's stdout and stderr through, holds back
what the distributed runtime prints once it reports trouble, and when the worker then dies it saves the held
report to `WORKDIR/logs/process_<i>_fatal.log` and prints one line naming the lost process, the last checkpoint and
the command that resumes. Exit status 5. Any other exit status of the worker is passed on unchanged. A collective
that fails first (gloo's 'Connection reset by peer') is not a traceback either: the worker marks it and waits for
the runtime's verdict, which names the lost process (`await_verdict`).
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time

LOST_PROCESS_EXIT = 5
SUPERVISED_VAR = "MEDJAX_SUPERVISED"  # set in the worker: it runs the command itself
HOLD_TIMEOUT_S = 30.0  # runtime warnings not followed by a death within this long are passed on after all

# A glog line from the distributed runtime (coordination service and agent, preemption sync, client).
_RUNTIME_LINE = re.compile(rb"^[WEF]\d{4} [\d:.]+\s+\d+ (coordination_service\w*|preemption_sync_manager|client)"
                           rb"\.(cc|h):\d+\]")
_FATAL = b"the JAX distributed service detected fatal errors"
_PEER_GONE = b"medjax-worker: a collective failed:"  # the worker's mark, see await_verdict
_UNHEALTHY = re.compile(r"tasks are unhealthy \(stopped sending heartbeats\):\s*\n([\d\s,]+)")
_COORDINATOR_GONE = ("Failed to send RPC to coordination service", "leader task", "Connection reset by peer",
                     "failed to connect to all addresses", "Socket closed")


def lost_process(report: str, process_id: int | None, num_processes: int | None) -> str:
    """Which process the runtime's `report` says was lost, in words."""
    of = f" of {num_processes}" if num_processes else ""
    unhealthy = _UNHEALTHY.search(report)
    if unhealthy:
        ids = sorted({int(t) for t in re.findall(r"\d+", unhealthy.group(1))} - {process_id})
        if ids:
            return f"process{'es' if len(ids) > 1 else ''} {', '.join(map(str, ids))}{of} stopped responding"
    if process_id != 0 and any(s in report for s in _COORDINATOR_GONE):
        return f"process 0{of} (the coordinator) stopped responding"
    return f"another process{of} stopped responding"


def lost_process_message(what: str, process_id: int | None, workdir: str | None, resume_command: str,
                         log_path: str | None) -> str:
    from medjax.train.checkpoint import last_intact_step

    me = f"process {process_id}" if process_id is not None else "this process"
    saved = f" (the runtime's report: {log_path})" if log_path else ""
    last = last_intact_step(workdir) if workdir else None
    where = f"step {last}" if last is not None else "none (no checkpoint was written)"
    return (f"medjax: error: {what}; {me} stops too{saved}. The last checkpoint in {workdir} is {where}; resume "
            f"by running on every process: {resume_command}")


def is_worker() -> bool:
    return bool(os.environ.get(SUPERVISED_VAR))


def collective_failed(error: BaseException) -> bool:
    """Whether `error` is a cross-process collective or RPC failing because a peer went away."""
    text = str(error)
    return type(error).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and any(
        s in text for s in ("Gloo", "gloo", "Connection reset", "Connection closed", "UNAVAILABLE"))


def await_verdict(error: BaseException, timeout_s: float) -> int:
    """In a worker whose collective failed: say so (the supervisor holds it back) and wait for the distributed
    runtime to end this process with its report on the lost peer; after `timeout_s` give up waiting."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    sys.stderr.buffer.write(_PEER_GONE + b" " + first.encode(errors="replace") + b"\n")
    sys.stderr.flush()
    time.sleep(timeout_s)
    return LOST_PROCESS_EXIT


def _die_with_parent() -> None:
    """In the worker (Linux): a supervisor killed with SIGKILL takes its worker with it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _save(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.tmp", "wb") as f:
        f.write(data)
    os.replace(f"{path}.tmp", path)


def supervise(command: list[str], process_id: int | None, num_processes: int | None, workdir: str | None,
              resume_command: str) -> int:
    """Run `command` (this process's `medjax ...` again) as the worker; its exit status, or 5 when it died of a
    lost process."""
    worker = subprocess.Popen(command, env=dict(os.environ, **{SUPERVISED_VAR: "1"}),
                              stderr=subprocess.PIPE, preexec_fn=_die_with_parent if os.name == "posix" else None)
    forward = lambda signum, frame: worker.send_signal(signum)  # noqa: E731
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        held, rest = _pass_through(worker)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    code = worker.wait()
    report = b"".join(held) + rest
    if code != 0 and (_FATAL in report or _PEER_GONE in report):
        log_path = os.path.join(workdir, "logs", f"process_{process_id if process_id is not None else 'x'}_fatal.log"
                                ) if workdir else None
        if log_path:
            _save(log_path, report)
        what = lost_process(report.decode(errors="replace"), process_id, num_processes)
        sys.stderr.write(lost_process_message(what, process_id, workdir, resume_command, log_path) + "\n")
        sys.stderr.flush()
        return LOST_PROCESS_EXIT
    _write(report)
    if code < 0:  # killed by a signal
        name = signal.Signals(-code).name
        sys.stderr.write(f"medjax: error: process {process_id} was killed by {name}\n")
        return 128 - code
    return code


def _write(data: bytes) -> None:
    sys.stderr.buffer.write(data)
    sys.stderr.flush()


def _pass_through(worker: subprocess.Popen) -> tuple[list[bytes], bytes]:
    """Copy the worker's stderr to ours until it closes, piece by piece (progress bars end in '\\r'), holding
    back from the distributed runtime's first trouble report on. Returns (held pieces, unfinished last piece)."""
    fd = worker.stderr.fileno()
    pending, held, hold_since = b"", [], None
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        chunk = os.read(fd, 65536) if ready else None
        if chunk == b"":
            return held, pending
        if chunk:
            pending += chunk
            cut = max(pending.rfind(b"\n"), pending.rfind(b"\r")) + 1
            pieces, pending = re.split(rb"(?<=[\n\r])", pending[:cut]), pending[cut:]
            for piece in filter(None, pieces):
                if hold_since is None and (_RUNTIME_LINE.match(piece) or piece.startswith(_PEER_GONE)):
                    hold_since = time.monotonic()
                if hold_since is None:
                    _write(piece)
                else:
                    held.append(piece)
        if (hold_since is not None and time.monotonic() - hold_since > HOLD_TIMEOUT_S
                and not any(_FATAL in p or p.startswith(_PEER_GONE) for p in held)):
            _write(b"".join(held))  # a warning the run lived through
            held, hold_since = [], None
