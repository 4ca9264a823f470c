"""The supernet training recipes nasbert ships (``*.yaml``), installed as
``nasbert.recipes``.

A package (not a bare folder) because setuptools' editable finder maps a top-level
folder to a subpackage only when it has an ``__init__.py``; see ``setup.cfg`` and
:mod:`nasbert.resources`."""
