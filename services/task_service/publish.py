"""Pushing a SCORED task's winner to the Hugging Face repo the customer named.

Only when the operator configured GRADIENTS_TASK_HF_TOKEN and the task has a
result_model_name. The outcome (the repository, or why not) is stored with the task's
result; a push that fails never fails the task: DownloadResult always works.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from pathlib import Path

from gradients.archive import safe_extract
from gradients.runtime import Delivery, ServiceContext
from gradients.sources import hf_offline
from gradients.v1 import common_pb2 as pb
from gradients.v1 import events_pb2 as ev
from services.task_service.lifecycle import TaskLifecycle
from services.task_service.results import ResultStore, winner_of

log = logging.getLogger(__name__)


def push_folder(folder: Path, repo_id: str, token: str) -> str:
    """Blocking: create the repo (private) when missing and upload the folder; its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=True, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Gradients: winning fine-tune")
    return str(getattr(info, "repo_url", "") or f"https://huggingface.co/{repo_id}")


def _safe_error(exc: Exception, token: str) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text.replace(token, "<token>") if token else text


class WinnerPublisher:
    def __init__(self, ctx: ServiceContext, lifecycle: TaskLifecycle, results: ResultStore):
        self.ctx = ctx
        self.lifecycle = lifecycle
        self.results = results
        self.token: str = ctx.settings.hf_token

    async def handle(self, event: ev.TaskStateChanged, delivery: Delivery) -> None:
        task = event.task
        if event.to_state != pb.SCORED or not task.result_model_name:
            return
        record = await self.results.get(event.task_id)
        if record.pushed_repository or record.push_error:
            return  # already done (a redelivery)
        repository, error = "", ""
        if not self.token:
            error = "this validator has no Hugging Face token configured; download the result instead"
        elif hf_offline():
            error = "this validator is offline (HF_HUB_OFFLINE=1); download the result instead"
        else:
            try:
                repository = await self._push(task, record)
            except Exception as exc:  # the Hub refused or is away: recorded, the download still works
                error = f"the push to {task.result_model_name} failed: {_safe_error(exc, self.token)}"
        if error:
            log.warning("task %s: winner not pushed: %s", task.task_id, error, extra={"task_id": task.task_id})
        await self.results.put_publish(task.task_id, repository, error)

    async def _push(self, task: pb.Task, record) -> str:
        winner = winner_of(list(record.scored.scores)) if record.scored else ""
        submissions = {s.miner_hotkey: s for s in await self.lifecycle.submissions(task.task_id)}
        if not winner or winner not in submissions:
            raise RuntimeError("the task has no winning submission")
        work = Path(tempfile.mkdtemp(prefix="publish-", dir=self.ctx.mesh.data_dir))
        try:
            archive = work / "winner.tar"
            await self.ctx.artifacts.get_file(submissions[winner].artifact, archive)
            await asyncio.to_thread(safe_extract, archive, work / "model")
            return await asyncio.to_thread(push_folder, work / "model", task.result_model_name, self.token)
        finally:
            shutil.rmtree(work, ignore_errors=True)
