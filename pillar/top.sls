# The cluster model goes to the dom0s only (salt/top.sls applies the dom0 formula to every
# minion that has it). The lab's dom0s are node1..node9 (python -m lab up N); a real cluster
# maps its own file, e.g. pillar/xencluster/example-3node.sls, to its own dom0 minion ids.
base:
  'node[1-9]':
    - xencluster.lab
