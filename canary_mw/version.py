"""The package version, in a module of its own: ``canary_mw`` re-exports it, and the parts
that state it (the admin API's OpenAPI document) read it without importing the package root,
which imports them."""

__version__ = "0.1.0"
