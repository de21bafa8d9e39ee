# States for the xencluster dom0s. The dom0 formula (issue 4) is mapped here.
base: {}
