"""xencluster modules (a package once installed: saltext.xencluster.modules)."""
