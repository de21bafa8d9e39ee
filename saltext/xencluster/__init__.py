"""saltext-xencluster: run a cluster of Xen dom0s with Salt."""

__version__ = "0.1.0"
