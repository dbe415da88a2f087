"""Forwarding canary traffic through httpx: header hygiene, clients, error replies."""
