"""xencluster states (a package once installed: saltext.xencluster.states)."""
