"""Reading the operators' status, and telling why a job's pods are stuck or died.

SparkApplication (Spark Operator v2.5.2) ``status.applicationState.state``::

    "" (new) -> SUBMITTED -> RUNNING -> SUCCEEDING -> COMPLETED
                  |            `---> FAILING ---> FAILED  (OnFailure: PENDING_RERUN -> SUBMITTED)
                  `-> SUBMISSION_FAILED -> SUBMITTED (retry) | FAILED (retries used up)

``COMPLETED`` and ``FAILED`` are terminal. ``SUBMISSION_FAILED`` is terminal once
``status.submissionAttempts`` exceeds ``spec.restartPolicy.onSubmissionFailureRetries`` (the operator then
moves it to ``FAILED``).

TFJob (Training Operator v1.9.4) ``status.conditions[]`` of type ``Created``, ``Running``, ``Restarting``,
``Suspended``, ``Succeeded``, ``Failed``: terminal when ``Succeeded`` or ``Failed`` has status ``"True"``.

TrainJob (Kubeflow Trainer v2.3.0) ``status.conditions[]`` of type ``Created``, ``Suspended``, ``Complete``,
``Failed`` and ``status.jobsStatus[]`` (the JobSet's child Jobs: active, ready, succeeded, failed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from kubernetes import client

from cifarflow.errors import unmark
from cifarflow.k8s.client import SPARK_APPLICATION, TRAINJOB, JobKind

Phase = Literal["pending", "running", "succeeded", "failed"]

SPARK_RUNNING = {"RUNNING", "SUCCEEDING", "FAILING", "PENDING_RERUN", "INVALIDATING", "UNKNOWN"}
# Waiting reasons a pod never recovers from by itself: fail fast instead of waiting for the timeout.
FATAL_WAITING = {"ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError"}


@dataclass(frozen=True)
class Status:
    phase: Phase
    state: str  # the operator's own word, for logs and messages
    message: str = ""
    submission_failed: bool = False


def spark_status(obj: dict[str, Any]) -> Status:
    status = obj.get("status") or {}
    app_state = status.get("applicationState") or {}
    state = str(app_state.get("state") or "")
    message = str(app_state.get("errorMessage") or "")
    if state == "COMPLETED":
        return Status("succeeded", state, message)
    if state == "FAILED":
        return Status("failed", state, message, submission_failed=_never_ran(status))
    if state == "SUBMISSION_FAILED":
        policy = (obj.get("spec") or {}).get("restartPolicy") or {}
        retries = int(policy.get("onSubmissionFailureRetries") or 0) if policy.get("type") != "Never" else 0
        if int(status.get("submissionAttempts") or 0) > retries:
            return Status("failed", state, message, submission_failed=True)
        return Status("pending", state, message)
    if state in SPARK_RUNNING:
        return Status("running", state, message)
    return Status("pending", state or "NEW", message)


def _never_ran(status: dict[str, Any]) -> bool:
    """FAILED straight from submission: spark-submit itself failed, no driver ever ran."""
    return not (status.get("driverInfo") or {}).get("podName") and not status.get("sparkApplicationId")


def tfjob_status(obj: dict[str, Any]) -> Status:
    conditions = (obj.get("status") or {}).get("conditions") or []
    true = [c for c in conditions if str(c.get("status")) == "True"]
    by_type = {c.get("type"): c for c in true}
    for kind, phase in (("Failed", "failed"), ("Succeeded", "succeeded")):
        if kind in by_type:
            return Status(phase, kind, str(by_type[kind].get("message") or ""))  # type: ignore[arg-type]
    if "Running" in by_type or "Restarting" in by_type:
        latest = "Restarting" if "Restarting" in by_type else "Running"
        return Status("running", latest, str(by_type[latest].get("message") or ""))
    latest = str(true[-1].get("type")) if true else "NEW"
    return Status("pending", latest)


def trainjob_status(obj: dict[str, Any]) -> Status:
    """Trainer v2: ``Complete`` / ``Failed`` are terminal; ``Suspended`` (or ``Created``) waits; a child Job with
    active pods (``status.jobsStatus[].active``) means running. There is no ``Running`` condition."""
    status = obj.get("status") or {}
    true = [c for c in status.get("conditions") or [] if str(c.get("status")) == "True"]
    by_type = {c.get("type"): c for c in true}
    for kind, phase in (("Failed", "failed"), ("Complete", "succeeded")):
        if kind in by_type:
            return Status(phase, kind, str(by_type[kind].get("message") or ""))  # type: ignore[arg-type]
    if "Suspended" in by_type:
        return Status("pending", "Suspended", str(by_type["Suspended"].get("message") or ""))
    if any(int(j.get("active") or 0) > 0 for j in status.get("jobsStatus") or []):
        return Status("running", "Running")
    latest = str(true[-1].get("type")) if true else "NEW"
    return Status("pending", latest)


def status_of(kind: JobKind, obj: dict[str, Any]) -> Status:
    if kind == SPARK_APPLICATION:
        return spark_status(obj)
    return trainjob_status(obj) if kind == TRAINJOB else tfjob_status(obj)


# -- pods ----------------------------------------------------------------------------------------------------
@dataclass
class PodProblem:
    pod: str
    container: str
    reason: str  # ImagePullBackOff, OOMKilled, Unschedulable, CreateContainerConfigError, Error...
    message: str
    fatal: bool
    exit_code: int | None = None


@dataclass
class PodReport:
    problems: list[PodProblem] = field(default_factory=list)

    def fatal(self) -> PodProblem | None:
        return next((p for p in self.problems if p.fatal), None)

    def first(self, reason: str) -> PodProblem | None:
        return next((p for p in self.problems if p.reason == reason), None)


def inspect_pods(pods: list[client.V1Pod]) -> PodReport:
    """What is wrong with a job's pods right now (and what went wrong before a restart)."""
    report = PodReport()
    for pod in pods:
        name = pod.metadata.name
        status = pod.status or client.V1PodStatus()
        for cond in status.conditions or []:
            if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
                report.problems.append(PodProblem(name, "", "Unschedulable", cond.message or "", fatal=False))
        for cs in (status.init_container_statuses or []) + (status.container_statuses or []):
            state = cs.state or client.V1ContainerState()
            if state.waiting and state.waiting.reason in FATAL_WAITING | {"ErrImagePull"}:
                report.problems.append(
                    PodProblem(
                        name,
                        cs.name,
                        state.waiting.reason,
                        f"{cs.image}: {state.waiting.message or state.waiting.reason}",
                        fatal=state.waiting.reason in FATAL_WAITING,
                    )
                )
            for term in (state.terminated, (cs.last_state or client.V1ContainerState()).terminated):
                if term and (term.reason == "OOMKilled" or (term.exit_code or 0) != 0):
                    report.problems.append(
                        PodProblem(
                            name,
                            cs.name,
                            term.reason or "Error",
                            term.message or "",
                            fatal=False,
                            exit_code=term.exit_code,
                        )
                    )
    return report


# -- logs ----------------------------------------------------------------------------------------------------
_ERROR_LINE = re.compile(r"^(?:\S+ \S+ \S+ \S+: )?error: (?P<problem>.+?)(?: \(fix: (?P<fix>.+)\))?$")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b.*")


def cause_from_log(text: str) -> tuple[str, str | None] | None:
    """The most telling line of a failed container's log: cifarflow's own ``error: ... (fix: ...)`` line, a
    marked error carried through Spark, or the last Python exception line."""
    marked = unmark(text)
    if marked is not None:
        return marked.problem, marked.fix
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        m = _ERROR_LINE.match(line)
        if m:
            return m.group("problem"), m.group("fix")
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line[:300], None
    return None


def outputs_from_log(text: str, keys: tuple[str, ...]) -> dict[str, str]:
    """``key: value`` result lines a cifarflow command printed on stdout (``dataset: <id>``...)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(": ")
        if sep and key in keys and value and " " not in value:
            found[key] = value
    return found
