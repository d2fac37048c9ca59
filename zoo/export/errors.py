"""Turn an exporter's stack of errors into one line that names the operator or module at fault.

``torch.onnx.export`` and ``torch.export`` fail with pages of advice; what a user needs is
*which* part of the model to change. The operator comes from the error (``aten.kthvalue``)
and its module from the exported graph's ``nn_module_stack``. When the error names no
operator (a data-dependent branch, an untraceable call), the module is found by exporting
the model's submodules one level at a time with the inputs they really receive and
descending into the first that fails.
"""
from __future__ import annotations

import re
from typing import Any, Callable

import torch
from torch import nn

# "target=torch.ops.aten.kthvalue.default" (ONNX conversion) or "OpOverload(op='aten.x'"
_OPERATOR = (re.compile(r"target=(?:torch\.ops\.)?([A-Za-z_][\w.]*)"),
             re.compile(r"OpOverload\(op='([\w.]+)'"),
             re.compile(r"\b(aten::\w+)"))
_SUMMARY_CLASS = re.compile(r"^<class '([\w.]+)'>: (.*)$")


class ExportFailure(RuntimeError):
    """A format could not be exported; ``operator`` and ``module`` say where, when known."""

    def __init__(self, fmt: str, reason: str, operator: str | None = None,
                 module: str | None = None) -> None:
        self.format, self.reason, self.operator, self.module = fmt, reason, operator, module
        where = []
        if module is not None:
            where.append(f"in module {module}")
        if operator:
            where.append(f"at operator {operator}")
        super().__init__(f"{fmt} export failed {' '.join(where) or 'in the model'}: {reason}")


def summarise(exc: BaseException) -> str:
    """The root cause in one line: the exporter's 'Exception summary' if it has one."""
    text = str(exc)
    causes = [m for line in text.splitlines() if (m := _SUMMARY_CLASS.match(line.strip()))]
    if causes:  # the first listed is the innermost cause
        name, message = causes[0].groups()
        return f"{name.rsplit('.', 1)[-1]}: {message.strip()}"[:500]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:500]


def operator_of(exc: BaseException) -> str | None:
    """The ATen operator an exporter error names, e.g. ``aten.kthvalue.default``."""
    text = str(exc)
    for pattern in _OPERATOR:
        if match := pattern.search(text):
            return match.group(1)
    return None


def module_of_operator(program: torch.export.ExportedProgram | None, operator: str
                       ) -> str | None:
    """``path (Class)`` of the innermost module that calls ``operator`` in ``program``."""
    if program is None:
        return None
    wanted = operator.replace("::", ".")
    for node in program.graph.nodes:
        if node.op == "call_function" and str(node.target).startswith(wanted):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, cls = list(stack.values())[-1]
                return _describe(path, cls if isinstance(cls, str) else cls.__qualname__)
    return None


def _describe(path: str, cls: str) -> str:
    return f"{path or '<root>'} ({cls.rsplit('.', 1)[-1]})"


def _record_inputs(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[tuple, dict]]:
    """The first ``(args, kwargs)`` each submodule is called with on ``example``."""
    seen: dict[str, tuple[tuple, dict]] = {}
    handles = []
    for name, module in model.named_modules():
        def hook(_m: nn.Module, args: tuple, kwargs: dict, name: str = name) -> None:
            seen.setdefault(name, (args, kwargs))
        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def locate_module(model: nn.Module, example: torch.Tensor,
                  attempt: Callable[[nn.Module, tuple, dict], Any]) -> str | None:
    """The deepest submodule whose own export (``attempt``) fails with its real inputs.

    Returns None when every child exports alone (the fault is in how the model joins
    them) or the eager forward itself fails.
    """
    try:
        inputs = _record_inputs(model, example)
    except Exception:  # noqa: BLE001 - the model does not even run: nothing to bisect
        return None
    path, module, culprit = "", model, None
    while True:
        for name, child in module.named_children():
            full = f"{path}.{name}" if path else name
            if full not in inputs:
                continue
            args, kwargs = inputs[full]
            try:
                attempt(child, args, kwargs)
            except Exception:  # noqa: BLE001 - any failure means: look inside
                path, module, culprit = full, child, _describe(full, type(child).__qualname__)
                break
        else:
            return culprit


def explain(fmt: str, exc: BaseException, model: nn.Module, example: torch.Tensor,
            attempt: Callable[[nn.Module, tuple, dict], Any],
            program: torch.export.ExportedProgram | None = None,
            make_program: Callable[[], torch.export.ExportedProgram] | None = None,
            ) -> ExportFailure:
    """An :class:`ExportFailure` naming the operator and module behind ``exc``.

    ``make_program`` exports the whole model when ``program`` is not given, to find the
    module of an operator that ONNX conversion rejected.
    """
    operator = operator_of(exc)
    if operator and program is None and make_program is not None:
        try:
            program = make_program()
        except Exception:  # noqa: BLE001 - then the module is found by bisection
            program = None
    module = module_of_operator(program, operator) if operator else None
    if module is None:
        module = locate_module(model, example, attempt)
    return ExportFailure(fmt, summarise(exc), operator, module)
