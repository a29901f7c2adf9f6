"""Reading the YAML files users hand us (pipeline files, SLURM profiles) without trusting their shape.

`yaml.safe_load` is safe against code execution, not against size or shape: a few hundred bytes of
nested aliases expand to billions of values once something walks them, deep nesting overflows the
composer's recursion, a 5000-digit integer trips Python's int-conversion limit, and a repeated key
silently replaces the first. Each of those ended in a traceback or a runaway process instead of the
one-line error (exit 2) that bad input must give, so this loader refuses them while parsing, before
anything downstream sees the data:

* nesting deeper than MAX_DEPTH (ours are under 10 levels deep);
* more than MAX_NODES values or MAX_SCALAR_CHARS characters of scalars, counting every alias as
  the copy it stands for (aliases stay usable for sharing a block; only their blow-up is refused);
* an alias that refers to the collection it sits in (a recursive structure);
* a key given twice in one mapping (the error names the key and both lines);
* integer literals longer than MAX_INT_CHARS (no setting takes such a number);
* text that is not UTF-8, and values PyYAML cannot construct (e.g. the date 2024-13-01).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from pipeline.errors import UserError

MAX_DEPTH = 64
MAX_NODES = 100_000
MAX_SCALAR_CHARS = 10_000_000
MAX_INT_CHARS = 100
_MERGE_TAG = "tag:yaml.org,2002:merge"
# What PyYAML's constructors raise, besides its own errors, on values they cannot build: int() and
# date() on out-of-range text, `!!timestamp x` (a failed regex match), a malformed `!!omap`.
_CONSTRUCTION_ERRORS = (ValueError, TypeError, OverflowError, AttributeError, LookupError)


class YamlInputError(yaml.YAMLError):
    """A refusal of ours: `problem` is the one-line reason; `mark` and `field` (dotted) or `node` say where."""

    def __init__(
        self, problem: str, *, mark: yaml.Mark | None = None, field: str | None = None, node: Node | None = None
    ) -> None:
        super().__init__(problem)
        self.problem = problem
        self.mark = mark if mark is not None else (node.start_mark if node is not None else None)
        self.field = field  # known while composing; after, parse_yaml finds `node` in the tree
        self.node = node


class GuardedLoader(yaml.SafeLoader):
    """SafeLoader that enforces the limits in the module docstring while it composes and constructs.

    Checks run per node as the composer builds it, so a refusal comes after reading at most
    MAX_DEPTH levels or the first collection past the size limits, never after expanding anything.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._path: list[str] = []  # dotted path of the node being composed ("?" inside a key)
        self._open_anchors: set[str] = set()
        self._sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, scalar characters), aliases expanded
        self._saw_alias = False

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        """PyYAML's, with the depth, size, recursion and duplicate-key checks around it.

        `index` is the key node for a mapping value, the position for a sequence item, None for a
        key (and the root): enough to know the dotted path of every node while it is composed.
        """
        event = self.peek_event()
        label = index.value if isinstance(index, ScalarNode) else "?" if index is None else str(index)
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise YamlInputError(
                    f"alias *{event.anchor} refers to the collection it is part of (recursive)",
                    mark=event.start_mark,
                    field=".".join([*self._path, label]),
                )
            self._saw_alias = True
            return super().compose_node(parent, index)  # its size was recorded when its anchor was composed
        if parent is not None:
            self._path.append(label)
        if len(self._path) >= MAX_DEPTH:
            raise YamlInputError(f"YAML nesting deeper than {MAX_DEPTH} levels", mark=event.start_mark)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            node = super().compose_node(parent, index)
            if isinstance(node, MappingNode):
                self._refuse_duplicate_keys(node)
            self._record_size(node)
        finally:
            if anchor is not None:
                self._open_anchors.discard(anchor)
            if parent is not None:
                self._path.pop()
        return node

    def _field(self) -> str:
        return ".".join(self._path)

    def _refuse_duplicate_keys(self, node: MappingNode) -> None:
        """A key given twice: safe_load keeps the last silently (a second `run:` replaced the first).

        Checked on the composed node, before construction: merge keys (`<<: *anchor`) are flattened
        into the mapping then, and an explicit key overriding a merged one is what merges are for.
        Keys compare by resolved tag and text, so `run` and `"run"` are the same key.
        """
        first_line: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            line = key_node.start_mark.line + 1
            earlier = first_line.get((key_node.tag, key_node.value))
            if earlier is not None:
                raise YamlInputError(
                    f"duplicate key {key_node.value!r} (lines {earlier} and {line})",
                    mark=key_node.start_mark,
                    field=self._field(),
                )
            first_line[(key_node.tag, key_node.value)] = line

    def _record_size(self, node: Node) -> None:
        if isinstance(node, ScalarNode):
            size = (1, len(node.value))
        else:
            children = node.value if isinstance(node, SequenceNode) else [n for pair in node.value for n in pair]
            sizes = [self._sizes[id(child)] for child in children]
            size = (1 + sum(s[0] for s in sizes), sum(s[1] for s in sizes))
        self._sizes[id(node)] = size
        if size[0] > MAX_NODES or size[1] > MAX_SCALAR_CHARS:
            what = "aliases expand it to" if self._saw_alias else "it holds"
            limit = f"{MAX_NODES} values" if size[0] > MAX_NODES else f"{MAX_SCALAR_CHARS} characters of values"
            raise YamlInputError(f"too large: {what} more than {limit}", mark=node.start_mark, field=self._field())

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        """As PyYAML's, but a value it cannot build (ValueError and kin) becomes an error at its node."""
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except _CONSTRUCTION_ERRORS as e:
            raise YamlInputError(f"cannot read value {_short(node.value)}: {e}", node=node) from e

    def construct_yaml_int(self, node: ScalarNode) -> int:
        """Python refuses to convert integer strings over 4300 digits; we stop far earlier with a clear reason."""
        if len(node.value) > MAX_INT_CHARS:
            raise YamlInputError(
                f"integer of {len(node.value)} characters is too large (at most {MAX_INT_CHARS})", node=node
            )
        return super().construct_yaml_int(node)


GuardedLoader.add_constructor("tag:yaml.org,2002:int", GuardedLoader.construct_yaml_int)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value) if isinstance(value, str) else "a collection"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key_path(root: Node | None, target: Node) -> str:
    """Dotted path (e.g. `run.seed`) of `target` in the composed tree, '' when it is the root or not found."""
    if root is None:
        return ""
    stack: list[tuple[Node, tuple[str, ...]]] = [(root, ())]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if node is target:
            return ".".join(path)
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            for key, value in node.value:
                name = key.value if isinstance(key, ScalarNode) else "?"
                if key is target:
                    return ".".join((*path, name))
                stack.append((value, (*path, name)))
        elif isinstance(node, SequenceNode):
            stack.extend((child, (*path, str(i))) for i, child in enumerate(node.value))
    return ""


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def parse_yaml(text: str, path: Path) -> Any:
    """The data of one YAML document, or UserError `<path>:<line>[:<col>]: <reason>` on one line."""
    loader: GuardedLoader | None = None
    root: Node | None = None
    try:
        loader = GuardedLoader(text)  # its reader already refuses control characters
        root = loader.get_single_node()
        return loader.construct_document(root) if root is not None else None
    except YamlInputError as e:
        where = f"{path}:{e.mark.line + 1}" if e.mark is not None else str(path)
        field = e.field if e.field is not None else _key_path(root, e.node) if e.node is not None else ""
        raise UserError(f"{where}: {field + ': ' if field else ''}{e.problem}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{where}: YAML syntax error: {e.problem or e.context}") from None
    except yaml.reader.ReaderError as e:
        raise UserError(
            f"{path}:{_line_of(text, e.position)}: unacceptable character #x{e.character:04x}: {e.reason}"
        ) from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: YAML error: {' '.join(str(e).split())}") from None
    except _CONSTRUCTION_ERRORS as e:  # raised outside construct_object, where no node is at hand
        raise UserError(f"{path}: cannot read YAML: {' '.join(str(e).split())}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml_file(path: Path, what: str) -> tuple[Any, str]:
    """(data, text) of a YAML file the user wrote; `what` ("pipeline file") names it in errors."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path}:{line}: {what} is not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
    return parse_yaml(text, path), text


def compose_yaml(text: str) -> Node | None:
    """The node tree of text that parse_yaml accepted (for line numbers); None when it does not compose."""
    try:
        loader = GuardedLoader(text)
    except yaml.YAMLError:
        return None
    try:
        return loader.get_single_node()
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()


_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})", re.ASCII)  # what os.path.expandvars expands on POSIX


def undefined_variables(value: str, environ: dict[str, str] | Any) -> list[str]:
    """Names of `$NAME` / `${NAME}` references in `value` that `environ` does not define.

    os.path.expandvars leaves those untouched, which turns `$SCRATCH/runs` into a directory that is
    literally called `$SCRATCH` when the variable is missing; callers refuse them instead.
    """
    names = (m.group(1).removeprefix("{").removesuffix("}") for m in _VARIABLE.finditer(value))
    return [name for name in dict.fromkeys(names) if name not in environ]
