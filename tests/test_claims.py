"""Fenced claims and claim owners, on a real SQLite file and real PostgreSQL.

A driver that lost its claim (another driver took the trial over) writes nothing more for it; a
claim whose driver ran on this host and whose process is gone is taken over at once, and one
whose process lives is never taken over, whatever --stale-after says.
"""

from __future__ import annotations

import re
import socket
import subprocess
from datetime import timedelta

import pytest
from test_db import planned, spec_row, sql

from db.records import ClaimOwner
from db.repository import Repository, utc_now
from orchestrator.errors import UserError
from orchestrator.run.driver import process_start
from orchestrator.run.recorder import record_report
from orchestrator.run.runner import RunOptions
from orchestrator.run.submit import claim_runnable, describe_holders
from workers.trainable import Epoch, Final, Started, batch_payload

HERE = socket.gethostname()


def _report(*events: Started | Epoch | Final) -> dict[str, object]:
    return batch_payload([event.to_payload() for event in events])


def _epochs(repo: Repository, spec_hash: str) -> list[tuple[int, float]]:
    return [(int(e), float(a)) for e, a in sql(repo.engine, "SELECT e.epoch, e.test_acc FROM epoch_metrics e "
                                                            "JOIN trials t ON t.id = e.trial_id "
                                                            "WHERE t.spec_hash = :h ORDER BY e.epoch", h=spec_hash)]


def test_a_driver_that_lost_its_claim_records_nothing_more(repo: Repository) -> None:
    planned(repo, "e", [spec_row(i) for i in range(2)])
    h0, h1 = spec_row(0)["spec_hash"], spec_row(1)["spec_hash"]
    a = ClaimOwner("driver-a", "node-a", 4242, 1)
    b = ClaimOwner("driver-b", "node-b", 4343, 1)
    assert sorted(repo.claim(a, [h0, h1], stale_after_s=120)) == sorted([h0, h1])
    assert record_report(repo, _report(Started(h0, 1, "w"), Epoch(h0, 1, {"test_acc": 0.1})), a.driver) == set()
    assert repo.trial_by_hash(h0).status == "running"

    # driver-a stalls on another host; driver-b's stale limit passes and it takes both trials over.
    sql(repo.engine, "UPDATE trials SET heartbeat_at = :t", t=utc_now() - timedelta(minutes=5))
    assert sorted(repo.claim(b, [h0, h1], stale_after_s=120)) == sorted([h0, h1])
    owner = repo.trial_by_hash(h0)
    assert (owner.claimed_by, owner.claim_host, owner.claim_pid) == ("driver-b", "node-b", 4343)

    # driver-a's late reports are refused and named; nothing of them lands.
    late = _report(Epoch(h0, 2, {"test_acc": 0.2}), Final(h0, 1.0, {"test_acc": 0.9}))
    assert record_report(repo, late, a.driver) == {h0}
    assert repo.fail(h1, "interrupted", a.driver) is False
    assert repo.trial_by_hash(h0).status == "pending" and repo.trial_by_hash(h1).status == "pending"
    assert _epochs(repo, h0) == [(1, 0.1)]
    assert repo.held_by(a.driver, [h0, h1]) == set() and repo.held_by(b.driver, [h0, h1]) == {h0, h1}

    # driver-b records its own run; a replay of driver-a's result still changes nothing.
    own = _report(Started(h0, 2, "w"), Epoch(h0, 1, {"test_acc": 0.3}), Final(h0, 1.0, {"test_acc": 0.5}))
    assert record_report(repo, own, b.driver) == set()
    assert record_report(repo, late, a.driver) == {h0}
    done = repo.trial_by_hash(h0)
    assert (done.status, done.test_acc) == ("completed", 0.5)
    assert _epochs(repo, h0) == [(1, 0.3)]
    # Unfenced writes (no driver: maintenance, tests) still work as before.
    assert repo.fail(h1, "boom") is True


@pytest.fixture()
def processes():
    """A live process and a dead one (started, then killed and reaped) on this host, with start times."""
    live = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["sleep", "60"])
    dead_start = process_start(dead.pid)
    dead.kill()
    dead.wait()
    yield (live.pid, process_start(live.pid)), (dead.pid, dead_start)
    live.kill()
    live.wait()


def test_local_claims_die_with_their_process_and_live_ones_are_never_taken(repo: Repository, processes) -> None:
    (live_pid, live_start), (dead_pid, dead_start) = processes
    planned(repo, "e", [spec_row(i) for i in range(4)])
    hashes = [spec_row(i)["spec_hash"] for i in range(4)]
    live = ClaimOwner("driver-live", HERE, live_pid, live_start)
    dead = ClaimOwner("driver-dead", HERE, dead_pid, dead_start)
    reused = ClaimOwner("driver-reused", HERE, live_pid, (live_start or 0) + 1)  # same pid, another process
    remote = ClaimOwner("driver-remote", "elsewhere.example", 77, 1)
    for owner, spec_hash in zip((live, dead, reused, remote), hashes, strict=True):
        assert repo.claim(owner, [spec_hash], stale_after_s=120) == [spec_hash]
    repo.mark_started(hashes[0])
    repo.mark_started(hashes[1])

    new = ClaimOwner("driver-new", HERE, 1, None)
    # Fresh heartbeats everywhere: the dead and the reused-pid claims are taken at once, nothing else.
    assert sorted(claim_runnable(repo, new, hashes, stale_after_s=3600)) == sorted(hashes[1:3])
    # Even --stale-after 0 takes nothing from a live local driver; the remote one expires by heartbeat.
    assert sorted(claim_runnable(repo, new, hashes, stale_after_s=0)) == sorted(hashes[1:])  # its own, + remote
    assert repo.trial_by_hash(hashes[0]).claimed_by == "driver-live"

    note = describe_holders(repo, hashes, "driver-new", stale_after_s=120)
    assert note == f"1 held by a live driver (pid {live_pid} on this host): let it finish, or stop it and resume"


def test_a_remote_holder_is_described_with_the_time_to_takeover(repo: Repository) -> None:
    planned(repo, "e", [spec_row(i) for i in range(3)])
    hashes = [spec_row(i)["spec_hash"] for i in range(3)]
    remote = ClaimOwner("driver-remote", "gpu-7", 901, 5)
    repo.claim(remote, hashes, stale_after_s=120)
    sql(repo.engine, "UPDATE trials SET heartbeat_at = :t", t=utc_now() - timedelta(seconds=30))
    assert claim_runnable(repo, ClaimOwner("driver-new", HERE, 1, None), hashes, stale_after_s=120) == []
    note = describe_holders(repo, hashes, "driver-new", stale_after_s=120)
    found = re.fullmatch(r"3 held by a driver \(pid 901 on gpu-7\) whose last heartbeat was (\d+)s ago: "
                         r"taken over after (\d+)s more without one, or now with --stale-after 0 if it is gone", note)
    assert found is not None, note
    age, wait = int(found[1]), int(found[2])
    assert 30 <= age <= 32 and 119 <= age + wait <= 121, note


@pytest.mark.parametrize(("field", "value", "option"), [
    ("stale_after_s", float("nan"), "--stale-after"), ("stale_after_s", float("inf"), "--stale-after"),
    ("stale_after_s", -1.0, "--stale-after"), ("max_failures", -1, "--max-failures"),
    ("max_concurrent", -1, "--max-concurrent"), ("max_concurrent", 0, "--max-concurrent"),
    ("gpus_per_trial", -1.0, "--gpus-per-trial"), ("gpus_per_trial", float("nan"), "--gpus-per-trial"),
    ("cpus_per_trial", 0.0, "--cpus-per-trial"), ("pack_size", 0, "--pack-size"),
])
def test_run_options_refuse_values_that_would_hang(field: str, value: float, option: str) -> None:
    with pytest.raises(UserError) as refused:
        RunOptions(**{field: value})
    assert str(refused.value).startswith(f"{option} {value}: give a finite number")
    RunOptions(stale_after_s=0)  # 0 is meaningful: every running trial of a gone driver, at once
