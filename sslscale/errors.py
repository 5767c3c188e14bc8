"""The one exception type users see: a problem with their input, said in one line with its fix; and how to find
it again inside the exceptions Ray wraps around it."""

import re


class SslscaleError(Exception):
    """A user-facing error: the message names the problem and how to fix it, in one line."""


def reason(err: BaseException) -> str:
    """An exception's first line, or its type's name when it says nothing: for a one-line message about it."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def root_cause(e: BaseException) -> tuple[str, bool]:
    """(one line for the user, whether it is our own error): our SslscaleError's message wherever Ray's wrappers
    put it (causes, contexts, Ray Train's per-worker failures), else the last line of the innermost exception."""
    seen, todo, lines = [], [e], []
    while todo and len(seen) < 50:
        x = todo.pop(0)
        if x is None or any(x is y for y in seen):
            continue
        seen.append(x)
        lines += str(x).strip().splitlines()
        todo += [x.__cause__, x.__context__, *getattr(x, "worker_failures", {}).values()]
    ours = [m.group(1) for line in lines if (m := re.search(r"\b(?:SslscaleError|ShardError): (.*)", line))]
    if ours:
        return ours[-1], True
    text = str(seen[-1]).strip().splitlines()
    return (text[-1] if text else type(seen[-1]).__name__), False
