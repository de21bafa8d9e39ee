"""xencluster lab: a real Xen cluster inside QEMU (python -m lab)."""
