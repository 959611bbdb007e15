"""Resolve fusion inputs (local folders, Hub ids, LoRA adapter folders) to local model folders."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hf_codiemb.model_folder import ADAPTER_CONFIG_FILE, MODULES_FILE

logger = logging.getLogger(__name__)


@dataclass
class ResolvedModel:
    """A fusion input available as a local folder.

    Attributes:
        spec: what the user passed (path or Hub id), used in messages and the model card.
        path: local folder holding the weights to fuse.
        role: ``"base"`` or ``"checkpoint 2"``, used in error messages.
        template: folder whose non-weight files (modules.json, tokenizer, pooling config) describe this model.
        is_lora: whether ``spec`` was a LoRA adapter merged into its base.
    """

    spec: str
    path: Path
    role: str
    template: Path
    is_lora: bool = False
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"{self.role} ({self.spec})"

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _download(repo_id: str, revision: str | None, role: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from hf_codiemb.fusion.errors import FusionError

    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        at = f"@{revision}" if revision else ""
        raise FusionError(f"The {role} {repo_id}{at} could not be fetched from the Hub: {exc}") from exc


def resolve_model(spec: str | Path, role: str, lora_base: ResolvedModel | None = None) -> ResolvedModel:
    """Turn ``spec`` into a local folder: any model name :func:`hf_codiemb.model_names.resolve_model_path` takes (a
    folder, ``packaged:NAME``, ``prepared:NAME``, a Hub id, here also with ``@revision``: downloaded with
    ``snapshot_download``), or a LoRA adapter folder (``adapter_config.json``) merged into its base with peft and
    saved to a temporary folder.

    Raises:
        FusionError: ``spec`` is neither a loadable local model nor a downloadable Hub model (the message says why).
    """
    from hf_codiemb.errors import ModelLoadError
    from hf_codiemb.fusion.errors import FusionError
    from hf_codiemb.model_folder import check_model_folder
    from hf_codiemb.model_names import resolve_model_path

    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir() and (path / ADAPTER_CONFIG_FILE).is_file():  # a raw peft adapter has no config.json of its own
        if (path / MODULES_FILE).is_file():  # a LoRA-trained sentence-transformers folder: check it whole
            try:
                check_model_folder(path)
            except ModelLoadError as exc:
                raise FusionError(f"The {role}: {exc}") from exc
        return _merge_lora(text, path, role, lora_base)
    name, revision = text, None
    if not path.exists() and "@" in text:  # owner/name@revision
        name, _, revision = text.partition("@")
    try:
        located = resolve_model_path(name)
    except ModelLoadError as exc:
        raise FusionError(f"The {role}: {exc}") from exc
    path = Path(located)
    if not path.is_dir():  # a Hub id
        path = _download(located, revision or None, role)
        if (path / ADAPTER_CONFIG_FILE).is_file() and not (path / MODULES_FILE).is_file():
            return _merge_lora(text, path, role, lora_base)
        try:
            check_model_folder(path)  # the downloaded snapshot, as a local folder is checked
        except ModelLoadError as exc:
            raise FusionError(f"The {role} {text}: {exc}") from exc
        if (path / ADAPTER_CONFIG_FILE).is_file():
            return _merge_lora(text, path, role, lora_base)
    return ResolvedModel(spec=text, path=path, role=role, template=path)


def _merge_lora(spec: str, adapter_dir: Path, role: str, lora_base: ResolvedModel | None) -> ResolvedModel:
    """Merge a peft LoRA adapter into its base and save the merged weights (safetensors) to a temporary folder.

    The adapter's ``base_model_name_or_path`` is used when it is an existing local folder; otherwise the fusion
    base (``lora_base``) is used, which is the usual case (the adapter was trained on the fusion's base).
    """
    from hf_codiemb.fusion.errors import FusionError
    from hf_codiemb.lora import merge_adapter_into_base

    declared = json.loads((adapter_dir / ADAPTER_CONFIG_FILE).read_text()).get("base_model_name_or_path")
    if declared and Path(declared).is_dir():
        base_dir = Path(declared)
    elif lora_base is not None:
        base_dir = lora_base.path
        if declared and declared != lora_base.spec:
            logger.info("LoRA %s declares base %r; merging it into the fusion base %s", spec, declared, base_dir)
    else:  # the Hub id or folder name hf_codiemb writes: packaged/prepared bases are found offline
        from hf_codiemb.errors import ModelLoadError
        from hf_codiemb.lora import lora_base_folder

        try:
            found = lora_base_folder(adapter_dir)
        except ModelLoadError as error:
            raise FusionError(f"The {role} {spec!r} is a LoRA adapter: {error}") from None
        base_dir = Path(found) if Path(found).is_dir() else found
    logger.info("Merging LoRA adapter %s into %s", adapter_dir, base_dir)
    model = merge_adapter_into_base(base_dir, adapter_dir)
    tmp = tempfile.TemporaryDirectory(prefix="codiemb-lora-merged-")
    model.save_pretrained(tmp.name, safe_serialization=True)
    del model
    template = adapter_dir if (adapter_dir / MODULES_FILE).is_file() else base_dir
    return ResolvedModel(spec=spec, path=Path(tmp.name), role=role, template=template, is_lora=True, _tmp=tmp)
