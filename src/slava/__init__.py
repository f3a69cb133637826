"""sLAVA: a small-scale language-and-vision assistant for electron micrographs."""

__version__ = "0.1.0"
