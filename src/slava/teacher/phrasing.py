"""Number formatting and class-name screening for teacher answers.

Every number a teacher states goes through :class:`Numbers`, which rounds it
once, remembers the rounded value under a name and returns its text, so the
``meta.numbers`` of a record holds exactly the numbers its answer states.
"""

from __future__ import annotations

import re
from typing import Iterable

from slava.data.numbers import SIGNIFICANT, format_number

__all__ = ["SIGNIFICANT", "Numbers", "banned_stems", "format_number", "leaks", "stem"]

_WORD = re.compile(r"[A-Za-z]+")
# Longest first: a word loses at most one of these, keeping three letters.
_SUFFIXES = ("ically", "ical", "ings", "ing", "ies", "es", "ed", "s", "e", "y")
_PREFIXES = ("nano", "micro")
_STOPWORDS = frozenset({"and", "or", "of", "the", "a", "an", "with", "in", "on"})
# Spellings and derived forms of class-name words that stemming alone misses.
_SYNONYMS = {
    "fibr": ("fiber", "fibrous"),
    "porou": ("porosity",),
    "spong": ("spongy",),
    "particl": ("particulate",),
    "mem": ("mems",),
}


class Numbers:
    """The numbers stated in one answer, by name, rounded as stated."""

    def __init__(self) -> None:
        self.values: dict[str, float | int] = {}

    def say(self, name: str, value: float | int) -> str:
        """Record ``value`` under ``name`` and return its text."""
        text = format_number(value)
        self.values[name] = int(text) if re.fullmatch(r"-?\d+", text) else float(text)
        return text


def stem(word: str) -> str:
    """A crude stem: lower case, one inflectional suffix removed (surfaces/surface -> surfac)."""
    word = word.lower()
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def banned_stems(names: Iterable[str]) -> frozenset[str]:
    """Stems of every content word of the class names, their nano-/micro- stems and known variants."""
    stems: set[str] = set()
    for name in names:
        for word in _WORD.findall(name.replace("_", " ")):
            if word.lower() in _STOPWORDS:
                continue
            stems.add(stem(word))
            for prefix in _PREFIXES:
                if word.lower().startswith(prefix) and len(word) - len(prefix) >= 3:
                    stems.add(stem(word[len(prefix):]))
    for base, variants in _SYNONYMS.items():
        if base in stems:
            stems.update(stem(v) for v in variants)
    return frozenset(stems)


def leaks(text: str, banned: frozenset[str]) -> bool:
    """Whether ``text`` holds a word whose stem is banned, alone or ending a compound (nanoparticles)."""
    for word in _WORD.findall(text):
        s = stem(word)
        if s in banned:
            return True
        if any(len(b) >= 4 and s.endswith(b) for b in banned):
            return True
    return False


# ----------------------------------------------------------------------------
# What an expert knows about each synthetic class. ``what`` entries are noun
# phrases ("a loose powder of ..."); the rest are whole sentences. No digits:
# every number in an answer comes from ``Numbers``. Sentences that name a
# class are dropped in no-label-leak mode, so each list also holds wordings
# that name none.
# ----------------------------------------------------------------------------

CLASS_FACTS: dict[str, dict[str, tuple[str, ...]]] = {
    "particles": {
        "nouns": ("particle", "particles"),
        "what": (
            "discrete, roughly spherical nanoparticles dispersed on a flat substrate",
            "isolated and partly agglomerated nanoscale spheres resting on a smooth support",
        ),
        "morphology": (
            "The objects are compact and near-equiaxed with rounded outlines; a few touch and form small agglomerates.",
            "Roughly spherical bodies with smooth, convex outlines, mostly separated from each other.",
        ),
        "surface": (
            "Each sphere shows a bright rim and a darker centre, the SE edge effect of a convex body, while the support between them is smooth.",
            "The spheres look smooth at this magnification and the background is flat and featureless.",
        ),
        "boundaries": (
            "Where spheres touch, necks or contact points form; elsewhere they are separated by bare substrate.",
            "Outlines are sharp against the darker support, and touching neighbours show a narrow dark groove between them.",
        ),
        "context": (
            "They are dispersed on a flat, darker substrate such as a silicon wafer or carbon tape, as after drop-casting a colloid.",
            "The flat background is most likely the support onto which a dispersion was dried.",
        ),
        "function": (
            "Small spheres offer a high surface-to-volume ratio, which matters for catalysis, sensing and optical (plasmonic) response.",
            "Such dispersed nanospheres usually serve as catalysts, fillers, markers or building blocks of thin assemblies.",
        ),
        "applications": (
            "Typical applications are catalysis, biosensing and drug delivery, conductive inks, and plasmonic or quantum-dot optics.",
            "They are used as catalysts, contrast agents, conductive inks and optical labels.",
        ),
        "composition": (
            "The spheres could be metal, oxide or polymer; their bright rims come from their shape, not from a particular element.",
        ),
    },
    "powders": {
        "nouns": ("grain", "grains"),
        "what": (
            "a loose powder of irregular, micrometre-scale grains",
            "irregular, angular and rounded grains piled loosely on a support",
        ),
        "morphology": (
            "Irregular, faceted to rounded grains with a broad range of sizes, many clustered into agglomerates.",
            "The grains are polydisperse and irregular, with smaller fragments sitting on and between larger ones.",
        ),
        "surface": (
            "Grain faces show facets, steps and adhering fines; their bright edges come from the SE edge effect.",
            "The grains look rough, with fracture faces and small satellites stuck to them.",
        ),
        "boundaries": (
            "Grains touch at points or are bonded into loose agglomerates, and deep shadows mark the gaps between them.",
        ),
        "context": (
            "The grains were probably dispersed on conductive carbon tape; the dark areas are gaps down to that support.",
        ),
        "function": (
            "Grain size and shape control flowability, packing density and reactivity, which is why such images are used in quality control.",
        ),
        "applications": (
            "Such powders feed additive manufacturing, powder metallurgy, ceramics processing, battery electrodes and pharmaceutical formulation.",
            "Material like this is used for sintering, thermal spraying, pigments and pharmaceutical tablets.",
        ),
        "composition": (
            "Whether the grains are metal, ceramic or organic cannot be told from SE contrast, which here reflects shape and edges.",
        ),
    },
    "biological": {
        "nouns": ("cell", "cells"),
        "what": (
            "cells or microorganisms prepared by fixation, drying and conductive sputtering",
            "soft, rounded cell-like bodies on a flat support",
        ),
        "morphology": (
            "Rounded to rod-shaped bodies with smooth, gently curved outlines; some look shrunken or wrinkled from drying.",
            "Soft, rounded bodies without crystal facets, clustered in places.",
        ),
        "surface": (
            "The cell walls look smooth to finely wrinkled; wrinkles and collapse are common drying artefacts.",
            "Fine folds and small protrusions decorate the outer walls of the bodies.",
        ),
        "boundaries": (
            "Bodies touch or cluster with soft, rounded contacts, without the sharp facets or grain boundaries of inorganic crystals.",
        ),
        "context": (
            "They rest on a flat support such as a membrane filter, glass slide or wafer; extracellular material may bridge neighbouring cells.",
        ),
        "function": (
            "The shapes reflect living function: rounded cells, rods and filaments that attach to, spread on or colonise a support.",
        ),
        "applications": (
            "Such images support microbiology, biofilm and tissue-engineering studies, cell adhesion tests and the evaluation of antimicrobial materials.",
        ),
        "composition": (
            "The bodies are most likely organic (carbon, oxygen, nitrogen) under a thin metal layer from preparation, but SE contrast cannot confirm this.",
        ),
    },
    "fibres": {
        "nouns": ("fibre", "fibres"),
        "what": (
            "a non-woven mat of long, randomly crossing fibres, as made by electrospinning",
            "long cylindrical strands crossing each other in a loose network",
        ),
        "morphology": (
            "Long, smooth, cylindrical strands of fairly uniform width that cross and overlap at many points.",
            "The strands are continuous and gently curved, forming an open, layered network.",
        ),
        "surface": (
            "The strands look smooth along their length, with bright edges outlining each cylinder because of the SE edge effect.",
            "Beads or roughness along a strand would indicate unstable spinning; here the strands look mostly uniform.",
        ),
        "boundaries": (
            "Strands cross at junctions where the upper one rests on the lower one; fused junctions would indicate solvent welding.",
            "Dark gaps between strands are open voids reaching deeper layers of the mat.",
        ),
        "context": (
            "The mat lies on a collector or substrate; deeper layers look darker because fewer secondary electrons escape from them.",
        ),
        "function": (
            "The interconnected open network gives a high specific area and small, tortuous voids, useful for filtering and for supporting cells or catalysts.",
        ),
        "applications": (
            "Applications include air and liquid filtration, tissue-engineering scaffolds, wound dressings, battery separators and sensors.",
        ),
        "composition": (
            "The strands are probably polymer or carbon, but SE contrast shows shape, not chemistry.",
        ),
    },
    "nanowires": {
        "nouns": ("nanowire", "nanowires"),
        "what": (
            "straight, high-aspect-ratio nanowires lying on or grown from a substrate",
            "thin, straight one-dimensional crystals with a high aspect ratio",
        ),
        "morphology": (
            "Thin, straight rods with a high aspect ratio and near-constant width, some crossing or bundling.",
            "Straight, rigid rods, typical of crystalline one-dimensional growth.",
        ),
        "surface": (
            "The rods look smooth with sharp, parallel edges; the bright rims along them are SE edge contrast.",
        ),
        "boundaries": (
            "Rods cross or touch at single contact points, and their ends look brighter because of the edge effect.",
        ),
        "context": (
            "They lie on a flat substrate, either grown there (for example by vapour-liquid-solid growth) or dispersed from solution.",
        ),
        "function": (
            "One-dimensional crystals guide electrons, photons and phonons along their axis and offer a large area for sensing.",
        ),
        "applications": (
            "Uses include field-effect transistors, gas and bio sensors, photodetectors, transparent conductive networks and battery anodes.",
        ),
        "composition": (
            "They could be semiconductor (Si, ZnO, GaN) or metal (Ag, Cu); only EDS or diffraction can tell, not SE contrast.",
        ),
    },
    "porous_sponges": {
        "nouns": ("pore", "pores"),
        "what": (
            "a porous, sponge-like network of interconnected ligaments and open pores",
            "a bicontinuous open-cell structure of thin ligaments around dark pores",
        ),
        "morphology": (
            "A bicontinuous network: bright ligaments and ridges enclose dark, interconnected pores of irregular shape.",
            "The solid forms a continuous skeleton of thin ligaments with open, connected pores.",
        ),
        "surface": (
            "Ligament tops are bright and their walls curve down into dark pore openings, the classic SE look of an open-cell network.",
        ),
        "boundaries": (
            "There are no separate grains: solid and pore space interpenetrate, and the pore walls are the only interfaces.",
        ),
        "context": (
            "Such structures form by dealloying, foaming, freeze-drying or template removal; the image shows the top of a much deeper network.",
        ),
        "function": (
            "The open network combines a high specific area with pathways for fluids and ions.",
        ),
        "applications": (
            "Applications include catalysis, electrochemical energy storage, filtration, sensing and lightweight insulation.",
        ),
        "composition": (
            "The skeleton could be a metal (such as dealloyed gold), carbon or an oxide; SE contrast does not identify it.",
        ),
    },
    "patterned_surfaces": {
        "nouns": ("feature", "features"),
        "what": (
            "a lithographically patterned surface with a regular array of features",
            "a periodic array of lines or dots made by lithography and etching",
        ),
        "morphology": (
            "Features repeat with a regular period and identical shape, as defined by a lithographic mask or template.",
            "A periodic arrangement of identical, lithographically defined features.",
        ),
        "surface": (
            "Feature tops and the floor between them are flat, and bright edges mark the sidewalls (SE edge effect).",
        ),
        "boundaries": (
            "Sharp, straight sidewalls separate raised features from the etched floor; edge roughness would show as wavy outlines.",
        ),
        "context": (
            "The array sits on a wafer-like substrate, typical of microfabrication and semiconductor process control.",
        ),
        "function": (
            "Periodic features control light, wetting or current paths, or serve as test structures for a lithography process.",
        ),
        "applications": (
            "Applications include integrated circuits, photonic crystals and gratings, nanoimprint templates, metasurfaces and critical-dimension metrology.",
            "Uses include integrated circuits, optical gratings, nanoimprint templates and critical-dimension metrology.",
        ),
        "composition": (
            "The features could be resist, silicon, oxide or metal; different materials can look alike in SE mode.",
        ),
    },
    "tips": {
        "nouns": ("tip", "tips"),
        "what": (
            "a sharp tip tapering to a fine apex, such as a probe for scanning probe microscopy or a field emitter",
            "a conical probe that narrows to a sharp apex",
        ),
        "morphology": (
            "A cone or pyramid whose flanks converge to a sharp, rounded apex.",
        ),
        "surface": (
            "The flanks look smooth; the apex and edges are brightest because secondary electrons escape easily from sharp points.",
        ),
        "boundaries": (
            "The only interface is the outline of the probe against the dark background; a blunted or contaminated apex would look rounded or bulbous.",
        ),
        "context": (
            "The probe points into empty space; it is usually mounted on a cantilever or shank at the edge of or outside the field.",
        ),
        "function": (
            "A sharp apex concentrates force, current or electric field at one point, which sets the resolution of probe microscopy or the emission of a field emitter.",
        ),
        "applications": (
            "Uses include atomic force and scanning tunnelling microscopy probes, field-emission sources, nanoindentation and microelectrodes for electrophysiology.",
        ),
        "composition": (
            "Such probes are commonly silicon, silicon nitride, tungsten or platinum-iridium; SE contrast cannot tell which.",
        ),
    },
    "films_coated_surfaces": {
        "nouns": ("grain", "grains"),
        "what": (
            "a thin film or coating covering a substrate, with a fine grain structure",
            "a continuous deposited layer with a fine, granular texture",
        ),
        "morphology": (
            "A continuous layer made of fine, closely packed grains or nodules, without separated objects.",
        ),
        "surface": (
            "The top shows fine granular or nodular roughness; cracks or pinholes would appear as dark lines or dots.",
        ),
        "boundaries": (
            "Grain boundaries appear as faint dark lines between nodules, and the layer covers the substrate without visible gaps.",
        ),
        "context": (
            "The layer was deposited on a substrate such as a wafer, glass or metal by sputtering, evaporation, chemical vapour deposition or electroplating.",
        ),
        "function": (
            "The layer protects, passivates or functionalises the material beneath, or adds electrical or optical properties.",
        ),
        "applications": (
            "Applications include corrosion and wear protection, optical and anti-reflection layers, thin-film electronics, solar cells and diffusion barriers.",
            "Layers like this protect against corrosion and wear, act as optical or barrier layers, or carry current in thin electronic layers.",
        ),
        "composition": (
            "The layer's composition cannot be read from SE contrast; EDS (minding the signal from beneath), XPS or BSE would be needed.",
        ),
    },
    "mems_devices_electrodes": {
        "nouns": ("structure", "structures"),
        "what": (
            "a microfabricated MEMS device with electrodes and released structures",
            "microfabricated beams, comb fingers and metal pads on a chip",
        ),
        "morphology": (
            "Rectilinear, lithographically defined shapes (beams, fingers, pads and trenches) with straight edges and right angles.",
        ),
        "surface": (
            "Flat tops with bright outlines from the SE edge effect; metal pads may look smoother or brighter than etched silicon.",
        ),
        "boundaries": (
            "Sharp edges separate raised structures from etched trenches, and the gaps between fingers set their capacitance or isolation.",
        ),
        "context": (
            "The structures are part of a chip, made by deposition, lithography and etching on a silicon wafer.",
        ),
        "function": (
            "Such structures sense or actuate motion (accelerometers, gyroscopes, resonators) or carry current as contacts.",
        ),
        "applications": (
            "Applications include inertial sensors, microphones, RF switches and resonators, micro-heaters and electrochemical sensing.",
        ),
        "composition": (
            "Silicon, oxide, nitride and metal layers are likely, but SE contrast cannot separate them reliably.",
        ),
    },
}
"""Expert knowledge per synthetic class id: short, number-free sentences by answer family."""

GENERIC: dict[str, tuple[str, ...]] = {
    "composition": (
        "Secondary-electron contrast mostly reflects topography and edges, not chemistry, so composition cannot be read from this image; EDS or backscattered-electron (BSE) imaging would be needed.",
        "Composition cannot be inferred from SE brightness alone: an EDS spectrum or map, or BSE imaging where heavier elements look brighter, is needed.",
        "The grey levels here follow topography, edge effects and possibly charging rather than chemistry; identifying elements or phases needs EDS or BSE.",
    ),
    "imaging": (
        "This looks like a scanning electron microscope (SEM) image in secondary-electron (SE) mode: edges and slopes look bright because more secondary electrons escape there.",
        "The shading follows topography, as in SE imaging with an Everhart-Thornley or in-lens detector, with bright edges from the edge effect.",
        "It appears to be a secondary-electron SEM image, where contrast comes mainly from topography and edges.",
    ),
    "context": (
        "A single micrograph shows only the imaged field, so the wider sample and its environment cannot be judged from it.",
        "Only the imaged field is visible; the support and surroundings of the sample are not shown.",
    ),
    "boundaries": (
        "Interfaces show up as changes in brightness and bright edges; since SE contrast follows topography, a flat interface between two materials may be barely visible.",
        "Boundaries are seen only where topography changes; a flat boundary between two materials needs BSE or EDS mapping to show.",
    ),
    "surface": (
        "Relief shows as shading in an SE image: raised edges and slopes look bright, hollows dark.",
        "Fine relief is visible as bright edges and darker hollows, the usual topographic contrast of SE imaging.",
    ),
    "function": (
        "The function cannot be determined from the image alone; it depends on the material and processing, which a micrograph does not reveal.",
    ),
    "applications": (
        "Applications cannot be inferred from the image alone; they depend on the material and how it was made.",
    ),
    "unknown_material": (
        "The material cannot be identified with certainty from a single SE image.",
        "A single secondary-electron image does not identify the material by itself.",
    ),
}
"""Class-independent, number-free sentences: used for unknown classes and added where they inform."""

TEMPLATES: dict[str, tuple[str, ...]] = {
    "material_named": (
        "This looks like {name}: {what}.",
        "The image shows {name}, {what}.",
        "A sample of the class {name}: {what}.",
    ),
    "material": (
        "The image shows {what}.",
        "This looks like {what}.",
        "The micrograph shows {what}.",
    ),
    "labelled": (
        "The image is labelled {name}.",
        "The sample belongs to the class {name}.",
    ),
    "caption_named": (
        "SEM micrograph, class {name}: {what}.",
        "Secondary-electron image of the class {name}, showing {what}.",
    ),
    "caption": (
        "SEM micrograph of {what}.",
        "Secondary-electron image showing {what}.",
    ),
    "caption_unknown": (
        "Scanning electron micrograph of an unidentified sample.",
        "SEM image of a sample of unknown type.",
    ),
    "scale": (
        "The features are at the {scale} scale.",
        "The structures are {scale}-scale.",
    ),
    "field": (
        "The field of view is {field} wide.",
        "The image spans {field} across.",
    ),
    "field_pixel": (
        "The field of view is {field} wide, at {pixel} per pixel.",
        "The image spans {field} at a pixel size of {pixel}.",
    ),
    "magnification": (
        "It was recorded at {mag}x magnification, giving a field of view {field} wide.",
        "At {mag}x magnification the field of view is {field} wide.",
    ),
    "beam": (
        "The data bar gives a beam energy of {hv}.",
        "The beam energy was {hv}.",
    ),
    "uncalibrated": (
        "No pixel size or scale bar is known, so sizes are given in pixels.",
        "Without a calibration the sizes can only be given in pixels.",
    ),
}
"""Sentence frames filled by the analytic teacher; ``{...}`` fields are filled, never numbers typed here."""

QUANTITY_TEMPLATES: dict[str, tuple[str, ...]] = {
    "particle_count": ("I count {q} {noun}.", "The image contains {q} {noun}.", "{q} {noun} in total."),
    "mean_diameter": (
        "The mean diameter is {q}.",
        "On average the {noun} measure {q} across.",
        "Their mean diameter is {q}.",
    ),
    "coverage": ("The {noun} cover {q} of the image area.", "The area coverage is {q}."),
    "fibre_count": ("I count {q} {noun}.", "The image contains {q} {noun}.", "{q} {noun} in total."),
    "mean_width": ("The mean width is {q}.", "On average the {noun} are {q} wide."),
    "orientation": (
        "The dominant orientation is {q} from the horizontal image axis.",
        "Most {noun} run at about {q} to the horizontal.",
    ),
    "pore_fraction": ("Pores take up {q} of the image area.", "The pore area fraction is {q}."),
    "mean_pore_size": ("The mean pore size is {q}.", "Pores are {q} across on average."),
    "pitch": ("The pitch is {q}.", "The features repeat every {q}."),
    "feature_size": ("The features are {q} wide.", "The feature size is {q}."),
    "apex_radius": ("The apex radius is {q}.", "The apex is rounded with a radius of about {q}."),
    "grain_size": ("The mean grain size is {q}.", "The {noun} are {q} across on average."),
    "mean_length": ("The mean length is {q}.", "On average the {noun} are {q} long."),
    "ligament_width": ("The ligaments are {q} wide on average.", "The mean ligament width is {q}."),
    "gap": ("The gaps between the {noun} are {q} wide.", "The gap width is {q}."),
    "cone_angle": ("The cone half-angle is {q}.", "The flanks meet at a half-angle of {q}."),
    "pixel_size": ("The pixel size is {q}.", "Each pixel corresponds to {q}."),
    "field_width": ("The field of view is {q} wide.", "The image spans {q} across."),
}
"""One-sentence answers stating one quantity ``{q}`` (number and unit) by measure kind."""

QUALITY_TEMPLATES: dict[str, tuple[str, ...]] = {
    "narrow": ("The size distribution is narrow, nearly monodisperse.", "Sizes are quite uniform."),
    "moderate": ("Sizes vary moderately.", "The size distribution is moderately broad."),
    "broad": ("The size distribution is broad (polydisperse).", "Sizes vary widely."),
    "fine": (
        "The texture is fine-grained at the pixel scale, which may include detector noise.",
        "Grey levels change quickly from pixel to pixel, giving a fine, busy texture.",
    ),
    "medium": ("The texture shows moderate detail with distinct edges.",),
    "smooth": (
        "Grey levels vary smoothly, with broad features and little fine texture.",
        "The shading is smooth, with few fine details.",
    ),
    "low_contrast": ("The image has low contrast overall.",),
    "high_contrast": ("The image has high contrast, with strong bright edges.",),
    "bright": (
        "It is very bright overall, which can indicate charging of a poorly conducting sample or a high detector gain.",
    ),
    "dark": ("It is rather dark overall, so faint details may be lost.",),
    "aligned": ("The strands are largely aligned.", "Most strands run in one direction."),
    "random": ("The strands are randomly oriented.", "The strands show no preferred direction."),
    "analysed": (
        "Image analysis separates {q} {noun}.",
        "Segmentation finds {q} {noun}.",
    ),
}
"""Qualitative sentences chosen from measured statistics (no numbers, except ``analysed``)."""
