"""Safe ICLM checkpoints: crash-safe folder writes, safetensors only, and the identity of the base.

* ``atomic_directory``: a save writes into a hidden sibling folder and then replaces the target (an atomic
  exchange with Linux ``renameat2(RENAME_EXCHANGE)`` where the folder holds only what is saved), so a save
  killed midway leaves the previous folder intact and nothing half-written under the target's name.
* ``refuse_pickles``: loading never unpickles; a folder that holds only ``.bin``/``.pt``/``.pkl`` weights is
  refused with a clear error instead of being read with ``torch.load``.
* ``base_fingerprint``: what the trained parts were trained on (architecture, sizes, a hash of sampled
  embedding rows, and a hash of a fixed sample of every base tensor, all at bf16 precision so the same weights
  loaded in another dtype match), checked on load: a base whose decoder or head changed (a LoRA merged into it)
  is caught even when its embeddings did not.
"""

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import shutil

import torch

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_RENAME_EXCHANGE = 2


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


@contextlib.contextmanager
def atomic_directory(target):
    """Yield a staging folder to write into, then put its content in ``target``.

    The slow part (serialising weights) happens in the staging folder, so a save killed midway leaves ``target``
    as it was and only a hidden ``.<name>.saving-<pid>`` folder behind. A new or re-saved folder is swapped in
    atomically; a folder that also holds other things (a Trainer's ``output_dir`` with its checkpoints) keeps
    them, and only the saved entries are replaced, one rename each, ``config.json`` last. On an exception the
    staging folder is removed and ``target`` is untouched.
    """
    target = os.path.abspath(os.fspath(target))
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(target) and not os.path.isdir(target):
        raise NotADirectoryError(f"Cannot save into {target}: it is a file, not a folder. Choose another path.")
    staging = os.path.join(parent, f".{name}.saving-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not os.path.exists(target):
        os.rename(staging, target)
        return
    saved = set(os.listdir(staging))
    if set(os.listdir(target)) <= saved and _exchange(staging, target):  # target now new, staging the old
        shutil.rmtree(staging, ignore_errors=True)
        return
    for entry in sorted(saved, key=lambda n: n == "config.json"):
        destination = os.path.join(target, entry)
        if os.path.isdir(destination) and not os.path.islink(destination):
            shutil.rmtree(destination)
        os.replace(os.path.join(staging, entry), destination)
    os.rmdir(staging)


def refuse_pickles(folder: str) -> None:
    """A local folder with pickled weights and no safetensors is an error: they would run code when loaded."""
    if not os.path.isdir(folder):
        return
    names = os.listdir(folder)
    if any(n.endswith(".safetensors") for n in names):
        return
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ValueError(
            f"{folder} holds pickled weights ({', '.join(pickles)}) and no .safetensors file. ICLM never unpickles "
            "(a pickle runs arbitrary code when loaded): convert them to safetensors yourself, in an environment you "
            "can afford to lose (torch's weights_only loader, then safetensors.torch.save_file), and save the model "
            "again with save_pretrained."
        )


@torch.no_grad()
def base_fingerprint(base) -> dict:
    """The base's identity: what must match for trained parts to mean the same on another load of it."""
    config = base.config.get_text_config()
    embeddings = base.get_input_embeddings().weight
    fingerprint = {"model_type": config.model_type, "architecture": type(base).__name__,
                   "vocab_size": int(embeddings.shape[0]), "hidden_size": int(config.hidden_size),
                   "num_hidden_layers": int(getattr(config, "num_hidden_layers", 0) or 0)}
    if embeddings.device.type != "meta":
        rows = torch.linspace(0, embeddings.shape[0] - 1, steps=min(64, embeddings.shape[0])).long()
        sample = embeddings[rows.to(embeddings.device)].detach().to(torch.bfloat16).float().cpu().contiguous()
        fingerprint["embedding_sha256"] = hashlib.sha256(sample.numpy().tobytes()).hexdigest()[:16]
        fingerprint["weights_sha256"] = _weights_hash(base)
    return fingerprint


SAMPLED_PER_TENSOR = 64


def _weights_hash(base) -> str:
    """A hash over every tensor of the base's state dict: its name, shape and ``SAMPLED_PER_TENSOR`` elements at
    fixed, evenly spaced positions (bf16-rounded). Cheap at any size: a few hundred small gathers. Tensors that cannot
    be read element-wise here (meta, some quantised layouts) contribute their name and shape only."""
    digest = hashlib.sha256()
    for name, tensor in sorted(base.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        if tensor.device.type == "meta" or tensor.numel() == 0:
            continue
        try:
            flat = tensor.detach().reshape(-1)
            steps = min(SAMPLED_PER_TENSOR, flat.numel())
            # integer arithmetic: a float32 linspace rounds the last index of a large tensor past its end
            positions = torch.arange(steps, dtype=torch.int64) * (flat.numel() - 1) // max(steps - 1, 1)
            values = flat[positions.to(flat.device)].float().to(torch.bfloat16).float().cpu().contiguous()
        except (RuntimeError, NotImplementedError, TypeError):
            continue
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()[:16]


def fingerprint_differences(saved: dict, loaded: dict) -> list[str]:
    """Human-readable differences between two fingerprints (keys missing on either side are not compared)."""
    return [f"{key}: trained on {saved[key]!r}, loaded {loaded[key]!r}" for key in saved
            if key in loaded and saved[key] != loaded[key]]
