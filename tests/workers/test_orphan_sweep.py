"""The start-up sweep for jobs orphaned by a worker or host restart (deployments.jobs.reaper.jobs_orphaned_by_restart):
a running job whose owning process on this host is gone is marked lost with the reason, and its lease ends now. A pid
that is alive again but belongs to a process started after the claim (a rebooted host's or a restarted container's
fresh processes reuse the same low pids) counts as gone; a live owner's job is left alone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from deployments.jobs.reaper import jobs_orphaned_by_restart, jobs_reap
from deployments.models import Job, JobLogLine
from tests.factories.jobs import JobFactory

pytestmark = pytest.mark.django_db

LATER = timezone.now() + timedelta(hours=1)


def running(owner: str, claimed=None) -> Job:
    return JobFactory(
        status=Job.Status.RUNNING,
        lease_owner=owner,
        lease_expires_at=LATER,
        started_at=claimed or timezone.now(),
        attempts=1,
    )


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_job_whose_process_is_gone_is_marked_lost_with_the_reason_and_retried():
    owner = f"{socket.gethostname()}:{dead_pid()}:abcd1234"
    job = running(owner)
    assert jobs_orphaned_by_restart() == [job.pk]
    job.refresh_from_db()
    assert job.lease_expires_at < LATER  # ended now, not after the lease
    reason = JobLogLine.objects.get(job=job, seq=job.log_seq).text
    assert reason == f"lost: the process {owner} that ran this job is gone (its worker or the host restarted)"
    assert jobs_reap()["retried"] == [job.pk]
    job.refresh_from_db()
    assert job.status == "pending" and job.log_seq == 2


def test_a_reused_pid_does_not_keep_an_orphan_alive():
    # This process is alive, but it started after a claim made a day ago: not the process that claimed the job.
    job = running(f"{socket.gethostname()}:{os.getpid()}:abcd1234", claimed=timezone.now() - timedelta(days=1))
    assert jobs_orphaned_by_restart() == [job.pk]


def test_a_live_owner_and_another_hosts_jobs_are_left_alone():
    live = running(f"{socket.gethostname()}:{os.getpid()}:abcd1234")  # claimed now by this (older) process
    elsewhere = running(f"another-host:{dead_pid()}:abcd1234")
    assert jobs_orphaned_by_restart() == []
    for job in (live, elsewhere):
        job.refresh_from_db()
        assert job.lease_expires_at == LATER and job.log_seq == 0


def test_an_agent_recreated_with_a_new_hostname_finds_its_jobs_by_its_host_name(settings):
    """A recreated agent container has a fresh hostname but the same AGENT_HOST_NAME: its runners' leases are named
    after the latter, so the new container's start-up sweep still finds what the old one held."""
    from workers.runner import owner_name

    settings.AGENT_HOST_NAME = "gpu-node-7"
    assert owner_name().startswith("gpu-node-7:")
    job = running(f"gpu-node-7:{dead_pid()}:abcd1234")
    other_host = running(f"gpu-node-8:{dead_pid()}:abcd1234")
    assert jobs_orphaned_by_restart() == [job.pk]
    other_host.refresh_from_db()
    assert other_host.lease_expires_at == LATER


def test_a_zombie_owner_counts_as_gone():
    """A killed worker's child not yet reaped still has its pid (kill(0) answers), but it runs nothing."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = timezone.now() + timedelta(seconds=10)
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert timezone.now() < deadline, "the child did not exit"
    try:
        job = running(f"{socket.gethostname()}:{child.pid}:abcd1234")
        assert jobs_orphaned_by_restart() == [job.pk]
    finally:
        child.wait()
