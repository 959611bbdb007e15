"""Push a model folder (e.g. a trained or fused model) to the Hugging Face Hub: only what a model repository needs.

A training output folder also holds checkpoints, optimizer and RNG states, TensorBoard runs, archives, and sometimes
a stray token file. :func:`plan_push` picks the files a model repository needs: what
:class:`~sentence_transformers.SentenceTransformer` loads (``modules.json``, the configs, ``*.safetensors`` weights
(``pytorch_model.bin`` only where there are no safetensors), tokenizer files, the module folders named in
``modules.json`` such as ``1_Pooling/``, LoRA adapter files, ONNX/OpenVINO exports), the model card and licence, and the
result files hf_codiemb writes (``eval_results.json``, ``eval_before_after.md``, ``fusion_weights.json``, ...).
``include`` patterns add more. Every file to upload is then checked: a name or content that looks like a credential
(a token file, ``credentials.json``, a private key, a Hugging Face / AWS / GitHub token) stops the push with
:class:`PushRefusedError` unless ``force=True``; the secret itself is never printed.

The token comes from ``token=`` or, as usual with huggingface_hub, ``HF_TOKEN`` / ``hf auth login``; it is never
logged, printed or written into files.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from hf_codiemb.errors import CoDiEmbUserError, ModelLoadError, UsageError
from hf_codiemb.model_folder import (
    CONFIG_FILES,
    MODULES_FILE,
    PICKLED_WEIGHT_PATTERNS,
    SHARD_INDEX_FILES,
    TOKENIZER_FILES,
    check_model_folder,
)
from hf_codiemb.safe_read import UnsafeFileError, file_problem, open_regular_file, read_bounded, resolves_inside
from hf_codiemb.secret_scan import find_secret

logger = logging.getLogger(__name__)


@dataclass
class PushConfig:
    """Configuration of ``codiemb push``."""

    folder: str | None = field(default=None, metadata={"help": "The local model folder to upload."})
    repo_id: str | None = field(default=None, metadata={"help": "Target Hub repo (owner/name)."})
    private: bool = field(default=False, metadata={"help": "Create the repo as private."})
    revision: str | None = field(default=None, metadata={"help": "Branch to push to (created if missing)."})
    create_pr: bool = field(default=False, metadata={"help": "Open a pull request instead of committing."})
    commit_message: str | None = field(default=None, metadata={"help": "Commit title."})
    include: list[str] = field(
        default_factory=list,
        metadata={"help": "Also upload files matching these patterns (relative to the folder, fnmatch as in "
                          "huggingface_hub's allow_patterns; 'dir/' means everything below dir). Only the model "
                          "files, the card and hf_codiemb's result files are uploaded otherwise."},
    )
    force: bool = field(
        default=False, metadata={"help": "Upload files whose name or content looks like a credential anyway."}
    )
    dry_run: bool = field(default=False, metadata={"help": "List what would be uploaded, upload nothing."})


class HubPushError(RuntimeError):
    """Uploading to the Hub failed; the message says the local folder is intact and what to rerun.

    Not a user error: ``codiemb push`` logs it whole (with the command to rerun) and exits with status 1. What the
    user gave wrong (a folder that is not a model folder, a bad repo id, files that look like credentials) raises a
    :class:`~hf_codiemb.errors.CoDiEmbUserError` instead: one line, exit status 2.
    """


#: What to do about files that look like credentials (the end of :class:`PushRefusedError`'s message).
PUSH_REMEDY = (
    "Remove them from the folder (and revoke any real secret), or pass --force (force=True) if they are safe to "
    "publish."
)


@dataclass(frozen=True)
class CredentialFinding:
    """A file that looks like it holds a credential: its path (relative to the pushed folder) and why."""

    path: str
    reason: str


class PushRefusedError(CoDiEmbUserError, ValueError):
    """Files selected for upload look like credentials (raised before anything is sent to the Hub).

    Args:
        folder: the folder that was to be pushed.
        findings: the suspicious files and why each one was flagged.
        remedy: what the user can do, ending the message (default: :data:`PUSH_REMEDY`, the advice for ``codiemb
            push``, which has ``--force``; the Trainer's pushes have no such option and pass their own).
    """

    def __init__(
        self,
        folder: str | Path,
        findings: Sequence[CredentialFinding],
        remedy: str = PUSH_REMEDY,
    ) -> None:  # fmt: skip
        self.folder = Path(folder)
        self.findings = list(findings)
        lines = "\n".join(f"  {self.folder / finding.path}: {finding.reason}" for finding in self.findings)
        super().__init__(
            f"Refusing to push {self.folder}: {len(self.findings)} file(s) look like credentials or are not regular "
            f"files inside the folder:\n{lines}\n"
            f"{remedy} Nothing was uploaded."
        )


# ------------------------------------------------------------------------------------------- what a model repo needs
#: Files read by SentenceTransformer / transformers / peft in the model folder and in every module folder, besides the
#: weights (``*.safetensors``, and :data:`~hf_codiemb.model_folder.PICKLED_WEIGHT_PATTERNS` where there are none).
MODEL_FILES = CONFIG_FILES | TOKENIZER_FILES | frozenset(SHARD_INDEX_FILES)
#: Name patterns of more tokenizer files (sentencepiece / tiktoken models).
TOKENIZER_PATTERNS = ("*.model", "*.spm", "*.tiktoken")
#: The model card, licence and the result files hf_codiemb writes into model folders (train: eval_results.*,
#: eval_before*; fuse: fusion_*; prepare-models: prepared.json).
CARD_AND_RESULT_FILES = frozenset({
    "README.md", "LICENSE", "LICENSE.md", "LICENSE.txt", "NOTICE", "NOTICE.md",
    "eval_results.json", "eval_results.md", "eval_before.json", "eval_before_after.md",
    "fusion_weights.json", "fusion_weights.png", "fusion_config.json", "prepared.json",
})
#: Export folders sentence-transformers loads with ``backend="onnx"`` / ``"openvino"``, and their file patterns.
BACKEND_EXPORTS = {"onnx": ("*.onnx", "*.onnx_data", "*.onnx.data"), "openvino": ("*.xml", "*.bin")}
#: Never part of a model repo (training state, logs, archives), also not inside module folders; ``include`` overrides.
TRAINING_STATE_PATTERNS = (
    "optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt", "rng_state*.pth", "trainer_state.json",
    "training_args.bin", "*.tar", "*.tar.*", "*.tgz", "*.zip", "*.7z", "*.rar", "*.gz", "*.bz2", "*.xz", "*.zst",
)
TRAINING_STATE_DIRS = ("checkpoint-*", "runs", "__pycache__", "wandb", "mlruns")

# ------------------------------------------------------------------------------------------------ credential checks
#: File names (lower case) that look like credentials, with the reason reported.
_CREDENTIAL_NAMES: tuple[tuple[str, str], ...] = (
    ("*token*", "the name looks like a token file"),
    ("*credential*", "the name looks like a credentials file"),
    ("*secret*", "the name looks like a secrets file"),
    ("*password*", "the name looks like a password file"),
    ("*.pem", "a PEM key/certificate file"),
    ("*.key", "a private key file"),
    ("*.p12", "a PKCS#12 key store"),
    ("*.pfx", "a PKCS#12 key store"),
    ("*.jks", "a Java key store"),
    ("*.keystore", "a key store"),
    ("id_rsa*", "an SSH private key"),
    ("id_dsa*", "an SSH private key"),
    ("id_ecdsa*", "an SSH private key"),
    ("id_ed25519*", "an SSH private key"),
    ("*.netrc", "a netrc file (logins and passwords)"),
    ("_netrc", "a netrc file (logins and passwords)"),
    ("*.pypirc", "a PyPI credentials file"),
    ("*.git-credentials", "a git credentials file"),
    ("*.env", "an environment file (usually holds secrets)"),
    ("*service_account*.json", "a cloud service-account key"),
)
#: Tokenizer files whose names contain "token" but hold no credential.
_TOKENIZER_NAME_PARTS = ("tokeniz", "special_tokens_map", "added_tokens")
#: Content patterns: (compiled regex on bytes, description). Descriptions only; the match itself is never shown.
#: Each starts with a literal, which keeps the scan near 100 MB/s (leading look-behinds made it 15x slower).
_CREDENTIAL_CONTENT: tuple[tuple[re.Pattern[bytes], str], ...] = tuple(
    (re.compile(pattern), description) for pattern, description in (
        (rb"hf_[A-Za-z0-9]{30,}", "a Hugging Face token (hf_...)"),
        (rb"AKIA[0-9A-Z]{16}", "an AWS access key id"),
        (rb"ASIA[0-9A-Z]{16}", "an AWS access key id"),
        (rb"aws_secret_access_key\s*[=:]\s*[\"']?[A-Za-z0-9/+=]{40}", "an AWS secret access key"),
        (rb"AWS_SECRET_ACCESS_KEY\s*[=:]\s*[\"']?[A-Za-z0-9/+=]{40}", "an AWS secret access key"),
        (rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----", "a private key"),
        (rb"gh[pousr]_[A-Za-z0-9]{36,}", "a GitHub token"),
        (rb"github_pat_[A-Za-z0-9_]{40,}", "a GitHub token"),
        (rb"sk-(?:proj-)?[A-Za-z0-9_-]{32,}", "an API secret key (sk-...)"),
        (rb"xox[abprs]-[A-Za-z0-9-]{10,}", "a Slack token"),
        (rb"AIza[0-9A-Za-z_-]{35}", "a Google API key"),
        (rb"machine\s+\S+\s+(?:login\s+\S+\s+)?password\s+\S+", "a netrc password entry"),
        (rb"glpat-[A-Za-z0-9_-]{20,}", "a GitLab token (glpat-...)"),
        (rb"npm_[A-Za-z0-9]{36}", "an npm token (npm_...)"),
        (rb"sk_live_[0-9a-zA-Z]{24,}", "a Stripe live key"),
        (rb"rk_live_[0-9a-zA-Z]{24,}", "a Stripe live key"),
        (rb"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}", "a PyPI token"),
        (rb"eyJ[A-Za-z0-9_-]{8,}={0,2}\.eyJ[A-Za-z0-9_-]{8,}={0,2}\.", "a JSON Web Token"),
        (rb'"auth"\s*:\s*"[A-Za-z0-9+/]{8,}={0,2}"', 'a docker registry login ("auth": base64 user:password)'),
        (rb'"identitytoken"\s*:\s*"[^"\s]{8,}"', "a docker registry identity token"),
    )
)
_SCAN_CHUNK = 1 << 20
#: The largest ``modules.json`` read (a few hundred bytes in practice).
_MAX_MODULES_JSON = 1 << 20
_SCAN_OVERLAP = 4096  # longer than any pattern above, so a secret across two chunks is still found


def _matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


def _include_patterns(patterns: Iterable[str]) -> list[str]:
    """``include`` patterns as huggingface_hub's ``allow_patterns`` read them ('dir/' = everything below dir)."""
    return [p.replace("\\", "/") + ("*" if p.endswith(("/", "\\")) else "") for p in patterns]


def credential_name_reason(path: str) -> str | None:
    """Why the file name of ``path`` looks like a credential, or ``None``."""
    name = path.rsplit("/", 1)[-1].lower()
    for pattern, reason in _CREDENTIAL_NAMES:
        if fnmatch.fnmatchcase(name, pattern):
            if pattern == "*token*" and any(part in name for part in _TOKENIZER_NAME_PARTS):
                continue
            return f"{reason} ({name!r} matches {pattern!r})"
    return None


def credential_content_reason(file: str | Path, root: str | Path | None = None, path: str | None = None) -> str | None:
    """Why the bytes of ``file`` look like they hold a credential (the rule and the line number), or ``None``.

    Every file gets hf_codiemb's own byte patterns (Hugging Face, AWS, GitHub, GitLab, npm, Stripe, PyPI, JWT, docker
    logins, private keys, ...); text files (no NUL byte in their first chunk) also get detect-secrets' rules
    (:func:`hf_codiemb.secret_scan.find_secret`, chosen by the file kind of ``path``). Files are read in 1 MB
    chunks up to the size they had when opened (only regular files: see
    :func:`hf_codiemb.safe_read.open_regular_file`), except ``*.safetensors``: only their JSON header (tensor
    names, shapes and the free-form ``__metadata__``) is read, the rest being raw tensor data.

    Args:
        file: the file to scan.
        root: the folder it must stay inside (a symbolic link out of it is refused), if any.
        path: its path relative to the pushed folder (chooses detect-secrets' rules); default: its name.

    Raises:
        UnsafeFileError: ``file`` is not a regular file (inside ``root``).
    """
    path = path or Path(file).name
    handle, size = open_regular_file(file, root)
    with handle:
        limit = _safetensors_header_end(handle, size) if str(file).endswith(".safetensors") else size
        handle.seek(0)
        previous, offset_lines, remaining, text = b"", 1, limit, None
        while remaining > 0 and (chunk := handle.read(min(_SCAN_CHUNK, remaining))):
            remaining -= len(chunk)
            window = previous + chunk
            if text is None:
                text = b"\0" not in chunk
            found = _first_match(window, path if text else None)
            if found:
                description, offset = found
                line = offset_lines + window.count(b"\n", 0, offset)
                return f"its content looks like {description} (line {line})"
            previous = window[-_SCAN_OVERLAP:]
            offset_lines += window.count(b"\n", 0, len(window) - len(previous))
    return None


def _first_match(window: bytes, text_path: str | None) -> tuple[str, int] | None:
    """The first of our patterns in ``window``, else (for a text file) the first of detect-secrets' rules."""
    for pattern, description in _CREDENTIAL_CONTENT:
        match = pattern.search(window)
        if match:
            return description, match.start()
    if text_path is not None:
        secret = find_secret(window.decode("latin-1"), text_path)
        if secret is not None:
            return secret.rule, secret.offset
    return None


def _safetensors_header_end(handle: BinaryIO, size: int) -> int:
    """The byte offset where a safetensors file's JSON header ends (the whole ``size`` if the file is not one)."""
    prefix = handle.read(8)
    if len(prefix) < 8:
        return size
    end = 8 + int.from_bytes(prefix, "little")
    return min(end, size)


def find_credentials(folder: str | Path, paths: Iterable[str]) -> list[CredentialFinding]:
    """The files among ``paths`` (relative to ``folder``) whose name or content looks like a credential.

    Raises:
        UnsafeFileError: a path that is not a regular file inside ``folder`` (check with :func:`unsafe_files`).
    """
    folder = Path(folder)
    findings = []
    for path in paths:
        reason = credential_name_reason(path) or credential_content_reason(folder / path, folder, path)
        if reason:
            findings.append(CredentialFinding(path, reason))
    return findings


#: The patterns transformers' ``Trainer`` passes to ``upload_folder`` when it pushes ``output_dir`` during and at the
#: end of training (``push_to_hub=True``).
TRAINER_UPLOAD_IGNORE_PATTERNS = ("_*", "checkpoint-*")


def upload_folder_credentials(folder: str | Path, ignore_patterns: Sequence[str] = ()) -> list[CredentialFinding]:
    """The credential-looking files among those ``HfApi.upload_folder(folder, ignore_patterns=...)`` would upload.

    ``upload_folder`` sends every file of the folder (hidden ones included) except ``ignore_patterns`` and
    huggingface_hub's defaults (``.git``, ``.cache/huggingface``); this applies the same filter
    (``huggingface_hub.utils.filter_repo_objects``) and checks each file as :func:`find_credentials` does. Used to
    guard uploads that do not go through :func:`push_model_folder` (the Trainer's own pushes). A path that is not a
    regular file inside ``folder`` (a symbolic link out of it, whose target ``upload_folder`` would send; a FIFO,
    device or socket) is a finding too, and is never opened.
    """
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    folder = Path(folder)
    if not folder.is_dir():
        return []
    paths = sorted(
        path.relative_to(folder).as_posix() for path in folder.glob("**/*") if path.is_symlink() or not path.is_dir()
    )
    uploaded = list(filter_repo_objects(paths, ignore_patterns=[*ignore_patterns, *DEFAULT_IGNORE_PATTERNS]))
    unsafe = unsafe_files(folder, uploaded)
    return unsafe + find_credentials(folder, [path for path in uploaded if path not in {f.path for f in unsafe}])


def unsafe_files(folder: str | Path, paths: Iterable[str]) -> list[CredentialFinding]:
    """The paths (relative to ``folder``) that must never be uploaded or read: anything but a regular file inside
    ``folder`` (see :func:`hf_codiemb.safe_read.file_problem`); a symbolic link to a regular file inside the folder
    is accepted (its target's bytes are uploaded under the link's name). Nothing is opened."""
    folder = Path(folder)
    findings = []
    for path in paths:
        problem = file_problem(folder / path, folder)
        if problem:
            findings.append(CredentialFinding(path, problem))
    return findings


def _module_folders(folder: Path) -> list[str]:
    """The sub-folders named in ``modules.json`` (e.g. ``1_Pooling``), as posix paths relative to ``folder``."""
    modules_file = folder / MODULES_FILE
    if not os.path.lexists(modules_file):
        return []
    try:
        modules = json.loads(read_bounded(modules_file, _MAX_MODULES_JSON, folder, MODULES_FILE).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"{modules_file}: not valid JSON ({exc}); it is not a sentence-transformers folder"
        ) from exc
    if not isinstance(modules, list):
        raise ModelLoadError(f"{modules_file}: expected a list of modules, got {type(modules).__name__}")
    folders = []
    for index, module in enumerate(modules):
        path = module.get("path", "") if isinstance(module, dict) else None
        if not isinstance(path, str):
            raise ModelLoadError(f"{modules_file}: module {index} has no string 'path'")
        path = path.replace("\\", "/").strip("/")
        if not path:
            continue
        if path.startswith("..") or Path(path).is_absolute() or "/../" in f"/{path}/":
            raise UnsafeFileError(f"{modules_file}: module {index} path {path!r} points outside the model folder")
        if not resolves_inside(folder / path, folder):
            raise UnsafeFileError(
                f"{folder / path} (module {index} of {modules_file}) is a symbolic link to "
                f"{os.path.realpath(folder / path)}, outside {os.path.realpath(folder)}; copy the module folder in"
            )
        folders.append(path)
    return folders


def _is_model_file(path: str, module_folders: Sequence[str], has_safetensors: set[str]) -> bool:
    """Whether ``path`` (posix, relative to the pushed folder) belongs in a model repository by default."""
    directory, _, name = path.rpartition("/")
    if any(path.startswith(module + "/") for module in module_folders):
        return True  # every file of a module folder (Dense weights, a nested Transformer, a Router's sub-modules)
    if directory in BACKEND_EXPORTS:
        return _matches(name, BACKEND_EXPORTS[directory])
    if directory:
        return False
    if name in MODEL_FILES or name in CARD_AND_RESULT_FILES or _matches(name, TOKENIZER_PATTERNS):
        return True
    if name.endswith(".safetensors"):
        return True
    return _matches(name, PICKLED_WEIGHT_PATTERNS) and directory not in has_safetensors


def _walk(folder: Path) -> list[str]:
    """Every file below ``folder`` (posix relative paths, sorted), without hidden files/folders or symlinked folders."""
    paths = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        relative = Path(root).relative_to(folder).as_posix()
        prefix = "" if relative == "." else relative + "/"
        paths.extend(prefix + name for name in sorted(files) if not name.startswith("."))
    return paths


def _is_training_state(path: str) -> bool:
    *directories, name = path.split("/")
    return _matches(name, TRAINING_STATE_PATTERNS) or any(_matches(d, TRAINING_STATE_DIRS) for d in directories)


@dataclass(frozen=True)
class PushPlan:
    """The files of a folder that :func:`push_model_folder` uploads, and those it leaves out.

    Attributes:
        folder: the local folder.
        files: paths (posix, relative to ``folder``) to upload, top-level files first.
        skipped: the other (non-hidden) files.
        sizes: size in bytes of each file in ``files``.
    """

    folder: Path
    files: list[str]
    skipped: list[str]
    sizes: dict[str, int]

    @property
    def total_bytes(self) -> int:
        """The summed size of the files to upload."""
        return sum(self.sizes.values())

    def describe(self) -> str:
        """A multi-line summary: every file with its size, the total, and what is left out (grouped by folder)."""
        lines = [f"{len(self.files)} file(s), {_format_size(self.total_bytes)} ({self.total_bytes:,} bytes):"]
        lines += [f"  {path} ({_format_size(self.sizes[path])})" for path in self.files]
        if self.skipped:
            groups: dict[str, int] = {}
            for path in self.skipped:
                top = path.split("/", 1)[0] + ("/" if "/" in path else "")
                groups[top] = groups.get(top, 0) + 1
            left_out = ", ".join(f"{top} ({n} files)" if top.endswith("/") else top for top, n in groups.items())
            lines.append(f"Not uploaded (not part of a model repository; add with --include PATTERN): {left_out}")
        return "\n".join(lines)


def _format_size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover


def plan_push(folder: str | Path, include: Sequence[str] = ()) -> PushPlan:
    """Choose the files of ``folder`` to upload to a model repository.

    The default selection is what :class:`~sentence_transformers.SentenceTransformer` (and transformers / peft)
    loads, plus the card, licence and hf_codiemb's result files; checkpoints, optimizer/scheduler/RNG states,
    ``trainer_state.json``, ``training_args.bin``, ``runs/``, archives and anything else are left out. Files matching
    ``include`` are added (also ones left out by default). Hidden files and folders are never uploaded.

    Args:
        folder: a local model folder.
        include: extra patterns, relative to ``folder`` (fnmatch like huggingface_hub's ``allow_patterns``:
            ``*`` also matches ``/``, and ``"dir/"`` means everything below ``dir``).

    Returns:
        The :class:`PushPlan` (not yet checked for credentials: see :func:`find_credentials`).

    Raises:
        ModelLoadError: ``folder`` is not a non-empty folder or holds no model files, or its ``modules.json`` is
            unreadable.
        UnsafeFileError: ``modules.json`` names a folder outside ``folder``, or a file to upload is not a regular file inside ``folder``: a symbolic link that leaves it (its
            target would be uploaded), a FIFO, a device, a socket, a broken link (one line naming each; nothing is
            opened). A link to a regular file inside the folder is uploaded with its target's bytes.
    """
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        raise ModelLoadError(f"Nothing to push: {folder} is not a non-empty folder")
    try:
        module_folders = _module_folders(folder)
    except UnsafeFileError as error:
        raise UnsafeFileError(f"Refusing to push {folder}: {error}. Nothing was uploaded.") from None
    extra = _include_patterns(include)
    all_files = _walk(folder)
    has_safetensors = {path.rpartition("/")[0] for path in all_files if path.endswith(".safetensors")}
    files, skipped = [], []
    for path in all_files:
        default = _is_model_file(path, module_folders, has_safetensors) and not _is_training_state(path)
        (files if default or _matches(path, extra) else skipped).append(path)
    if not files:
        raise ModelLoadError(
            f"Nothing to push: {folder} holds no model files (modules.json, config.json, weights, tokenizer, README.md"
            "); add files with --include PATTERN"
        )
    unsafe = unsafe_files(folder, files)
    if unsafe:
        raise UnsafeFileError(
            f"Refusing to push {folder}: only regular files inside the folder are uploaded, and "
            + "; ".join(f"{folder / finding.path} {finding.reason}" for finding in unsafe)
            + ". Copy a linked file into the folder, or remove the entry. Nothing was uploaded."
        )
    return PushPlan(folder=folder, files=files, skipped=skipped, sizes={p: (folder / p).stat().st_size for p in files})


# ------------------------------------------------------------------------------------------------------------ push
def rerun_command(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    include: Sequence[str] = (),
    force: bool = False,
) -> str:
    """The ``codiemb push`` command that retries an upload (uploading again is safe: unchanged files are skipped)."""
    parts = ["codiemb", "push", str(folder), "--repo-id", repo_id]
    if private:
        parts.append("--private")
    if revision:
        parts += ["--revision", revision]
    if create_pr:
        parts.append("--create-pr")
    if include:
        parts += ["--include", *include]
    if force:
        parts.append("--force")
    return shlex.join(parts)


def check_repo_id(repo_id: str) -> None:
    """Raise :class:`~hf_codiemb.errors.UsageError` (a ``ValueError``, with huggingface_hub's reason) unless
    ``repo_id`` is a valid ``owner/name`` repo id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UsageError(f"Invalid Hub repo id {repo_id!r}: {exc}") from None


def push_model_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
    include: Sequence[str] = (),
    force: bool = False,
    dry_run: bool = False,
) -> str:
    """Upload the model files of ``folder`` to the model repository ``repo_id`` and return its URL.

    Selects the files with :func:`plan_push` (model files, card, result files, plus ``include``), refuses files that
    look like credentials (:func:`find_credentials`) unless ``force``, logs every file and the total size, then
    creates the repository if needed (``exist_ok``) and the branch ``revision`` when given, and uploads the files in
    one commit. Nothing is sent to the Hub before these checks pass.

    Args:
        folder: a local model folder (e.g. a training output folder or the output of
            :func:`hf_codiemb.fusion.delta_fuse`).
        repo_id: ``owner/name``.
        private: create the repository as private (ignored when it already exists).
        revision: a branch to push to (created from the default branch if missing).
        create_pr: open a pull request instead of committing to the branch.
        commit_message: the commit title.
        token: a Hub token; by default the one from ``HF_TOKEN`` or ``hf auth login``.
        include: extra file patterns to upload (see :func:`plan_push`).
        force: upload files that look like credentials anyway (each one is still named in a warning).
        dry_run: only log what would be uploaded; contact no server.

    Returns:
        The URL of the pull request when ``create_pr``, otherwise of the repository (at ``revision`` if given); with
        ``dry_run``, the URL the push would have.

    Raises:
        ModelLoadError: ``folder`` is not a non-empty folder, holds no model files, or is not a complete model folder
            (:func:`~hf_codiemb.model_folder.check_model_folder`).
        UsageError: an invalid ``repo_id``, or ``create_pr`` together with ``revision``.
        UnsafeFileError: a file to upload is not a regular file inside ``folder`` (see :func:`plan_push`).
        PushRefusedError: files to upload look like credentials (and not ``force``).
        HubPushError: a Hub or network error; the local folder is left untouched and the message has the command
            to rerun.
    """
    from huggingface_hub import CommitOperationAdd, HfApi, constants

    folder = Path(folder)
    check_repo_id(repo_id)
    if create_pr and revision:
        raise UsageError("create_pr opens a pull request against the default branch; do not also pass revision")
    plan = plan_push(folder, include)
    check_model_folder(folder)  # weights, config, tokenizer, modules: never upload a model that loads wrongly
    findings = find_credentials(folder, plan.files)
    if findings and not force:
        raise PushRefusedError(folder, findings)
    for finding in findings:
        logger.warning("Uploading %s although %s (--force)", folder / finding.path, finding.reason)
    left_out = [path for path in plan.skipped if credential_name_reason(path)]
    if left_out:
        logger.warning(
            "Not uploaded, but their names look like credentials (keep them out of model folders): %s",
            ", ".join(str(folder / path) for path in left_out),
        )
    target = f"{repo_id}" + (f" (branch {revision})" if revision else "")
    logger.info("%s %s to %s: %s", "Would push" if dry_run else "Pushing", folder, target, plan.describe())
    if dry_run:
        return f"{constants.ENDPOINT}/{repo_id}" + (f"/tree/{revision}" if revision else "")

    api = HfApi(token=token)
    commit_message = commit_message or f"Upload {folder.name} with hf_codiemb"
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(folder / path)) for path in plan.files]
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        commit = api.create_commit(
            repo_id=repo_id,
            operations=operations,
            repo_type="model",
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message,
        )
    except Exception as exc:  # HTTP, network (httpx), disk or server-response errors alike: the folder is intact
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        command = rerun_command(folder, repo_id, private=private, revision=revision, create_pr=create_pr,
                                include=include, force=force)
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
