"""Operator tools: the ``canary-mw`` command line."""
