"""Tasks: everything domain-specific behind one seam, chosen by `task:` in the run config.

    task: shapeworld          # the embedded world (the default): its grammar, suites, exact verifier
    task: open                # free text: any prompt; correctness from the judge, else unknown
    task: my_pkg.tasks:Mine   # your own: a class with the attributes of tasks.base.Task

Only tasks/shapeworld.py imports world/, and only when that task is chosen.
"""

from __future__ import annotations

import importlib

from tasks.base import SuitePrompt, Task, Verdict

BUILT_IN = {"shapeworld": "tasks.shapeworld:ShapeWorldTask", "open": "tasks.open:OpenTask"}


def load_task(name: str) -> Task:
    """The task a run config names; ValueError (one line) when it cannot be found or is not a task."""
    target = BUILT_IN.get(name, name)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"task {name!r} is unknown: use shapeworld, open, or an import path like my_pkg.tasks:MyTask")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"task {name!r}: cannot import {module_name} ({e})") from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise ValueError(f"task {name!r}: {module_name} has no {attr}")
    task = cls() if isinstance(cls, type) else cls
    missing = [a for a in ("name", "critic_template", "check_prompt", "suite", "check_instruction", "has_verifier")
               if not hasattr(task, a)]
    if missing:
        raise ValueError(f"task {name!r}: {attr} is not a task (no {', '.join(missing)}); subclass tasks.base.Task")
    return task


__all__ = ["BUILT_IN", "SuitePrompt", "Task", "Verdict", "load_task"]
