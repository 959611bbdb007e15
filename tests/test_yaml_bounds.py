"""Every user YAML file goes through one bounded loader (issue 21, class 4 and class 5 in part).

An alias bomb inside a known key ends in one ``RecipeError`` line before any expansion (checked under a small
address-space limit in a subprocess); a recursive alias, too deep nesting, a too large file, a FIFO or device as
the config end in one line promptly; a duplicated key names the file, the line, the key and its first line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hf_codiemb.cli import main
from hf_codiemb.errors import RecipeError
from hf_codiemb.recipe import parse_recipe
from hf_codiemb.yaml_loader import MAX_DEPTH, MAX_YAML_BYTES, load_yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def alias_bomb(key: str, levels: int = 9) -> str:
    """``key`` holding 9**levels strings as written in a few hundred bytes (each level lists the previous 9 times)."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]")
    lines.append(f"{key}: *l{levels - 1}")
    return "\n".join(lines) + "\n"


# Runs in a fresh interpreter: imports first, then an address-space limit 300 MB above what is mapped, then the
# command. Building the bomb's error message without the loader's bounds needs many GB.
_BOUNDED_RUN = textwrap.dedent("""
    import resource, sys
    from hf_codiemb.cli import main
    import torch, transformers, sentence_transformers  # mapped before the limit (the train command needs them)
    import hf_codiemb.commands.push, hf_codiemb.commands.train, hf_codiemb.recipe
    with open("/proc/self/status") as status:
        mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    limit = mapped + 300 * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmSize from /proc")
@pytest.mark.parametrize(("command", "key"), [("push", "include"), ("train", "train_files")])
def test_alias_bomb_in_a_known_key_is_one_line_under_a_memory_limit(tmp_path, command, key):
    config = tmp_path / "bomb.yaml"
    config.write_text(alias_bomb(key))
    assert config.stat().st_size < 1000
    result = subprocess.run(
        [sys.executable, "-c", _BOUNDED_RUN, command, "--config", str(config)],
        check=False, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"codiemb {command}: error: Recipe {config}, line ")
    assert "expands (through aliases) to more than" in line


def test_duplicated_key_names_file_line_and_key(tmp_path, capsys):
    config = tmp_path / "dup.yaml"
    config.write_text("repo_id: user/a\nprivate: true\nrepo_id: user/b\n")
    assert main(["push", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert error.strip() == (
        f"codiemb push: error: Recipe {config}, line 3, field 'repo_id': duplicated key (first given on line 1); "
        "YAML would silently keep the last value"
    )
    nested = tmp_path / "nested.yaml"
    nested.write_text("output_dir: out\nlora:\n  r: 8\n  alpha: 16\n  r: 4\n")
    with pytest.raises(RecipeError, match=r"nested.yaml, line 5, field 'r': duplicated key \(first given on line 3\)"):
        parse_recipe(["--config", str(nested)])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &a [1, *a]\n", r"line 1: has an alias to a value that contains it"),
        ("a: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n", rf"more than {MAX_DEPTH} levels of nesting"),
        (
            "a: &a [[[[[[[[[[1]]]]]]]]]]\n" + "".join(f"a{i}: &a{i} [*a{i - 1 if i else ''}]\n" for i in range(80)),
            rf"nests \(through aliases\) more than {MAX_DEPTH} levels deep",
        ),
        ("a: &a '" + "x" * 100_000 + "'\nb: [" + ", ".join(["*a"] * 30) + "]\n", "expands .* to more than"),
        ("a: 1\n---\nb: 2\n", "is not valid YAML: but found another document"),
    ],
)
def test_bounds_are_one_recipe_error_with_the_line(text, message):
    with pytest.raises(RecipeError, match=rf"^Recipe x.yaml, .*{message}"):
        load_yaml(text, "Recipe x.yaml")


def test_anchors_and_merge_keys_within_bounds_still_work():
    value, _ = load_yaml("base: &b {r: 8, alpha: 16}\nlora:\n  <<: *b\n  r: 4\nfiles: &f [a, b]\nmore: *f\n", "R")
    assert value == {"base": {"r": 8, "alpha": 16}, "lora": {"r": 4, "alpha": 16}, "files": ["a", "b"],
                     "more": ["a", "b"]}  # fmt: skip


def test_config_that_is_large_a_fifo_or_a_device_ends_promptly(tmp_path, capsys):
    import signal

    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_YAML_BYTES + "\n")
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    link = tmp_path / "zero.yaml"
    link.symlink_to("/dev/zero")
    signal.alarm(10)  # a blocking open of the FIFO or a read of /dev/zero would never return
    try:
        for config, problem in [(big, f"is larger than {MAX_YAML_BYTES:,} bytes"), (fifo, "is a FIFO (named pipe)"),
                                (link, "is a symbolic link to a character device")]:  # fmt: skip
            assert main(["push", "--config", str(config)]) == 2
            [line] = capsys.readouterr().err.strip().splitlines()
            assert line.startswith(f"codiemb push: error: Recipe {config}: ") and problem in line
    finally:
        signal.alarm(0)


def test_long_values_in_type_errors_are_shortened(tmp_path, capsys):
    config = tmp_path / "long.yaml"
    config.write_text("private: [" + ", ".join(["'" + "y" * 200 + "'"] * 50) + "]\n")
    assert main(["push", "--config", str(config)]) == 2
    line = capsys.readouterr().err.strip()
    assert "field 'private': must be true/false, got [" in line and len(line) < 1000
