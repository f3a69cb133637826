"""Question prompts shared by the teachers, the assistant and evaluation.

A prompt seen in training must be the prompt asked at inference, so every
question wording lives here once: VQA phrasings per family, caption prompts,
the one classification prompt with its answer text, and measurement
questions tagged with the measurement that answers them.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from slava.data.taxonomy import class_name

PROMPT_VERSION = "analytic-2"
"""Changes whenever a wording below changes, so cached teacher output is redone."""

QUESTIONS: dict[str, tuple[str, ...]] = {
    "material": (
        "What kind of material or structure is shown in this micrograph?",
        "What type of sample is this, and at what scale is it imaged?",
        "Identify the material class visible in this SEM image.",
        "What are we looking at in this image?",
    ),
    "morphology": (
        "Describe the morphology of the features in this image.",
        "What shapes do the structures in this micrograph have?",
        "How would you characterise the morphology of this sample?",
    ),
    "size": (
        "How large are the features in this image, and how are their sizes distributed?",
        "What is the size scale of the structures shown?",
        "Comment on the feature sizes and their distribution.",
    ),
    "surface": (
        "Describe the surface features and texture visible in this micrograph.",
        "What does the surface texture look like?",
        "Is the surface smooth or rough, and what details can be seen on it?",
    ),
    "composition": (
        "What can you tell about the chemical composition from this image?",
        "Can the composition of this material be determined from this micrograph?",
        "Which elements or phases are present in this sample?",
    ),
    "boundaries": (
        "Describe the boundaries and interfaces visible in this image.",
        "Are there visible interfaces, grain boundaries or contacts between features?",
        "How do the features meet each other and the background?",
    ),
    "context": (
        "What is the context of this sample: its substrate, support or surroundings?",
        "On what kind of substrate or background are the features imaged?",
        "Describe the setting in which these features appear.",
    ),
    "imaging": (
        "What imaging technique, mode and magnification were likely used for this micrograph?",
        "How was this image acquired, and what is its scale?",
        "What kind of electron microscopy image is this, and what does its contrast show?",
    ),
    "function": (
        "What is the likely function of this structure?",
        "What role could these features play in a device or material?",
        "Why might a material be made with this structure?",
    ),
    "applications": (
        "What applications could this material have?",
        "Where would a material like this be used?",
        "Name possible applications for the sample shown.",
    ),
}
"""VQA question phrasings by family (the ten ``vqa`` families of ``slava.data.records.FAMILIES``)."""

CAPTION_PROMPTS: tuple[str, ...] = (
    "Describe this micrograph in detail.",
    "Give a detailed description of this SEM image.",
    "Write a detailed caption for this electron micrograph.",
    "What does this micrograph show? Describe it in detail.",
)
CAPTION_PROMPT = CAPTION_PROMPTS[0]
"""The caption prompt the assistant asks (teachers vary over ``CAPTION_PROMPTS``)."""

MEASURE_QUESTIONS: dict[str, tuple[str, ...]] = {
    "particle_count": (
        "How many particles are visible?",
        "Count the particles in this image.",
        "How many separate particles does this micrograph contain?",
    ),
    "mean_diameter": (
        "What is the mean particle diameter?",
        "What is the mean particle diameter in nm?",
        "How large are the particles on average?",
    ),
    "coverage": (
        "What fraction of the image area do the particles cover?",
        "What is the area coverage of the particles?",
    ),
    "fibre_count": (
        "How many fibres are visible?",
        "Count the fibres or wires in this image.",
    ),
    "mean_width": (
        "What is the mean fibre width?",
        "What is the mean fibre width in nm?",
        "How wide are the fibres on average?",
    ),
    "orientation": (
        "What is the dominant fibre orientation?",
        "In which direction are the fibres mostly aligned?",
    ),
    "pore_fraction": (
        "What fraction of the area is taken up by pores?",
        "What is the pore area fraction?",
    ),
    "mean_pore_size": (
        "What is the mean pore size?",
        "What is the mean pore size in nm?",
    ),
    "pitch": (
        "What is the pitch of the pattern?",
        "What is the period of the pattern in nm?",
    ),
    "feature_size": (
        "What is the feature size of the pattern?",
        "How wide are the patterned features?",
    ),
    "apex_radius": (
        "What is the apex radius of the tip?",
        "How sharp is the tip: what is its apex radius?",
    ),
    "grain_size": (
        "What is the mean grain size?",
        "How large are the grains on average?",
    ),
    "mean_length": (
        "What is the mean length of the elongated features?",
        "How long are the objects on average?",
    ),
    "ligament_width": (
        "How wide are the ligaments between the pores?",
        "What is the mean ligament width?",
    ),
    "gap": (
        "How wide are the gaps between the structures?",
        "What is the gap width in nm?",
    ),
    "cone_angle": (
        "What is the cone half-angle of the tip?",
        "How steep are the flanks of the tip?",
    ),
    "pixel_size": (
        "What is the pixel size of this image?",
        "What is the pixel size in nm?",
    ),
    "field_width": (
        "How wide is the field of view?",
        "What is the width of the field of view in nm?",
    ),
}
"""Counting and measuring questions by ``measure_kind``: the measurement that answers them."""

_KIND_OF = {q: kind for kind, qs in MEASURE_QUESTIONS.items() for q in qs}


def measure_kind(question: str) -> str | None:
    """The ``measure_kind`` of one of ``MEASURE_QUESTIONS`` (exact wording), else None."""
    return _KIND_OF.get(question.strip())


def label_name(label: str, names: Mapping[str, str] | None = None) -> str:
    """The human name of a class label: from ``names``, else the synthetic class names, else the label itself."""
    if names is not None and label in names:
        return names[label]
    return class_name(label)


_CLASSIFY_HEAD = "Which of these categories best describes this micrograph: "
_CLASSIFY_TAIL = "? Answer with the category name."


def classify_prompt(labels: Sequence[str], names: Mapping[str, str] | None = None) -> str:
    """The one classification prompt, listing the candidate classes' human names in the given order.

    It carries no image context (teachers write it without, and zero-shot
    scoring shares one prompt across a batch of images): see ``is_classify_prompt``.
    """
    listed = ", ".join(label_name(label, names) for label in labels)
    return f"{_CLASSIFY_HEAD}{listed}{_CLASSIFY_TAIL}"


def is_classify_prompt(question: str) -> bool:
    """Whether ``question`` is a ``classify_prompt``: the one question asked without the image context."""
    return question.startswith(_CLASSIFY_HEAD) and question.endswith(_CLASSIFY_TAIL)


CLASSIFY_PROMPT = classify_prompt
"""Name of ``classify_prompt`` in docs/INTERFACES.md."""


def classify_answer(label: str, names: Mapping[str, str] | None = None) -> str:
    """The exact answer a teacher writes to ``classify_prompt`` for ``label``: its human name.

    The assistant scores each candidate's ``classify_answer`` as the
    continuation of ``classify_prompt``, so both must stay in step.
    """
    return label_name(label, names)
