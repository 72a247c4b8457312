"""`--push-to-hub REPO`: an export folder uploaded to a Hugging Face model repo (created when it
does not exist). Every failure (offline, no token, no permission, network) is one line
(`ConfigError`) naming the repo and the cause; the export on disk stays complete."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.utils import validate_repo_id

from lavender_ray.config import ConfigError


def check_repo_id(repo_id: str) -> None:
    """Refuse a repo id the Hub would refuse, before anything is exported."""
    try:
        validate_repo_id(repo_id)
    except ValueError as err:
        raise ConfigError(f"--push-to-hub {repo_id!r}: not a Hub repo id ({err})") from None


def push_folder(folder: Path, repo_id: str) -> str:
    """Upload `folder` to the model repo `repo_id`; returns the repo's URL."""
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        api.upload_folder(
            repo_id=repo_id, folder_path=folder, repo_type="model",
            commit_message="lavender export",
        )  # fmt: skip
    except Exception as err:  # the Hub client raises OSError, httpx and HTTP errors alike
        cause = " ".join(str(err).split()) or type(err).__name__
        raise ConfigError(
            f"--push-to-hub {repo_id}: upload failed ({type(err).__name__}: {cause[:300]}); the "
            f"export is complete in {folder}: upload it later with `hf upload {repo_id} {folder}`"
        ) from None
    return f"https://huggingface.co/{repo_id}"
