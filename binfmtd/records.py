"""Record classes for the boot path: the part of dataclasses that binfmtd's records use (fields
with defaults or default factories, frozen, ==, the hash of a frozen record, repr, replace),
without importing dataclasses. That import brings inspect, ast, dis, tokenize, re and enum
along and compiles code for every class: about 8 ms of every `binfmtd apply` on a 2-CPU host
(scripts/bench). Modules off the boot path (verify/, daemon/, compat/, facts/processes.py) use
dataclasses."""

from __future__ import annotations

_MISSING = object()


class _Field:
    __slots__ = ("default", "default_factory")

    def __init__(self, default=_MISSING, default_factory=None):
        self.default, self.default_factory = default, default_factory


def field(*, default=_MISSING, default_factory=None) -> _Field:
    return _Field(default, default_factory)


class FrozenInstanceError(AttributeError):
    pass


def dataclass(cls=None, *, frozen: bool = False):
    """`@dataclass` or `@dataclass(frozen=True)` on a class whose annotations are its fields."""
    def wrap(cls):
        return _make(cls, frozen)
    return wrap if cls is None else wrap(cls)


def replace(record, **changes):
    """A copy of `record` with `changes` (dataclasses.replace)."""
    return record.__class__(**{**{name: getattr(record, name) for name in record.__record_fields__}, **changes})


def _fields(cls) -> dict[str, _Field]:
    """The record's fields in order: those of the records it extends, then its own annotations,
    each class attribute that was a field() replaced by its plain default (as dataclasses does)."""
    fields: dict[str, _Field] = {}
    for base in reversed(cls.__mro__[1:]):  # a record's own fields follow those of the record it extends
        fields.update(base.__dict__.get("__record_fields__", {}))
    for name in cls.__dict__.get("__annotations__", {}):  # noqa: RUF063 (inspect is what this avoids)
        value = cls.__dict__.get(name, _MISSING)
        spec = value if isinstance(value, _Field) else _Field(value)
        if spec.default is _MISSING and spec.default_factory is None and any(
                f.default is not _MISSING or f.default_factory is not None for f in fields.values()):
            raise TypeError(f"non-default argument {name!r} follows default argument")
        if isinstance(value, _Field):
            if spec.default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, spec.default)
        fields[name] = spec
    return fields


def _make(cls, frozen: bool):
    fields = _fields(cls)
    names = tuple(fields)
    title = cls.__qualname__

    def __init__(self, *args, **kwargs):
        if kwargs or len(args) != len(names):
            args = _bind(title, fields, args, kwargs)
        self.__dict__.update(zip(names, args))

    def __repr__(self):
        return f"{title}({', '.join(f'{name}={getattr(self, name)!r}' for name in names)})"

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return tuple(getattr(self, n) for n in names) == tuple(getattr(other, n) for n in names)

    cls.__record_fields__ = fields
    cls.__match_args__ = names
    for method in (__init__, __repr__, __eq__):
        method.__qualname__ = f"{title}.{method.__name__}"
        setattr(cls, method.__name__, method)
    if frozen:
        cls.__hash__ = lambda self: hash(tuple(getattr(self, n) for n in names))
        cls.__setattr__ = _refuse
        cls.__delattr__ = _refuse
    else:  # as dataclasses: a mutable record that compares by value has no hash
        cls.__hash__ = None
    return cls


def _bind(title: str, fields: dict[str, _Field], args: tuple, kwargs: dict) -> list:
    if len(args) > len(fields):
        raise TypeError(f"{title}() takes {len(fields)} positional arguments but {len(args)} were given")
    values = dict(zip(fields, args))
    for key, value in kwargs.items():
        if key not in fields:
            raise TypeError(f"{title}() got an unexpected keyword argument {key!r}")
        if key in values:
            raise TypeError(f"{title}() got multiple values for argument {key!r}")
        values[key] = value
    for name, spec in fields.items():
        if name not in values:
            if spec.default_factory is not None:
                values[name] = spec.default_factory()
            elif spec.default is not _MISSING:
                values[name] = spec.default
            else:
                raise TypeError(f"{title}() missing required argument: {name!r}")
    return [values[name] for name in fields]


def _refuse(self, name, *value):
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def plain(value):
    """A record, and the records, lists and dicts in it, as JSON's values (fields in order)."""
    if hasattr(value, "__record_fields__"):
        return {name: plain(getattr(value, name)) for name in value.__record_fields__}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value
