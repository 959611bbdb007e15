"""Push a model folder (e.g. a fused model) to the Hugging Face Hub.

The token comes from ``token=`` or, as usual with huggingface_hub, ``HF_TOKEN`` / ``hf auth login``; it is never
logged, printed or written into files.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

logger = logging.getLogger(__name__)


class HubPushError(RuntimeError):
    """Uploading to the Hub failed; the message says the local folder is intact and what to rerun."""


def rerun_command(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
) -> str:
    """The ``codiemb push`` command that retries an upload (uploading again is safe: unchanged files are skipped)."""
    parts = ["codiemb", "push", str(folder), "--repo-id", repo_id]
    if private:
        parts.append("--private")
    if revision:
        parts += ["--revision", revision]
    if create_pr:
        parts.append("--create-pr")
    return shlex.join(parts)


def push_model_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
) -> str:
    """Upload ``folder`` to the model repository ``repo_id`` and return its URL.

    Creates the repository if needed (``exist_ok``), and the branch ``revision`` when given, then uploads the folder
    in one ``upload_folder`` call (hidden files and folders are skipped).

    Args:
        folder: a local model folder (e.g. the output of :func:`hf_codiemb.fusion.delta_fuse`).
        repo_id: ``owner/name``.
        private: create the repository as private (ignored when it already exists).
        revision: a branch to push to (created from the default branch if missing).
        create_pr: open a pull request instead of committing to the branch.
        commit_message: the commit title.
        token: a Hub token; by default the one from ``HF_TOKEN`` or ``hf auth login``.

    Returns:
        The URL of the pull request when ``create_pr``, otherwise of the repository (at ``revision`` if given).

    Raises:
        FileNotFoundError: ``folder`` is not a non-empty folder.
        HubPushError: a Hub or network error; the local folder is left untouched and the message has the command
            to rerun.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        raise FileNotFoundError(f"Nothing to push: {folder} is not a non-empty folder")
    if create_pr and revision:
        raise ValueError("create_pr opens a pull request against the default branch; do not also pass revision")
    api = HfApi(token=token)
    commit_message = commit_message or f"Upload {folder.name} with hf_codiemb"
    logger.info("Pushing %s to %s%s", folder, repo_id, f" (branch {revision})" if revision else "")
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message,
            ignore_patterns=[".*", "**/.*"],
        )
    except Exception as exc:  # HTTP, network (httpx), disk or server-response errors alike: the folder is intact
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        command = rerun_command(folder, repo_id, private=private, revision=revision, create_pr=create_pr)
        raise HubPushError(
            f"Uploading {folder} to the Hub repository {repo_id!r} failed: {reason}\n"
            f"The local folder {folder} is intact (nothing was deleted or changed). "
            f"Once the problem is fixed, rerun:\n    {command}"
        ) from exc
    if create_pr and commit.pr_url:
        url = commit.pr_url
    else:
        url = str(repo_url).rstrip("/") + (f"/tree/{revision}" if revision else "")
    logger.info("Pushed %s to %s", folder, url)
    return url
