"""Checks of an app's hydra command line against its config groups, before hydra composes it.

Hydra rejects a key its config lacks with a message about struct mode; these checks name the key
to write instead: a key that moved into a group (``tasks=`` -> ``method.tasks=``), and a field of
another option of a group (``method.tasks=`` with ``method=ire_vla``: ``tasks`` is an rldg field).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any


def _key(override: str) -> str | None:
    if override.startswith("-") or "=" not in override:
        return None  # a hydra flag (--multirun, -c job) or a bare word
    key = override.split("=", 1)[0].lstrip("+~")
    return None if key.startswith("hydra.") else key


def check_overrides(app: str, overrides: list[str], groups: dict[str, tuple[str, dict[str, type]]],
                    moved: dict[str, str]) -> None:
    """Raise ValueError naming the new key for a key that moved, or a field of another group option.

    ``groups``: group -> (default option, option -> its dataclass); ``moved``: old key -> new key, where an
    old key ending in ``.`` is a prefix (``rldg.`` -> ``method.``: ``rldg.replay`` -> ``method.replay``).
    """
    keys = [k for k in map(_key, overrides) if k]
    choice = {g: default for g, (default, _) in groups.items()}
    for o in overrides:
        k = _key(o)
        if k in groups:
            choice[k] = o.split("=", 1)[1]
    for k in keys:
        for old, new in moved.items():
            if k == old or (old.endswith(".") and k.startswith(old)):
                write = new + k[len(old):] if old.endswith(".") else new
                raise ValueError(f"{app}: {k}= is no longer a key of this app: write {write}={_owners(write, groups)}")
        head, _, rest = k.partition(".")
        if head not in groups or not rest:
            continue
        field = rest.split(".", 1)[0]
        options = groups[head][1]
        if field == "name":
            raise ValueError(f"{app}: {k}= cannot be set: pick the option with {head}=NAME ({', '.join(options)})")
        chosen = options.get(choice[head])
        if chosen is None or field in _fields(chosen):
            continue
        raise ValueError(f"{app}: {k}= is not a field of {head}={choice[head]}{_owners(k, groups)}; "
                         f"its fields: {', '.join(f for f in _fields(chosen) if f != 'name')}")


def _owners(key: str, groups: dict[str, tuple[str, dict[str, type]]]) -> str:
    """`` (a field of method=rldg)`` for a key in a group, else ``""``."""
    head, _, rest = key.partition(".")
    if head not in groups or not rest:
        return ""
    owners = [f"{head}={n}" for n, cls in groups[head][1].items() if rest.split(".", 1)[0] in _fields(cls)]
    return f" (a field of {' and '.join(owners)})" if owners else ""


def _fields(cls: Any) -> list[str]:
    return [f.name for f in fields(cls)]


def hydra_main(config_name: str, check: Any, register: Any, app: Any) -> None:
    """An app's console entry point: ``check(argv)`` first (a moved or misplaced key exits with the new
    key's name, no traceback), then ``register()`` its configs and run ``app(cfg)`` under hydra."""
    import sys

    import hydra

    try:
        check(sys.argv[1:])
    except ValueError as e:
        sys.exit(str(e))
    register()
    hydra.main(version_base=None, config_name=config_name)(app)()


def compose_app(config_name: str, check: Any, register: Any, overrides: list[str]) -> Any:
    """An app's config from a command line outside the hydra app: ``check`` it, ``register()``, compose."""
    from robot.config import compose

    check(overrides)
    register()
    return compose(config_name, overrides)
