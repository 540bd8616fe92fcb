"""Read scenario text safely: bounded size, UTF-8 only, YAML with bounded aliases and nesting.

A scenario is a few KiB of YAML. Whatever the input (a binary, ``/dev/zero``, a
"billion laughs" alias bomb, a recursive alias, thousands of nested brackets),
reading it costs at most ``MAX_FILE_BYTES`` of input and ``MAX_NODES`` expanded
YAML nodes, and a fault becomes one ``SourceError`` with the line it is on.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 1 << 20  # 1 MiB: the largest shipped scenario is under 4 KiB
MAX_NODES = 10_000  # YAML nodes after expanding aliases (a scenario has a few hundred)
MAX_DEPTH = 32  # nesting levels (the deepest key, machine.devices.N.kind, is at level 4)
MAX_INT_CHARS = 64  # an integer's characters: int64 has 19 digits, and Python will not read one of over 4300

_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"


class SourceError(ValueError):
    """A fault in the text itself: ``line`` (1-based, or None) and the message after ``FILE:LINE:``."""

    def __init__(self, line: int | None, message: str):
        self.line, self.message = line, message
        super().__init__(message)


def read_text(path: Path) -> str:
    """The file's text, read as UTF-8 (an optional UTF-8 BOM is dropped); at most ``MAX_FILE_BYTES``."""
    if path.is_dir():
        raise SourceError(None, "cannot read the file: it is a directory (allowed: a scenario YAML file)")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)  # never the whole stream: /dev/zero is endless
    except OSError as exc:
        raise SourceError(None, f"cannot read the file: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise SourceError(None, f"the file is too large (got more than {MAX_FILE_BYTES} bytes; "
                                f"allowed: at most 1MiB of YAML)")
    return decode(raw)


def decode(raw: bytes) -> str:
    """UTF-8 text, or a ``SourceError`` naming the line of the first byte that is not."""
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if raw.startswith(bom):
            raise SourceError(1, f"the file is {name} text (got a {name} byte-order mark; allowed: UTF-8, "
                                 f"e.g. iconv -f {name} -t UTF-8)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, col = _position(raw, exc.start)
        raise SourceError(line, f"not UTF-8 text (got byte {raw[exc.start]:#04x} at column {col}; "
                                f"allowed: UTF-8 text)") from None
    nul = text.find("\0")
    if nul >= 0:
        line, col = _position(text, nul)
        raise SourceError(line, f"not a text file (got a NUL byte at column {col}, as in a binary or "
                                f"UTF-16 file; allowed: UTF-8 text)")
    return text


def _position(text: bytes | str, index: int) -> tuple[int, int]:
    newline = b"\n" if isinstance(text, bytes) else "\n"
    start = text.rfind(newline, 0, index) + 1
    return text.count(newline, 0, index) + 1, index - start + 1


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` that refuses deep nesting and counts nodes with every alias expanded."""

    def __init__(self, text: str):
        super().__init__(text)
        self._depth = 0
        self._sizes: dict[int, int] = {}  # expanded size of finished nodes, by id
        self.expanded = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            node = self.anchors.get(event.anchor)
            if isinstance(node, yaml.CollectionNode) and node.end_mark is None:  # still being composed
                raise SourceError(mark.line + 1, f"YAML alias *{event.anchor} is inside the node it refers to "
                                                 f"(a recursive alias; allowed: aliases to finished nodes)")
            self._count(1 if node is None else self._size(node), mark)
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise SourceError(mark.line + 1, f"YAML nested too deeply (got more than {MAX_DEPTH} levels; "
                                             f"allowed: at most {MAX_DEPTH})")
        self._count(1, mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _size(self, node: yaml.Node) -> int:
        """Nodes in ``node`` with every alias expanded (memoised: finished nodes form a DAG)."""
        key = id(node)
        if key not in self._sizes:
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = node.value if isinstance(node, yaml.SequenceNode) else []
            self._sizes[key] = 1 + sum(self._size(c) for c in children)
        return self._sizes[key]

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """An integer longer than any value here needs is refused where it is written, before ``int()``."""
        if len(node.value) > MAX_INT_CHARS:
            raise SourceError(node.start_mark.line + 1, f"an integer of {len(node.value)} characters (allowed: at "
                                                        f"most {MAX_INT_CHARS})")
        return super().construct_yaml_int(node)

    def _count(self, n: int, mark) -> None:
        self.expanded += n
        if self.expanded > MAX_NODES:
            raise SourceError(mark.line + 1, f"YAML expands to too many nodes (got more than {MAX_NODES} after "
                                             f"expanding aliases; allowed: at most {MAX_NODES})")


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def load_yaml(text: str) -> tuple[Any, dict[tuple, int]]:
    """(data, line map) of one YAML document, with the limits above. Raises ``SourceError``."""
    try:
        loader = _Loader(text)  # the reader checks every character here
        node = loader.get_single_node()
        lines = {} if node is None else line_map(node)  # before construction rewrites merge keys
        data = None if node is None else loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise SourceError(*_syntax(exc)) from None
    except yaml.reader.ReaderError as exc:
        line, col = _position(text, exc.position)
        raise SourceError(line, f"a control character in the text (got {_codepoint(exc.character)} at column {col}; "
                                f"allowed: printable UTF-8, tabs and newlines)") from None
    loader.dispose()
    return data, lines


def _codepoint(character: int | str) -> str:
    return f"U+{character if isinstance(character, int) else ord(character):04X}"


def _syntax(exc: yaml.MarkedYAMLError) -> tuple[int, str]:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else 1
    problem = exc.problem or exc.context or "unreadable YAML"
    if isinstance(exc, yaml.constructor.ConstructorError) and "constructor for the tag" in problem:
        tag = problem.split("'")[1] if "'" in problem else problem
        return line, (f"YAML tag not allowed (got {tag.replace('tag:yaml.org,2002:', '!!')}; allowed: plain "
                      f"mappings, lists, strings, numbers and booleans)")
    if "expected a single document" in f"{exc.context} {problem}":
        return line, "a second YAML document (got '---' and more; allowed: one document per scenario file)"
    if "found duplicate anchor" in (exc.context or ""):
        anchor = exc.context.split("'")[1]
        first = exc.context_mark.line + 1 if exc.context_mark else line
        return line, f"YAML anchor &{anchor} defined twice (first on line {first}; allowed: one anchor per name)"
    text = f"YAML syntax error: {problem}"
    if exc.problem and exc.context and exc.context_mark and exc.context_mark.line + 1 != line:
        text += f" ({exc.context} that starts at line {exc.context_mark.line + 1})"
    elif "found character '\\t'" in problem:
        text += " (YAML indents with spaces, never tabs)"
    return line, text


def line_map(node: yaml.Node) -> dict[tuple, int]:
    """Map every key path to the 1-based line where it appears; reject duplicate and non-name keys.

    Merge keys (``<<: *base``) contribute their keys at the same path, overridable as in YAML.
    """
    out: dict[tuple, int] = {}
    from_merge: set[tuple] = set()  # paths a merge key gave, which an explicit key may override once

    def walk(node: yaml.Node, path: tuple, merged: bool = False) -> None:
        out.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.tag == _MERGE:
                    for base in value.value if isinstance(value, yaml.SequenceNode) else [value]:
                        walk(base, path, merged=True)
                    continue
                if key.tag != _STR:
                    where = ".".join(map(str, path)) or "(top level)"
                    got = (f"{key.value or 'null'}, read as {key.tag.rsplit(':', 1)[-1]}"
                           if isinstance(key, yaml.ScalarNode) else f"a {key.tag.rsplit(':', 1)[-1]} as a key")
                    raise SourceError(key.start_mark.line + 1, f"{where}: a key must be a name (got {got}; "
                                                               f"allowed: names such as machine)")
                sub = path + (key.value,)
                if merged:
                    if sub not in out:
                        out[sub] = key.start_mark.line + 1
                        from_merge.add(sub)
                elif sub in out and sub not in from_merge:
                    raise SourceError(key.start_mark.line + 1, f"{'.'.join(map(str, sub))}: duplicate key "
                                                               f"(first given on line {out[sub]})")
                else:
                    out[sub] = key.start_mark.line + 1
                    from_merge.discard(sub)
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (i,))

    walk(node, ())
    return out


def read_yaml_file(path: Path) -> tuple[Any, dict[tuple, int]]:
    """(data, line map) of a scenario file. Raises ``SourceError``."""
    return load_yaml(read_text(path))
