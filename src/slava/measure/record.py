"""The Measurements record: what classical image analysis found in one micrograph.

Lengths are stored in pixels and, where the pixel size is known, also in nm;
``unit`` says which one a reader should quote ("nm" or "px").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ParticleStats:
    """Separated blobs (particles, powder grains, cells)."""

    count: int
    diameters_px: list[float]
    diameters_nm: list[float] | None
    mean_diameter: float | None
    median_diameter: float | None
    std_diameter: float | None
    coverage: float
    border_count: int = 0
    """Particles cut by the image edge: left out of ``count`` and the sizes."""


@dataclass
class FibreStats:
    """Elongated ridges (fibres, wires, tubes)."""

    count: int
    widths_px: list[float]
    widths_nm: list[float] | None
    mean_width: float | None
    orientation_deg: float | None
    orientation_spread_deg: float | None
    total_length: float | None
    segment_count: int = 0
    """Skeleton segments between junctions before straight-through ones were joined."""


@dataclass
class PoreStats:
    """Dark openings in a bright matrix (sponges, porous films)."""

    pore_fraction: float
    count: int
    mean_pore_size: float | None
    median_pore_size: float | None
    pore_sizes_px: list[float] = field(default_factory=list)
    pore_sizes_nm: list[float] | None = None
    mean_ligament_width: float | None = None
    """Mean width of the bright matrix between pores (struts, ligaments)."""


@dataclass
class PeriodicityStats:
    """The repeat distance of a periodic pattern, from the image autocorrelation."""

    pitch: float | None
    pitch_px: float | None
    strength: float
    """Autocorrelation at the pitch (0..1); below ~0.2 the field is not periodic."""


@dataclass
class TextureStats:
    """Grey-level statistics, GLCM properties and LBP entropy."""

    mean_intensity: float
    std_intensity: float
    glcm_contrast: float
    glcm_homogeneity: float
    glcm_energy: float
    glcm_correlation: float
    lbp_entropy: float


@dataclass
class Measurements:
    """Everything measured in one micrograph (data bar already cropped)."""

    width_px: int
    height_px: int
    pixel_size_nm: float | None
    unit: str
    particles: ParticleStats | None = None
    fibres: FibreStats | None = None
    pores: PoreStats | None = None
    texture: TextureStats | None = None
    periodicity: PeriodicityStats | None = None
    notes: list[str] = field(default_factory=list)
    instrument: dict | None = None
    """The data bar's fields (``slava.io.Instrument.to_dict``) when they were read, else None."""

    @property
    def field_width(self) -> float | None:
        """Width of the imaged field in nm, or None without a pixel size."""
        return None if self.pixel_size_nm is None else self.width_px * self.pixel_size_nm

    def to_dict(self) -> dict:
        """Plain nested dict for JSON."""
        return asdict(self)
