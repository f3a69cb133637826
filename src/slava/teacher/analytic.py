"""The offline analytic teacher: instruction records written from what is known.

For each image it writes a detailed caption, VQA answers over the ten
question families, a closed-set classification record and counting/measuring
records. Caption, VQA and measurement records carry the image context
(``slava.measure.context``) in their human turn, and every number an answer
states is a number of that context: the student sees the same line at
inference, so it can learn to quote, never to guess. Ground truth of a
synthetic image stays out of the answers; measurement records keep it in
``meta.truth`` for evaluation. The rest of an answer is the class label with
the expert knowledge the teacher holds about that class, chosen by a rule
(class and family), not by chance per image, so an answer is a function of
(class, context, family). Every number goes through
:class:`~slava.teacher.phrasing.Numbers`, so a record's ``meta.numbers``
lists exactly the numbers its answer states.
"""

from __future__ import annotations

import math
import random
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from slava.data.chat import user_turn
from slava.data.records import TASKS
from slava.data.taxonomy import CLASS_NAMES, CLASSES
from slava.measure.context import Context, image_context
from slava.measure.record import Measurements
from slava.teacher import phrasing
from slava.teacher.phrasing import Numbers
from slava.teacher.prompts import (
    CAPTION_PROMPTS,
    MEASURE_QUESTIONS,
    PROMPT_VERSION,
    QUESTIONS,
    classify_answer,
    classify_prompt,
    label_name,
)

if TYPE_CHECKING:
    from slava.data.manifest import ManifestEntry
    from slava.io.micrograph import Micrograph

VQA_FAMILIES = tuple(QUESTIONS)
"""The ten VQA families, in the order of ``slava.data.records.FAMILIES``."""


@dataclass(frozen=True)
class _Fact:
    """One stated quantity: its ``meta.numbers`` name, value and unit."""

    name: str
    value: float | int
    unit: str


# Context number -> (measure kind, unit: "u" for the image's length unit). Fractions are stated in percent.
_CONTEXT_FACTS = {
    "particle_count": ("particle_count", ""),
    "mean_diameter": ("mean_diameter", "u"),
    "coverage": ("coverage", "%"),
    "fibre_count": ("fibre_count", ""),
    "mean_width": ("mean_width", "u"),
    "pore_fraction": ("pore_fraction", "%"),
    "mean_pore_size": ("mean_pore_size", "u"),
    "pitch": ("pitch", "u"),
    "magnification": ("magnification", ""),
    "hv_kv": ("hv_kv", "kV"),
}
# Ground-truth quantities a measurement record keeps in ``meta.truth`` (for evaluation, never stated).
_TRUTH_KEYS = ("particle_count", "object_count", "grain_count", "mean_diameter_nm", "fibre_count", "mean_width_nm",
               "pore_fraction", "mean_pore_size_nm", "pitch_nm", "coverage")
# Which measurement groups say something meaningful about each class.
_CLASS_GROUPS = {
    "particles": ("particles",),
    "powders": ("particles",),
    "biological": ("particles",),
    "fibres": ("fibres",),
    "nanowires": ("fibres",),
    "porous_sponges": ("pores",),
    "patterned_surfaces": ("periodicity",),
    "films_coated_surfaces": (),
    "mems_devices_electrodes": (),
    "tips": (),
}
_GROUP_OF = {
    "particle_count": "particles", "mean_diameter": "particles", "coverage": "particles",
    "fibre_count": "fibres", "mean_width": "fibres", "pore_fraction": "pores", "mean_pore_size": "pores",
    "pitch": "periodicity",
}
# Nouns for what image analysis separates when the class is unknown (or its own noun would leak).
_NEUTRAL_NOUNS = {
    "particles": ("bright object", "bright objects"),
    "fibres": ("elongated strand", "elongated strands"),
    "pores": ("pore", "pores"),
}
_DEFAULT_NOUNS = ("feature", "features")
_SIZE_KINDS = (
    "mean_diameter", "grain_size", "mean_width", "mean_pore_size", "pitch", "feature_size", "apex_radius",
    "ligament_width", "gap", "mean_length",
)
_COUNT_KINDS = ("particle_count", "fibre_count")
_NM = re.compile(r"\bnm\b")


@dataclass
class _Image:
    """What is known about one image, gathered once for all of its records."""

    rng: random.Random
    """Picks the questions (which families, which wording); never an answer's wording."""
    cls: str | None
    name: str | None
    facts_kb: dict[str, tuple[str, ...]]
    facts: dict[str, _Fact]
    nouns: tuple[str, str] | None
    calibrated: bool
    context: Context
    spread: str | None = None
    qualities: list[str] = field(default_factory=list)
    brightness: str | None = None
    alignment: str | None = None


class AnalyticTeacher:
    """Writes caption, VQA, classification and measurement records from ground truth and measurements.

    ``tasks``: the tasks to write (default all of ``slava.data.records.TASKS``);
    ``per_image``: VQA questions per image, each from a different family;
    ``no_label_leak``: keep every word of every class name out of all answers
    except classification ones, so zero-shot classification of held-out
    classes stays honest; ``seed``: with the image's sha256, picks the
    questions (families, wordings, candidate order), so the output is
    deterministic per (seed, image); answers depend on (class, context) only;
    ``labels``: the classes known to the teacher (ids, or a mapping id ->
    human name), default the synthetic classes; they are the candidates of
    the classification record.
    """

    prompt_version = PROMPT_VERSION

    def __init__(
        self,
        tasks: Sequence[str] | None = None,
        per_image: int = 4,
        no_label_leak: bool = False,
        seed: int = 0,
        labels: Sequence[str] | Mapping[str, str] | None = None,
    ):
        self.tasks = tuple(TASKS if tasks is None else tasks)
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown task(s) {sorted(unknown)}; known: {', '.join(TASKS)}")
        if per_image < 0:
            raise ValueError("per_image must be >= 0")
        self.per_image = min(per_image, len(VQA_FAMILIES))
        self.no_label_leak = no_label_leak
        self.seed = seed
        if labels is None:
            labels = {c: CLASS_NAMES[c] for c in CLASSES}
        if isinstance(labels, Mapping):
            self.names = dict(labels)
        else:
            self.names = {label: label_name(label) for label in labels}
        self._build_pools()

    def _build_pools(self) -> None:
        """Sentence pools with, in no-leak mode, every sentence naming a class removed."""
        banned = phrasing.banned_stems(list(self.names.values()) + list(self.names))

        def keep(pool: tuple[str, ...]) -> tuple[str, ...]:
            if not self.no_label_leak:
                return pool
            return tuple(s for s in pool if not phrasing.leaks(s.replace("{name}", ""), banned))

        self._kb = {c: {k: keep(v) for k, v in facts.items()} for c, facts in phrasing.CLASS_FACTS.items()}
        self._generic = {k: keep(v) for k, v in phrasing.GENERIC.items()}
        templates = {k: keep(v) for k, v in phrasing.TEMPLATES.items()}
        if self.no_label_leak:
            templates = {k: v for k, v in templates.items() if not any("{name}" in s for s in v)}
        self._templates = templates
        self._quantity_pools = {k: keep(v) for k, v in phrasing.QUANTITY_TEMPLATES.items()}
        self._quality_pools = {k: keep(v) for k, v in phrasing.QUALITY_TEMPLATES.items()}

    # ------------------------------------------------------------------ records

    def records_for(self, entry: ManifestEntry, micrograph: Micrograph | None, measurements: Measurements,
                    context: Context | None = None) -> list[dict]:
        """All instruction records of one image.

        ``measurements`` are the image's (``micrograph_context(micrograph).measurements``);
        ``context`` its context, by default written from them
        (``image_context`` with the micrograph's calibration source). A label
        the teacher did not know joins its classes (and, in no-leak mode, the
        words kept out of answers).
        """
        if context is None:
            context = image_context(measurements, calibration_source=getattr(micrograph, "pixel_size_source", None))
        meta_in = entry.meta if isinstance(entry.meta, dict) else {}
        cls = entry.label or meta_in.get("class")
        if cls is not None and cls not in self.names:
            self.names[cls] = label_name(cls)
            self._build_pools()
        img = self._gather(entry, cls, measurements, context)
        truth = _truth(meta_in)
        entry_id = meta_in.get("id") if isinstance(meta_in.get("id"), str) else Path(entry.relpath).with_suffix("").as_posix()
        records: list[dict] = []

        def add(task: str, k: int, family: str, question: str, answer: str, nums: Numbers, grounded: bool = True,
                **extra) -> None:
            meta = {
                "family": family,
                "class": cls,
                "source": "analytic",
                "prompt_version": self.prompt_version,
                "numbers": nums.values,
                "number_source": "context" if nums.values else None,
                "split": entry.split,
                **extra,
            }
            records.append({
                "id": f"{entry_id}-{task}-{k}",
                "image": entry.relpath,
                "task": task,
                "conversations": [user_turn(question, context.text if grounded else None),
                                  {"from": "gpt", "value": answer}],
                "meta": meta,
            })

        rng = img.rng
        if "caption" in self.tasks:
            nums = Numbers()
            add("caption", 0, "caption", rng.choice(CAPTION_PROMPTS), self._caption(img, nums), nums)
        if "vqa" in self.tasks:
            for k, family in enumerate(rng.sample(VQA_FAMILIES, self.per_image)):
                nums = Numbers()
                answer = self._ANSWERS[family](self, img, nums)
                add("vqa", k, family, rng.choice(QUESTIONS[family]), answer, nums)
        if "classify" in self.tasks and cls is not None:
            candidates = list(self.names)
            rng.shuffle(candidates)
            # No context: classification scores one shared prompt for a whole batch of images (see CONTEXT_TASKS).
            add("classify", 0, "classification", classify_prompt(candidates, self.names),
                classify_answer(cls, self.names), Numbers(), grounded=False)
        if "measure" in self.tasks:
            k = 0
            for kind, fact in img.facts.items():
                if kind not in MEASURE_QUESTIONS or not self._quantity_pools.get(kind):
                    continue
                questions = [q for q in MEASURE_QUESTIONS[kind] if img.calibrated or not _NM.search(q)]
                nums = Numbers()
                answer = self._quantity_sentence(img, kind, nums)
                if not img.calibrated and fact.unit == "px":
                    answer = _join(answer, self._template(img, "uncalibrated"))
                extra = {"truth": truth} if truth else {}
                add("measure", k, "measurement", rng.choice(questions), answer, nums, measure_kind=kind, **extra)
                k += 1
        return records

    # ----------------------------------------------------------- gathering

    def _gather(self, entry: ManifestEntry, cls: str | None, m: Measurements, context: Context) -> _Image:
        """Facts (the context's numbers), nouns and qualities of one image."""
        rng = random.Random(f"{self.seed}:{entry.sha256}")
        kb = self._kb.get(cls, {}) if cls is not None else {}
        name = None if (self.no_label_leak or cls is None) else self.names[cls]
        img = _Image(
            rng=rng, cls=cls, name=name, facts_kb={k: v for k, v in kb.items() if v}, facts={},
            nouns=None, calibrated=context.unit == "nm", context=context,
        )
        self._facts_from_context(img, m, context)
        if len(kb.get("nouns", ())) == 2:
            img.nouns = tuple(kb["nouns"])
        self._qualities(img, m)
        return img

    def _facts_from_context(self, img: _Image, m: Measurements, context: Context) -> None:
        """The context's numbers as facts, for the measurement groups that describe the class."""
        unit = context.unit
        numbers = context.numbers
        groups = _CLASS_GROUPS.get(img.cls) if img.cls in _CLASS_GROUPS else None
        for key, (kind, fact_unit) in _CONTEXT_FACTS.items():
            if key not in numbers:
                continue
            group = _GROUP_OF.get(kind)
            if group is not None and groups is not None and group not in groups:
                continue
            fact_unit = unit if fact_unit == "u" else fact_unit
            name = {"%": f"{kind}_pct", "nm": f"{kind}_nm", "px": f"{kind}_px"}.get(fact_unit, kind)
            img.facts[kind] = _Fact(name, numbers[key], fact_unit)
        if img.calibrated:
            img.facts["pixel_size"] = _Fact("pixel_size_nm", numbers["pixel_size"], "nm")
            img.facts["field_width"] = _Fact("field_width_nm", numbers["field_width"], "nm")
        if "particle_count" in img.facts and m.particles is not None:
            img.spread = _spread(m.particles.diameters_px)
        if "fibre_count" in img.facts and m.fibres is not None:
            img.spread = img.spread or _spread(m.fibres.widths_px)
            spread = m.fibres.orientation_spread_deg
            if groups is not None and spread is not None:
                img.alignment = "aligned" if spread < 20 else "random" if spread > 40 else None

    def _qualities(self, img: _Image, m: Measurements) -> None:
        t = m.texture
        if t is None:
            return
        img.qualities.append("fine" if t.glcm_correlation < 0.5 else "smooth" if t.glcm_correlation > 0.85 else "medium")
        if t.std_intensity < 0.08:
            img.qualities.append("low_contrast")
        elif t.std_intensity > 0.25:
            img.qualities.append("high_contrast")
        if t.mean_intensity > 0.75:
            img.brightness = "bright"
        elif t.mean_intensity < 0.15:
            img.brightness = "dark"

    # ----------------------------------------------------------- sentences

    def _template(self, img: _Image, key: str, **fields) -> str:
        """The frame of ``TEMPLATES[key]`` the class picks, filled in; empty when no frame survives the leak filter."""
        pool = self._templates.get(key, ())
        return _pick(pool, img.cls, key).format(**fields) if pool else ""

    def _quality(self, img: _Image, key: str | None, **fields) -> str:
        pool = self._quality_pools.get(key, ()) if key else ()
        return _pick(pool, img.cls, f"quality:{key}").format(**fields) if pool else ""

    def _fact_sentence(self, img: _Image, family: str) -> str:
        pool = img.facts_kb.get(family, ())
        return _pick(pool, img.cls, f"fact:{family}") if pool else ""

    def _generic_sentence(self, img: _Image, key: str) -> str:
        pool = self._generic.get(key, ())
        return _pick(pool, img.cls, f"generic:{key}") if pool else ""

    def _q(self, fact: _Fact, nums: Numbers) -> str:
        """A fact as stated text: number and unit."""
        text = nums.say(fact.name, fact.value)
        return {"": text, "%": f"{text} %"}.get(fact.unit, f"{text} {fact.unit}")

    def _noun(self, img: _Image, kind: str, plural: bool = True) -> str:
        group = next(iter(_CLASS_GROUPS.get(img.cls) or ()), None) or _GROUP_OF.get(kind)
        singular, many = img.nouns or _NEUTRAL_NOUNS.get(group, _DEFAULT_NOUNS)
        return many if plural else singular

    def _quantity_sentence(self, img: _Image, kind: str, nums: Numbers) -> str:
        fact = img.facts[kind]
        pool = self._quantity_pools.get(kind, ())
        if not pool:
            return ""
        plural = not (kind in _COUNT_KINDS and fact.value == 1)
        return _pick(pool, img.cls, f"quantity:{kind}").format(q=self._q(fact, nums), noun=self._noun(img, kind, plural))

    def _main_size(self, img: _Image) -> str | None:
        return next((k for k in _SIZE_KINDS if k in img.facts), None)

    def _scale_sentence(self, img: _Image, nums: Numbers) -> str:
        """Where the structures sit on the length scale, or the field width that sets it."""
        kind = self._main_size(img)
        if img.calibrated and kind is not None and img.facts[kind].unit == "nm":
            size = img.facts[kind].value
            scale = "nanometre" if size < 100 else "sub-micrometre" if size < 1000 else "micrometre"
            return self._template(img, "scale", scale=scale)
        if "field_width" in img.facts:
            return self._template(img, "field", field=self._q(img.facts["field_width"], nums))
        return ""

    def _size_sentences(self, img: _Image, nums: Numbers) -> list[str]:
        kind = self._main_size(img)
        out = [self._quantity_sentence(img, kind, nums)] if kind else []
        out.append(self._quality(img, img.spread))
        if kind and not img.calibrated:
            out.append(self._template(img, "uncalibrated"))
        return out

    def _count_sentence(self, img: _Image, nums: Numbers) -> str:
        kind = next((k for k in _COUNT_KINDS if k in img.facts), None)
        if kind is None:
            return ""
        if img.facts_kb:
            return self._quantity_sentence(img, kind, nums)
        fact = img.facts[kind]
        return self._quality(img, "analysed", q=self._q(fact, nums), noun=self._noun(img, kind, fact.value != 1))

    def _field_sentence(self, img: _Image, nums: Numbers) -> str:
        facts = img.facts
        if "magnification" in facts and "field_width" in facts:
            return self._template(img, "magnification", mag=self._q(facts["magnification"], nums),
                                  field=self._q(facts["field_width"], nums))
        if "field_width" in facts and "pixel_size" in facts:
            return self._template(img, "field_pixel", field=self._q(facts["field_width"], nums),
                                  pixel=self._q(facts["pixel_size"], nums))
        return self._template(img, "uncalibrated") if not img.calibrated else ""

    def _opening(self, img: _Image, key: str) -> str:
        what = img.facts_kb.get("what")
        if what:
            named = f"{key}_named" if img.name and f"{key}_named" in self._templates else key
            return self._template(img, named, name=img.name, what=_pick(what, img.cls, "what"))
        return ""

    # ----------------------------------------------------------- families

    def _caption(self, img: _Image, nums: Numbers) -> str:
        opening = self._opening(img, "caption")
        if not opening:
            opening = self._template(img, "caption_unknown")
            if img.name:
                opening = _join(opening, self._template(img, "labelled", name=img.name))
        middle = self._fact_sentence(img, "morphology") or self._count_sentence(img, nums)
        size = self._size_sentences(img, nums)[0] if self._main_size(img) else self._quality(img, (img.qualities or [None])[0])
        return _join(opening, middle, size, self._field_sentence(img, nums))

    def _material(self, img: _Image, nums: Numbers) -> str:
        opening = self._opening(img, "material")
        if not opening:
            opening = _join(self._template(img, "labelled", name=img.name) if img.name else "",
                self._generic_sentence(img, "unknown_material"),
            )
        return _join(opening, self._scale_sentence(img, nums))

    def _morphology(self, img: _Image, nums: Numbers) -> str:
        return _join(self._fact_sentence(img, "morphology"), self._count_sentence(img, nums),
                          self._quality(img, img.alignment)) or self._texture(img)

    def _size(self, img: _Image, nums: Numbers) -> str:
        sentences = self._size_sentences(img, nums)
        if not any(sentences):
            sentences = [self._generic_sentence(img, "unknown_material")]
        if img.calibrated and "field_width" in img.facts:
            sentences.append(self._template(img, "field", field=self._q(img.facts["field_width"], nums)))
        return _join(*sentences)

    def _texture(self, img: _Image) -> str:
        return _join(*(self._quality(img, q) for q in img.qualities)) or self._generic_sentence(img, "imaging")

    def _surface(self, img: _Image, nums: Numbers) -> str:
        return _join(self._fact_sentence(img, "surface") or self._generic_sentence(img, "surface"), self._texture(img))

    def _composition(self, img: _Image, nums: Numbers) -> str:
        return _join(self._fact_sentence(img, "composition"), self._generic_sentence(img, "composition"))

    def _boundaries(self, img: _Image, nums: Numbers) -> str:
        coverage = self._quantity_sentence(img, "coverage", nums) if "coverage" in img.facts else ""
        return _join(self._fact_sentence(img, "boundaries") or self._generic_sentence(img, "boundaries"), coverage)

    def _context(self, img: _Image, nums: Numbers) -> str:
        return self._fact_sentence(img, "context") or self._generic_sentence(img, "context")

    def _imaging(self, img: _Image, nums: Numbers) -> str:
        beam = self._template(img, "beam", hv=self._q(img.facts["hv_kv"], nums)) if "hv_kv" in img.facts else ""
        return _join(self._generic_sentence(img, "imaging"), self._field_sentence(img, nums), beam,
                     self._quality(img, img.brightness))

    def _function(self, img: _Image, nums: Numbers) -> str:
        return self._fact_sentence(img, "function") or self._generic_sentence(img, "function")

    def _applications(self, img: _Image, nums: Numbers) -> str:
        return self._fact_sentence(img, "applications") or self._generic_sentence(img, "applications")

    _ANSWERS = {
        "material": _material, "morphology": _morphology, "size": _size, "surface": _surface,
        "composition": _composition, "boundaries": _boundaries, "context": _context, "imaging": _imaging,
        "function": _function, "applications": _applications,
    }
    """VQA family → the method that answers it (one per ``QUESTIONS`` family)."""


def _pick(pool: Sequence[str], cls: str | None, key: str) -> str:
    """The sentence of ``pool`` that class ``cls`` uses for ``key``: a fixed rule, so the student can learn it."""
    return pool[zlib.crc32(f"{cls}:{key}".encode()) % len(pool)]


def _truth(meta: dict) -> dict:
    """The ground-truth quantities of a synthetic image that evaluation compares measurements with."""
    q = meta.get("quantities") if isinstance(meta.get("quantities"), dict) else {}
    return {k: q[k] for k in _TRUTH_KEYS if isinstance(q.get(k), (int, float)) and not isinstance(q.get(k), bool)}


def _join(*sentences: str) -> str:
    """The non-empty sentences joined with spaces."""
    return " ".join(s for s in sentences if s)


def _spread(values: Sequence[float] | None) -> str | None:
    """Narrow, moderate or broad, from the coefficient of variation of sizes (None for fewer than three)."""
    if not values or len(values) < 3:
        return None
    mean = sum(values) / len(values)
    if mean <= 0:
        return None
    cv = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) / mean
    return "narrow" if cv < 0.15 else "moderate" if cv < 0.35 else "broad"
