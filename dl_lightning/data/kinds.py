"""Which kind of data a family reads a source as, decided before anything is loaded or trained.

A family that needs sequences (cnn, rnn, transformer) given a 2-D numeric array reads each row as one signal:
``(N, T)`` becomes ``(N, T, 1)``. Every other mismatch is an error that names each fix that would work.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from dl_lightning.data.spec import Kind
from dl_lightning.errors import InputError

# natural kind → the other kinds ``loaders.shape_for_kind`` can reshape it to, with the caveat a user must know
READABLE_AS: dict[str, dict[str, str]] = {
    "tabular": {"sequence": "each row one signal"},
    "sequence": {"tabular": "steps × features flattened", "image": "one channel of T × F"},
    "image": {"tabular": "pixels flattened", "sequence": "single-channel images, row by row"},
    "text": {},
}


@dataclass(frozen=True)
class KindChoice:
    """The ``kind`` to load the source as (None: the source's own) and, when it was guessed, one line saying so."""

    kind: Kind | None
    note: str = ""


def choose_kind(
    family: str,
    families: Mapping[str, Collection[str]],
    natural: Kind | None,
    *,
    kind: Kind | None = None,
    shape: tuple[int, ...] | None = None,
    source: str = "the data",
) -> KindChoice:
    """The kind ``family`` reads the data as, or InputError naming every valid fix.

    Args:
        families: family name → the kinds it accepts (the registry).
        natural: the kind the source is by itself (None when it cannot be told without loading).
        kind: ``data.kind`` as the user set it; an explicit kind is never second-guessed.
        shape: the source's array shape when known cheaply, only to word the note.

    Guarantees: a 2-D numeric source (``natural == "tabular"``) for a family that takes sequences but not tables
    is read as sequences, with a note; otherwise the result is ``kind`` unchanged, or an error.
    """
    accepts = families[family]
    given = kind or natural
    if given is None or given in accepts:
        return KindChoice(kind)
    if kind is None and given == "tabular" and "sequence" in accepts:
        return KindChoice("sequence", signal_note(family, source, shape))
    raise InputError(mismatch_message(family, families, given, source, explicit=kind is not None))


def signal_note(family: str, source: str, shape: tuple[int, ...] | None) -> str:
    """The one line said when a 2-D array is read as signals."""
    if shape is not None and len(shape) == 2:
        read = f"its {shape[0]} rows as signals of {shape[1]} steps × 1 feature"
    else:
        read = "each row as one signal (columns = steps, 1 feature)"
    return (
        f"data: {source} is 2-D (rows × columns); model.family={family} reads {read} — "
        "to use the columns as features instead, set data.kind=tabular and model.family=mlp"
    )


def mismatch_message(
    family: str, families: Mapping[str, Collection[str]], kind: str, source: str = "the data", explicit: bool = False
) -> str:
    """One line: what ``family`` needs, what the data is, and every fix (other families, other ``data.kind``)."""
    accepts = families[family]
    needs = " or ".join(sorted(accepts))
    what = f"data.kind={kind}" if explicit else f"{source} is {kind}"
    takers = [name for name, kinds in families.items() if kind in kinds and name != family]
    fixes = [f"model.family={_either(takers)}"] if takers else []
    fixes += [f"data.kind={other} ({why})" for other, why in READABLE_AS.get(kind, {}).items() if other in accepts]
    advice = ", or ".join(fixes) if fixes else f"{needs} data"
    return f"model.family={family} needs {needs} data but {what}; use {advice}"


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
