"""The one setting for the container image every bittune component runs in."""

# Built from docker/ (see README, "Container images"); point this at your registry's copy.
BITTUNE_IMAGE = "bittune-cpu:0.1.0"
