"""The OpenAI-compatible HTTP server and the web page around one ``Assistant``."""

from slava.serve.app import create_app

__all__ = ["create_app"]
