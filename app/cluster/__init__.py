"""Encoding a shared corpus on a Ray cluster into a memory pack (`dolphin-desk cluster-index`).

Optional: it needs the `cluster` extra (Ray). The desktop app never imports this package; an
import-linter contract in pyproject.toml keeps it so, and the packaged app excludes it.
"""


class ClusterError(Exception):
    """The job cannot run as asked (no Ray, a bad source, too many workers); one line."""
