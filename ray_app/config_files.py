"""Reading a model stage's mmengine config without running it.

An mmengine ``.py`` config is Python: ``Config.fromfile`` executes it. The config of a model
stage comes from ``/in/models``, i.e. from whoever made the model, so it is read like data
instead: the file must consist of ``name = <literal>`` assignments, where a literal is a
constant, list, tuple, dict, set, ``dict(key=...)`` or a negative number. That is exactly what
``Config.dump`` / ``pretty_text`` writes (our stages and the original executor's), and nothing
else is accepted: no imports, calls, names, attribute access or ``_base_`` inheritance.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from mmengine.config import Config


class UnsafeConfig(ValueError):
    """The file holds something other than literal assignments."""


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        values = [_literal(e) for e in node.elts]
        return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](values)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict"
            and not node.args and all(k.arg is not None for k in node.keywords)):
        return {k.arg: _literal(k.value) for k in node.keywords}
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd))
            and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float))):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    raise UnsafeConfig(f"line {getattr(node, 'lineno', '?')}: {ast.unparse(node)[:80]!r} is not a literal")


def load_config_safely(path: str | Path) -> Config:
    """The mmengine ``Config`` in ``path``, read as data (see the module docstring)."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))
    values: dict[str, Any] = {}
    for statement in tree.body:
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue  # a docstring or a stray string
        if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)):
            raise UnsafeConfig(f"line {statement.lineno}: {ast.unparse(statement)[:80]!r} is not a "
                               "`name = literal` assignment")
        values[statement.targets[0].id] = _literal(statement.value)
    if "_base_" in values:
        raise UnsafeConfig("_base_ inheritance is not supported in a model stage's config: give a dumped config")
    return Config(values, filename=str(path))
