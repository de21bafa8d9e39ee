# The cluster model (nodes, guests, disk pairs) is described in pillar.
base: {}
