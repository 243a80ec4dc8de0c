"""Which reference client a connection is: the reference fingerprints, ``mirror identify`` and
``mirror captures diff``.

- :mod:`~mirror.identify.references`: load and validate the reference fingerprints
  (the repository's ``fingerprints/``, shipped in the wheel as ``mirror/references_data/``);
- :mod:`~mirror.identify.reference_view`: a reference as a fingerprint view, in the variant
  matching the connection it is compared with;
- :mod:`~mirror.identify.matching`: the exact match(es) and the nearest references;
- :mod:`~mirror.identify.inputs`: what the commands read (references, capture records);
- :mod:`~mirror.identify.tables`: the field-by-field tables both commands print;
- :mod:`~mirror.identify.command` (``mirror identify``) and
  :mod:`~mirror.identify.diff_command` (``mirror captures diff``).

May import ``store``, ``pcapfile``, ``fingerprint``, ``wire`` and ``terminal``; nothing below
it imports this package (``cli`` registers its commands).
"""
