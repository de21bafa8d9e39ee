"""xencluster runners (a package once installed: saltext.xencluster.runners)."""
