"""The data-free meta-learning methods tgr-hub compares TGR with, built from tgr-hub's own parts.

- :mod:`tgr_hub.peers.purer`: PURER's learnable pixel memory (Hu et al., CVPR 2023): one tensor of
  images per class, improved by one inversion step per meta-iteration instead of a generator.

Each part is written from the papers and a reading of the public code; where tgr-hub departs from
that code (a defect kept only as an option, a different parametrisation), the part's docstring says
so. The methods are not yet in ``tgr-hub benchmark``.
"""
