"""Benchmark: vectorised PROLoss against the reference loop (forward + backward), side by side.

Not collected by pytest (file name ``bench_*``). Run from the repository root::

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_pro_loss.py --repeats 50

Prints a Markdown table: median time per forward+backward for each batch size (float32, as in
training), the speed ratio, and the difference of the loss values on the same inputs (relative in float32,
absolute in float64).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from hf_codiemb.losses import PROLoss


def pro_loop_reference(predicted: torch.Tensor, gold: torch.Tensor, temperature: float = 0.05, eps: float = 1e-8):
    """The reference definition as the CoDiEmb code computes it: sort by gold, one softmax per item."""
    if predicted.numel() < 2:
        return predicted.sum() * 0
    logits = predicted / temperature
    order = torch.argsort(gold, descending=True)
    gold_sorted, logits_sorted = gold[order], logits[order]
    total, count = logits.new_zeros(()), 0
    for k in range(gold_sorted.size(0) - 1):
        mask = (gold_sorted[k] - gold_sorted[k + 1 :]) > eps
        if not mask.any():
            continue
        gaps = gold_sorted[k] - gold_sorted[k + 1 :][mask]
        row = torch.cat([(logits_sorted[k] * gaps.max()).unsqueeze(0), logits_sorted[k + 1 :][mask] * gaps])
        total = total + torch.log_softmax(row, dim=0)[0]
        count += 1
    if count == 0:
        return predicted.sum() * 0
    return -total / count


def time_forward_backward(fn, predicted: torch.Tensor, gold: torch.Tensor, repeats: int, warmup: int = 3) -> float:
    times = []
    for i in range(warmup + repeats):
        x = predicted.detach().clone().requires_grad_()
        start = time.perf_counter()
        fn(x, gold).backward()
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    loss = PROLoss(None, temperature=0.05)
    generator = torch.Generator().manual_seed(args.seed)
    lines = [
        (
            f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
            f"{platform.processor() or platform.machine()}, float32, forward+backward, median of {args.repeats} repeats"
        ),
        "",
        (
            "| batch | loop reference (ms) | vectorised (ms) | speed-up | loss value "
            "| rel. diff float32 | abs. diff float64 |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in args.batch_sizes:
        predicted = torch.rand(n, generator=generator) * 2 - 1
        gold = torch.randint(0, 6, (n,), generator=generator).float()  # STS-like gold with many ties
        reference32 = pro_loop_reference(predicted, gold).item()
        rel_diff32 = abs(loss.compute_from_scores(predicted, gold).item() - reference32) / abs(reference32)
        abs_diff64 = abs(
            loss.compute_from_scores(predicted.double(), gold.double()).item()
            - pro_loop_reference(predicted.double(), gold.double()).item()
        )
        t_loop = time_forward_backward(pro_loop_reference, predicted, gold, args.repeats)
        t_vec = time_forward_backward(loss.compute_from_scores, predicted, gold, args.repeats)
        lines.append(
            f"| {n} | {t_loop * 1e3:.2f} | {t_vec * 1e3:.3f} | {t_loop / t_vec:.1f}x | {reference32:.4f} "
            f"| {rel_diff32:.1e} | {abs_diff64:.1e} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
