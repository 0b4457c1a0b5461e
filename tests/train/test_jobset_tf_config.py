"""Multi-worker training as Kubeflow Trainer v2 runs it: no TF_CONFIG, only what JobSet gives each pod.

cifarflow's ClusterTrainingRuntime hands every pod its JobSet labels (downward API), ``JOB_COMPLETION_INDEX``
and the node count; ``cifarflow.train.cluster_spec`` derives TF_CONFIG from them. The unit tests pin the derived
spec to the one a TFJob injects; the slow test runs two real workers from JobSet env alone and checks they train
to identical weights. On a laptop the pods' DNS names (``<jobset>-node-0-<i>.<jobset>``) do not resolve and
both workers share one address, so the workers' only test-specific piece is the name -> 127.0.0.1:port map
(``cluster_spec.member_address``), the job of the cluster's DNS.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cifarflow.errors import InputError
from cifarflow.train.cluster_spec import hosts, tf_config_from_jobset
from cifarflow.train.distribute import role_from_env

from .helpers import SMALL, Proc, env, fingerprint, free_port

JOBSET = "cifarflow-train-run-42-92234f8b"


def jobset_env(index: int, workers: int = 2) -> dict[str, str]:
    """The env a pod of the cifarflow-tensorflow runtime has (downward API + Job controller + TrainJob)."""
    return {
        "JOBSET_NAME": JOBSET,
        "JOBSET_REPLICATED_JOB": "node",
        "JOBSET_JOB_INDEX": "0",
        "JOB_COMPLETION_INDEX": str(index),
        "CIFARFLOW_TF_NUM_WORKERS": str(workers),
        "CIFARFLOW_TF_PORT": "2222",
    }


def test_the_jobset_tf_config_is_the_tfjob_shape_with_jobsets_host_names() -> None:
    derived = [json.loads(tf_config_from_jobset(jobset_env(i)) or "") for i in range(2)]
    members = [f"{JOBSET}-node-0-0.{JOBSET}:2222", f"{JOBSET}-node-0-1.{JOBSET}:2222"]
    assert derived == [
        {"cluster": {"worker": members}, "task": {"type": "worker", "index": 0}},
        {"cluster": {"worker": members}, "task": {"type": "worker", "index": 1}},
    ]


def test_worker_0_is_the_chief_as_under_a_tfjob() -> None:
    chief, other = (role_from_env(jobset_env(i)) for i in range(2))
    assert (chief.describe(), other.describe()) == ("worker:0 of 2 workers (chief)", "worker:1 of 2 workers")
    assert chief.is_chief and not other.is_chief and other.rank == 1


def test_a_tfjobs_own_tf_config_wins_and_no_jobset_means_local() -> None:
    given = json.dumps({"cluster": {"worker": ["a:1", "b:1", "c:1"]}, "task": {"type": "worker", "index": 2}})
    assert role_from_env({**jobset_env(0), "TF_CONFIG": given}).task_index == 2
    assert role_from_env({}).task_type == "local"
    assert tf_config_from_jobset({"JOB_COMPLETION_INDEX": "0"}) is None  # an Indexed Job, but not our runtime


def test_a_subdomain_set_on_the_jobset_is_used() -> None:
    assert hosts("j", "node", 0, 2, "svc") == ["j-node-0-0.svc", "j-node-0-1.svc"]
    spec = json.loads(tf_config_from_jobset({**jobset_env(0), "JOBSET_SUBDOMAIN": "svc"}) or "")
    assert spec["cluster"]["worker"][1] == f"{JOBSET}-node-0-1.svc:2222"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"JOB_COMPLETION_INDEX": "2"}, "JOB_COMPLETION_INDEX 2 is outside the job's 2 nodes"),
        ({"CIFARFLOW_TF_NUM_WORKERS": "two"}, "CIFARFLOW_TF_NUM_WORKERS='two' is not an integer"),
    ],
)
def test_an_inconsistent_jobset_env_is_one_clear_error(override: dict[str, str], message: str) -> None:
    with pytest.raises(InputError) as err:
        role_from_env({**jobset_env(0), **override})
    assert err.value.problem.startswith(message)


# The workers run `cifarflow train` in a fresh interpreter whose only change is the DNS stand-in.
LAUNCHER = """
import json, os, runpy, sys
from cifarflow.train import cluster_spec
ports = json.loads(os.environ["TEST_HOST_PORTS"])
cluster_spec.member_address = lambda host, port: f"127.0.0.1:{ports[host]}"
sys.argv = ["cifarflow", *sys.argv[1:]]
runpy.run_module("cifarflow", run_name="__main__")
"""


def start_pod(args: list[str], index: int, ports: dict[str, int], logs: Path) -> Proc:
    stdout, stderr = logs / f"node-{index}.out", logs / f"node-{index}.err"
    script = logs / "launch.py"
    script.write_text(LAUNCHER)
    extra = jobset_env(index) | {"TEST_HOST_PORTS": json.dumps(ports)}
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        popen = subprocess.Popen(
            [sys.executable, str(script), *args], stdout=out, stderr=err, env=env(**extra)
        )
    return Proc(popen, stdout, stderr)


@pytest.mark.slow
def test_two_jobset_pods_train_one_model_with_identical_weights(tiny_dataset: str, tmp_path: Path) -> None:
    out = tmp_path / "model"
    args = ["train", "--data", tiny_dataset, "--out", str(out), "--epochs", "2", "--batch-size", "32"]
    args += [*SMALL, "--no-evaluate"]
    ports = {host: free_port() for host in hosts(JOBSET, "node", 0, 2, JOBSET)}
    pods = [start_pod(args, i, ports, tmp_path) for i in range(2)]
    for proc in pods:
        assert proc.wait(timeout=300) == 0, proc.err()[-3000:]
    chief, other = pods
    assert "worker:0 of 2 workers (chief), 2 replicas in sync" in chief.err()
    assert "worker:1 of 2 workers, 2 replicas in sync" in other.err()
    assert fingerprint(chief) == fingerprint(other)
    assert f"saved_model: {out}/saved_model" in chief.out() and other.out() == ""
    assert json.loads((out / "training.json").read_text())["job"]["replicas"] == 2
