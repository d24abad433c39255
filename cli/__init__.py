"""The ``tgr-hub`` command line: a thin layer over the :mod:`tgr_hub` library."""
