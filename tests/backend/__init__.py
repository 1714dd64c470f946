"""A test-only KFP v2 runner that follows the open-source backend (see runner.py)."""
