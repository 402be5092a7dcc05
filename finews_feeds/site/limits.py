"""How much one post's front matter may hold: the guard against a YAML alias bomb.

About a kilobyte of YAML (`a: &a [x, x, ...]`, `b: &b [*a, *a, ...]`, nine levels deep) names
hundreds of millions of values, and anything that walks the value (a list of tags flattened,
an author list joined) never ends. So a front matter is measured as composed, before anything
is built from it: its values counted as if every alias were written out, its aliases, how
deep lists and mappings nest, and whether an alias stands inside the value it names. The
number of tags and categories a post ends with is capped as well (each becomes three feeds).
The text itself is capped first, since parsing costs in proportion to it. The limits
(:class:`FrontMatterLimits`, set by ``[collector]`` in the config) are far beyond what a real
post holds; a file over one is rejected with the limit's config key.

Pure, and free of PyYAML: composed nodes are read by their ``id`` and ``value`` attributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from ..models import FrontMatterLimits

#: The defaults of ``[collector]``.
DEFAULT_LIMITS = FrontMatterLimits()


class Shape(NamedTuple):
    """What a front matter holds, as :func:`front_matter_problem` judges it."""

    nodes: int  #: values with every alias written out (a mapping's keys count)
    aliases: int  #: references to a value named elsewhere (`*name`)
    depth: int  #: lists and mappings inside one another; 0 for a lone scalar
    recursive: bool  #: an alias stands inside the value it names: the values never end


def measure_nodes(root: Any) -> Shape:
    """The shape of a composed YAML document (PyYAML's nodes, shared where an alias refers to
    a node), in time proportional to its distinct nodes, whatever the aliases expand to.

    Values and depth are those of the data built from it: of keys repeated in a mapping (the
    same tag and text), the last pair counts, as in the mapping built. Aliases are counted as
    written, wherever they stand."""
    done: dict[int, tuple[int, int]] = {}  # id of a node -> (values written out, depth)
    open_: set[int] = set()  # nodes whose values are being measured: the DFS's path
    edges = 0
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, closing = stack.pop()
        key = id(node)
        if closing:
            open_.discard(key)
            kept = _kept(node)
            size = 1 + sum(done[id(child)][0] for child in kept)
            depth = 1 + max((done[id(child)][1] for child in kept), default=0)
            done[key] = (size, depth)
            continue
        if key in done:
            continue
        if key in open_:  # reached again from inside itself: the counts are those reached so far
            return Shape(nodes=len(done) + len(open_), aliases=0, depth=len(open_), recursive=True)
        if node.id == "scalar":
            done[key] = (1, 0)
            continue
        open_.add(key)
        children = [part for pair in node.value for part in pair] if node.id == "mapping" else list(node.value)
        edges += len(children)
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(children))
    size, depth = done[id(root)]
    # Every node but the root is reached by one edge where it is written; any other edge into it
    # is an alias.
    return Shape(nodes=size, aliases=edges - (len(done) - 1), depth=depth, recursive=False)


def _kept(node: Any) -> list[Any]:
    """The children of ``node`` that the data built from it keeps."""
    if node.id != "mapping":
        return list(node.value)
    pairs: dict[object, tuple[Any, Any]] = {}
    for pair in node.value:
        name = pair[0]
        pairs[(name.tag, name.value) if name.id == "scalar" else id(name)] = pair
    return [part for pair in pairs.values() for part in pair]


def measure_data(value: object) -> Shape:
    """The shape of data built without aliases (dicts, lists, sets, scalars: a tree)."""
    if type(value) is dict:  # the common front matter, without the general walk below
        nodes, depth = 1 + 2 * len(value), 1
        for item in value.values():
            kind = type(item)
            if kind is list and all(type(part) in _SCALARS for part in item):
                nodes, depth = nodes + len(item), 2
            elif kind not in _SCALARS:
                break
        else:
            if all(type(key) in _SCALARS for key in value):
                return Shape(nodes=nodes, aliases=0, depth=depth, recursive=False)
    nodes = depth = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        nodes += 1
        if isinstance(item, Mapping):
            depth = max(depth, level + 1)
            for pair in item.items():
                stack.extend((part, level + 1) for part in pair)
        elif isinstance(item, (list, tuple, set, frozenset)):
            depth = max(depth, level + 1)
            stack.extend((part, level + 1) for part in item)
    return Shape(nodes=nodes, aliases=0, depth=depth, recursive=False)


_SCALARS = frozenset((str, int, float, bool, type(None)))


def text_problem(chars: int, limits: FrontMatterLimits) -> str | None:
    """Why a front matter of ``chars`` characters is not parsed, or None. Parsing costs time and
    memory in proportion to the text (a megabyte of `[1,1,...]`: 2 s and 170 MB), so the
    text is capped before anything else."""
    if chars > limits.chars:
        return (f"front matter has {chars:,} characters, more than collector.max_front_matter_chars = "
                f"{limits.chars:,}: not read")
    return None


def front_matter_problem(shape: Shape, limits: FrontMatterLimits) -> str | None:
    """Why a front matter of ``shape`` is not read, or None when it is within ``limits``."""
    if shape.recursive:
        return ("front matter has an alias inside the value it names (a recursive structure, endless once "
                "written out): not read")
    if shape.aliases > limits.aliases:
        return (f"front matter has {shape.aliases:,} aliases (*name), more than collector.max_front_matter_aliases "
                f"= {limits.aliases:,}: not read")
    if shape.nodes > limits.nodes:
        return (f"front matter expands to {shape.nodes:,} values, more than collector.max_front_matter_nodes = "
                f"{limits.nodes:,}: not read (aliases repeating aliases: a YAML alias bomb?)")
    if shape.depth > limits.depth:
        return (f"front matter nests lists and mappings {shape.depth} deep, more than "
                f"collector.max_front_matter_depth = {limits.depth}: not read")
    return None


def terms_problem(categories: int, tags: int, limits: FrontMatterLimits) -> str | None:
    """Why a post with that many distinct categories and tags is not read, or None."""
    if categories > limits.categories:
        return f"{categories:,} categories, more than collector.max_categories = {limits.categories:,}"
    if tags > limits.tags:
        return f"{tags:,} tags, more than collector.max_tags = {limits.tags:,}"
    return None
