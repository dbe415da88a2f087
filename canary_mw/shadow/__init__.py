"""Shadow traffic: copies of real requests sent to a canary, answers compared (docs/shadow.md)."""
