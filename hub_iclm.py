"""Uploading an ICLM to the Hub with its model card: shared by ``IclmForCausalLM.push_to_hub`` and
``IclmTrainer.push_to_hub`` (a module of its own, so the model and the trainer do not import each other)."""

import os

from huggingface_hub import HfApi


def upload_to_hub(model, folder: str, repo_id: str, *, args=None, token=None, private=None,
                  commit_message="Upload ICLM", revision=None, blocking=True, eval_results=None, captured=None,
                  training_data=None, state=None) -> str:
    """Write the ICLM model card into a saved model ``folder`` and upload the folder with ``HfApi``.

    Returns the commit URL; with ``blocking=False`` the upload runs in the background and this returns its
    ``Future`` (as ``Trainer.push_to_hub`` does): ``.result().commit_url`` is the URL. Offline (or without
    access) it raises a ConnectionError that says where everything was saved.
    """
    from model_cards import render_model_card

    card = render_model_card(model, args, repo_id=repo_id, eval_results=eval_results or [], captured=captured or {},
                             training_data=training_data, state=state)
    card.save(os.path.join(folder, "README.md"))
    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message,
                                   revision=revision, run_as_future=not blocking)
        if not blocking:
            return commit
    except Exception as error:  # offline, unknown repo, no token: keep what was written and say where
        raise ConnectionError(
            f"Could not push to the Hub repository {repo_id!r} ({type(error).__name__}: {error}). Everything is "
            f"saved locally in {folder}; upload it later with `hf upload {repo_id} {folder}`."
        ) from error
    return str(getattr(commit, "commit_url", commit))


__all__ = ["upload_to_hub"]
