"""The one loader of the user's YAML files (recipes, ``--config``): bounded in size, nodes, depth and expansion.

YAML anchors and aliases let a few hundred bytes describe a value of billions of elements (an "alias bomb": each
level lists the previous one ten times). PyYAML builds it as shared objects, cheaply, but everything that walks the
value afterwards (type checks, the ``repr`` of an error message) does the full expansion and exhausts memory or
time. :func:`load_yaml` therefore composes the node graph first (at most :data:`MAX_NODES` nodes,
:data:`MAX_DEPTH` levels of nesting), measures its size *as if every alias were expanded* (scalar characters plus
nodes, at most :data:`MAX_EXPANDED`; an alias to an enclosing node is refused), refuses a duplicated key in any
mapping (YAML would silently keep the last one), and only then builds the Python value. Every problem is one
:class:`~hf_codiemb.errors.RecipeError` naming the file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hf_codiemb.errors import RecipeError
from hf_codiemb.safe_read import UnsafeFileError, read_bounded

__all__ = ["MAX_DEPTH", "MAX_EXPANDED", "MAX_NODES", "MAX_YAML_BYTES", "load_yaml", "load_yaml_file"]

#: The largest YAML file read (recipes are a few kB).
MAX_YAML_BYTES = 1 << 20
#: The most nodes (scalars, lists, mappings, aliases) a document may have as written.
MAX_NODES = 100_000
#: The deepest nesting, counted after alias expansion.
MAX_DEPTH = 64
#: The largest size after alias expansion: nodes plus scalar characters.
MAX_EXPANDED = 2_000_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(Exception):
    """A bound exceeded while composing (``problem``, 1-based ``line``)."""

    def __init__(self, problem: str, line: int | None) -> None:
        super().__init__(problem)
        self.problem, self.line = problem, line


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting nodes and nesting while it composes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._depth += 1
        self._nodes += 1
        if self._depth > MAX_DEPTH or self._nodes > MAX_NODES:
            line = self.peek_event().start_mark.line + 1
            bound = (
                f"more than {MAX_DEPTH} levels of nesting"
                if self._depth > MAX_DEPTH
                else f"more than {MAX_NODES:,} nodes"
            )
            raise _Refused(f"has {bound}, more than a configuration file needs", line)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def _check_graph(root: yaml.Node) -> None:
    """Refuse recursive aliases, an expansion over the bounds, and duplicated keys (iterative: no deep recursion)."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, expanded depth)
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            children = _children(node)
            size = 1 + (len(node.value) if isinstance(node, yaml.ScalarNode) else 0)
            size += sum(measured[id(child)][0] for child in children)
            depth = 1 + max((measured[id(child)][1] for child in children), default=0)
            line = node.start_mark.line + 1
            if size > MAX_EXPANDED:
                raise _Refused(f"expands (through aliases) to more than {MAX_EXPANDED:,} nodes and characters", line)
            if depth > MAX_DEPTH:
                raise _Refused(f"nests (through aliases) more than {MAX_DEPTH} levels deep", line)
            measured[key] = (size, depth)
            on_path.discard(key)
            continue
        if key in measured:
            continue
        on_path.add(key)
        stack.append((node, True))
        if isinstance(node, yaml.MappingNode):
            _check_duplicate_keys(node)
        for child in _children(node):
            if id(child) in on_path:
                raise _Refused("has an alias to a value that contains it (a recursive structure)",
                               child.start_mark.line + 1)  # fmt: skip
            if id(child) not in measured:
                stack.append((child, False))


def _check_duplicate_keys(node: yaml.MappingNode) -> None:
    seen: dict[tuple[str, str], int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
            continue
        key, line = (key_node.tag, key_node.value), key_node.start_mark.line + 1
        if key in seen:
            raise _DuplicateKey(key_node.value, line, seen[key])
        seen[key] = line


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int, first: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


def load_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """Parse one YAML document with the bounds of this module; return its value and its (checked) node graph.

    Args:
        text: the YAML text.
        source: where it comes from, for the messages (``"Recipe /path/x.yaml"``).

    Raises:
        RecipeError: not YAML, over a bound, a recursive alias, or a duplicated key (naming ``source``, the line
            and, for a duplicate, the key and the line where it was first given).
    """
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_graph(node)
        return loader.construct_document(node), node
    except _Refused as error:
        raise RecipeError(error.problem, source=source, line=error.line) from None
    except _DuplicateKey as error:
        raise RecipeError(f"duplicated key (first given on line {error.first}); YAML would silently keep the last "
                          "value", field=str(error.key), source=source, line=error.line) from None  # fmt: skip
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = " ".join(str(getattr(error, "problem", None) or error).split())
        line = mark.line + 1 if mark is not None else None
        raise RecipeError(f"is not valid YAML: {problem}", source=source, line=line) from None
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path, source: str) -> tuple[Any, yaml.Node | None]:
    """:func:`load_yaml` of a file: a regular file of at most :data:`MAX_YAML_BYTES`, UTF-8 (a BOM is allowed).

    Raises:
        RecipeError: missing, a directory, a FIFO/device/socket, too large, not UTF-8, or as :func:`load_yaml`.
    """
    path = Path(path)
    if path.is_dir():
        raise RecipeError("is a directory, not a YAML file", source=source)
    if not path.exists() and not path.is_symlink():
        raise RecipeError("does not exist", source=source)
    try:
        data = read_bounded(path, MAX_YAML_BYTES, what="YAML file")
    except UnsafeFileError as error:
        problem = str(error).removeprefix(str(path)).strip()
        raise RecipeError(problem, source=source) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise RecipeError(f"is not UTF-8 text ({error.reason} at byte {error.start})", source=source) from None
    return load_yaml(text, source)
