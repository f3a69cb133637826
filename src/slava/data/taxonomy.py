"""The micrograph classes every stage names: ids and their readable names.

The ten nanomaterial categories of Aversa et al. (2018). The synthetic
generator draws them; the teacher, the trainer and the evaluation name them;
none of those needs the generator to know what the classes are.
"""

from __future__ import annotations

CLASSES: tuple[str, ...] = (
    "biological",
    "fibres",
    "films_coated_surfaces",
    "mems_devices_electrodes",
    "nanowires",
    "particles",
    "patterned_surfaces",
    "porous_sponges",
    "powders",
    "tips",
)
"""Class ids, in the order the synthetic generator seeds them."""

CLASS_NAMES: dict[str, str] = {
    "biological": "biological cells",
    "fibres": "fibres",
    "films_coated_surfaces": "films and coated surfaces",
    "mems_devices_electrodes": "MEMS devices and electrodes",
    "nanowires": "nanowires",
    "particles": "particles",
    "patterned_surfaces": "patterned surfaces",
    "porous_sponges": "porous sponges",
    "powders": "powders",
    "tips": "tips",
}
"""Class id → the words answers use for it."""


def class_name(label: str) -> str:
    """The readable name of a class id; an unknown label with its underscores as spaces."""
    return CLASS_NAMES.get(label, label.replace("_", " "))
