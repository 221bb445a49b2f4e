"""A rolling update from the previous release, with real operator processes of both releases under the API
emulator: the previous release (before the leader granted for the whole fleet) grants its own sidecars
1/--quota-replicas of every limit and has no peer port; a new leader leaves that share to it, so the fleet's
spend stays within the budget while both run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from llmroute.sim import SimProvider
from tests.tools import REPO

from .replicas import Fleet, Sidecar
from .test_policy_fleet import Outcome, budget, drive, publish
from .test_replicas import _is, leader, token

if TYPE_CHECKING:
    from conftest import Bench

PREVIOUS_RELEASE = "adc6034a57ec1883ba10321456154d042cd12d35"
"""The last commit before the leader granted for the whole fleet (f54d993): each replica granted its own share."""


@pytest.fixture(scope="session")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's package, built from its commit into a directory of its own (for PYTHONPATH)."""
    git = shutil.which("git")
    exists = [str(git), "-C", str(REPO), "cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}"]
    if git is None or subprocess.run(exists, capture_output=True).returncode != 0:
        pytest.skip(f"commit {PREVIOUS_RELEASE} is not in this clone (a shallow clone?)")
    root = tmp_path_factory.mktemp("previous-release")
    source, package = root / "source", root / "package"
    source.mkdir()
    archive = subprocess.run([git, "-C", str(REPO), "archive", PREVIOUS_RELEASE], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    install = ["install", "-q", "--no-deps", "--no-build-isolation", "--target", str(package), str(source)]
    subprocess.run([sys.executable, "-m", "pip", *install], capture_output=True, check=True)
    return package


async def enforcing(replicas: Fleet, sidecar: Sidecar) -> bool:
    """The sidecar has the policy (its limit gauge is exported)."""
    async with replicas.session.get(f"http://127.0.0.1:{sidecar.admin}/metrics") as response:
        return "llmroute_policy_limit{" in await response.text()


async def test_a_new_leader_leaves_a_previous_release_replica_its_static_share(
    cluster: Bench, replicas: Fleet, sim: SimProvider, previous_release: Path
) -> None:
    limit = 1.0
    await publish(cluster, sim, budget(limit))
    new, old = replicas.add_replicas(2)
    await replicas.start(new, "--previous-quota-replicas", "2")  # as the chart says with operator.replicas: 2
    await replicas.until(lambda: _is(leader(cluster, replicas), new), "the new replica leading")
    await replicas.start_previous(old, previous_release, quota_replicas=2)
    # One busy sidecar on each replica: the previous release grants its own half of the limit, the new leader
    # the rest. Were the new leader to hand out the whole limit, the fleet could spend 1.5 times it.
    sidecars = []
    for replica in (new, old):
        pod = f"app-{replica.name}"
        sidecars.append(await replicas.sidecar(pod, token(cluster, pod), dial=[replica]))
    for sidecar in sidecars:
        await replicas.until(lambda s=sidecar: enforcing(replicas, s), f"{sidecar.pod} enforcing the policy")
    outcome = Outcome()
    await drive(sidecars, 14.0, outcome, loops=(4, 4))
    spent = sum(outcome.costs)
    assert outcome.other == []
    assert spent <= limit * 1.05, f"the fleet spent {spent:.4f} of a {limit} USD budget"
    assert spent >= limit * 0.85, f"only {spent:.4f} of {limit} USD was usable"
    assert outcome.refusals[-1][1]["error"]["code"] == "budget_exceeded"
    assert replicas.replicas[0].process is not None
    log = replicas.replicas[0].process.log.read_text()
    assert f"replica 127.0.0.1:{old.peer} has no peer port (a replica of the previous release)" in log
