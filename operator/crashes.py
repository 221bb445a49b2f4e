"""A crash of one of the operator's background loops made visible: counted in a metric and posted as a Warning
Event on the operator's own Pod (`kubectl describe pod`), besides the log line the supervisor writes."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from prometheus_client import Counter

from llmroute.supervise import Crash, log_failure

from .events import post_event_about
from .kubeapi import KubeAPI

log = logging.getLogger(__name__)

REASON = "BackgroundTaskCrashed"


@dataclass(frozen=True, slots=True)
class PodRef:
    """The operator's own Pod, from the downward API ($POD_NAME, $POD_NAMESPACE, $POD_UID)."""

    name: str
    namespace: str
    uid: str = ""


class CrashReporter:
    """The operator's `Supervisor.on_crash`: counts the crash by task and posts an Event on its Pod (when known).

    The Event names the task and the exception's type only: an exception's text could quote data the
    operator handles (the full traceback is in the operator's log)."""

    def __init__(self, api: KubeAPI, crashes: Counter, pod: PodRef | None) -> None:
        self._api = api
        self._crashes = crashes
        self._pod = pod
        self._posting: set[asyncio.Task[None]] = set()

    def __call__(self, crash: Crash) -> None:
        self._crashes.labels(crash.task).inc()
        if self._pod is None:
            return
        message = (
            f"background task {crash.task!r} crashed ({type(crash.error).__name__}, see the operator's log);"
            f" it restarts in {crash.restart_in:.0f} s"
        )
        involved = {"apiVersion": "v1", "kind": "Pod", "name": self._pod.name, "namespace": self._pod.namespace}
        if self._pod.uid:
            involved["uid"] = self._pod.uid
        task = asyncio.get_running_loop().create_task(
            post_event_about(self._api, involved, REASON, message), name=f"event {REASON} {crash.task}"
        )
        self._posting.add(task)
        task.add_done_callback(self._posting.discard)
        task.add_done_callback(lambda t: log_failure(t, log))

    async def aclose(self) -> None:
        """Wait for Events still being posted (each is bounded by the API client's timeout)."""
        await asyncio.gather(*self._posting, return_exceptions=True)
