"""A lost process of a multi-process run: the survivors' one line, exit status 5, the saved runtime report."""

import sys
import textwrap

import pytest

from medjax.train import supervisor

# What jaxlib 0.10.2 printed in the survivors, trimmed (captured from 2-process runs killed by hand).
PEER_REPORT = """\
E1204 04:14:57.773976    3487 coordination_service.cc:1549] [11388619903918438436] Use error polling to propagate \
the following error to all tasks: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
1
The tasks have crashed. Check the task logs for an earlier error.
E1204 04:14:57.774410    3498 coordination_service_agent.cc:289] Polled an error from coordination service (this \
can be an error from this or another task).
F1204 04:14:57.774492    3498 client.h:80] Terminating process because the JAX distributed service detected fatal \
errors. This most likely indicates that another task died; see the other task logs for more details.
*** Check failure stack trace: ***
    @     0x7fae23440634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
"""
COORDINATOR_REPORT = """\
E1204 04:15:36.910526    3926 coordination_service_agent.cc:289] Polled an error from coordination service (this \
can be an error from this or another task).
F1204 04:15:36.910586    3926 client.h:80] Terminating process because the JAX distributed service detected fatal \
errors. absl::Status: UNAVAILABLE: Failed to send RPC to coordination service. Either the leader task was \
preempted/died/restarted unexpectedly or this task is experiencing network issues.
:UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:"Socket closed"}
*** Check failure stack trace: ***
    @     0x7fae1f5040ee  xla::CoordinationServiceAgent::SetError()
"""


@pytest.mark.parametrize("report, me, lost", [
    (PEER_REPORT, 0, "process 1 of 2 stopped responding"),
    (COORDINATOR_REPORT, 1, "process 0 of 2 (the coordinator) stopped responding"),
    ("F1204 ... client.h:80] Terminating process because the JAX distributed service detected fatal errors.", 2,
     "another process of 2 stopped responding"),
    ("tasks are unhealthy (stopped sending heartbeats):\n2\n3\nThe tasks", 0, "processes 2, 3 of 2 stopped "
     "responding"),
])
def test_which_process_was_lost(report, me, lost):
    assert supervisor.lost_process(report, me, 2) == lost


def test_message_names_the_last_intact_checkpoint(tmp_path):
    (tmp_path / "checkpoints" / "8").mkdir(parents=True)
    (tmp_path / "checkpoints" / "10.orbax-checkpoint-tmp-1").mkdir()
    line = supervisor.lost_process_message("process 1 of 2 stopped responding", 0, str(tmp_path), "medjax train X",
                                           "/w/logs/process_0_fatal.log")
    assert line == (f"medjax: error: process 1 of 2 stopped responding; process 0 stops too (the runtime's report: "
                    f"/w/logs/process_0_fatal.log). The last checkpoint in {tmp_path} is step 8; resume by running "
                    f"on every process: medjax train X")
    empty = supervisor.lost_process_message("x", 1, str(tmp_path / "none"), "c", None)
    assert "is none (no checkpoint was written); resume" in empty


def _fake_worker(tmp_path, body: str) -> list[str]:
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(body))
    return [sys.executable, str(script)]


def test_a_worker_killed_by_the_runtime_becomes_one_line(tmp_path, capfd):
    """The runtime's report is held back and saved; everything printed before it passes through."""
    worker = _fake_worker(tmp_path, f"""
        import os, sys
        sys.stderr.write("train: 50%|#####     | 5/10\\r"); sys.stderr.flush()
        sys.stderr.write({PEER_REPORT!r}); sys.stderr.flush()
        os.abort()
    """)
    code = supervisor.supervise(worker, 0, 2, str(tmp_path / "run"), "medjax train --workdir run")
    err = capfd.readouterr().err
    assert code == supervisor.LOST_PROCESS_EXIT == 5
    log = tmp_path / "run" / "logs" / "process_0_fatal.log"
    assert err == ("train: 50%|#####     | 5/10\r" + supervisor.lost_process_message(
        "process 1 of 2 stopped responding", 0, str(tmp_path / "run"), "medjax train --workdir run", str(log)) + "\n")
    assert log.read_text() == PEER_REPORT


def test_other_exits_and_output_pass_through(tmp_path, capfd):
    """A runtime warning the run lives through is printed after all; the worker's own exit status is kept."""
    worker = _fake_worker(tmp_path, """
        import sys
        print("to stdout")
        sys.stderr.write("W1204 04:11:48.046358 2400 preemption_sync_manager.cc:147] a passing warning\\n")
        sys.stderr.write("medjax: error: config.x is bad\\n")
        sys.exit(2)
    """)
    assert supervisor.supervise(worker, 1, 2, str(tmp_path), "c") == 2
    out, err = capfd.readouterr()
    assert out == "to stdout\n"
    assert err == ("W1204 04:11:48.046358 2400 preemption_sync_manager.cc:147] a passing warning\n"
                   "medjax: error: config.x is bad\n")
    assert not (tmp_path / "logs").exists()


def test_a_worker_killed_by_a_signal_is_named(tmp_path, capfd):
    worker = _fake_worker(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert supervisor.supervise(worker, 1, 2, str(tmp_path), "c") == 128 + 9
    assert capfd.readouterr().err == "medjax: error: process 1 was killed by SIGKILL\n"


def test_lost_timeout_from_the_environment(monkeypatch):
    from medjax.errors import MedjaxError
    from medjax.train import distributed

    monkeypatch.delenv(distributed.LOST_TIMEOUT_VAR, raising=False)
    assert distributed.lost_timeout_s() == 60
    monkeypatch.setenv(distributed.LOST_TIMEOUT_VAR, "7.4")
    assert distributed.lost_timeout_s() == 7
    monkeypatch.setenv(distributed.LOST_TIMEOUT_VAR, "soon")
    with pytest.raises(MedjaxError, match="MEDJAX_LOST_PROCESS_TIMEOUT_S='soon'"):
        distributed.lost_timeout_s()


def test_single_process_is_not_supervised(monkeypatch):
    from medjax.train import distributed

    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "MEDJAX_DISTRIBUTED"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.requested() is None
    assert distributed.requested("localhost:1", 1, 0) is None
    assert distributed.requested("localhost:1", 2, 1) == (1, 2)
    monkeypatch.setenv("MEDJAX_DISTRIBUTED", "auto")
    assert distributed.requested() == (None, None)



def test_a_failed_collective_waits_for_the_runtimes_verdict(tmp_path, capfd):
    """gloo fails before the runtime reports: the worker's mark is held back with the report that follows."""
    worker = _fake_worker(tmp_path, f"""
        import os, sys
        from medjax.train import supervisor

        class JaxRuntimeError(Exception):
            pass

        error = JaxRuntimeError("UNKNOWN: Gloo all-reduce failed: Read error: Connection reset by peer")
        assert supervisor.collective_failed(error) and not supervisor.collective_failed(ValueError("Gloo"))
        if sys.argv[-1] == "verdict":
            sys.stderr.write("medjax-worker: a collective failed: x\\n" + {PEER_REPORT!r}); sys.stderr.flush()
            os.abort()
        sys.exit(supervisor.await_verdict(error, 0.1))  # no verdict came
    """)
    assert supervisor.supervise([*worker, "verdict"], 0, 2, str(tmp_path), "c") == 5
    assert capfd.readouterr().err.startswith("medjax: error: process 1 of 2 stopped responding; process 0 stops")
    assert supervisor.supervise(worker, 0, 2, str(tmp_path), "c") == 5
    assert capfd.readouterr().err.startswith("medjax: error: another process of 2 stopped responding; process 0")
    assert (tmp_path / "logs" / "process_0_fatal.log").read_text() == (
        "medjax-worker: a collective failed: UNKNOWN: Gloo all-reduce failed: Read error: Connection reset by peer\n")
