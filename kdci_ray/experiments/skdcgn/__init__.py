"""The SKDCGN kind (``kind: skdcgn``): its schema is ``kdci_ray.cgn.config``'s, its trial the
whole ``kdci_ray.cgn.pipeline`` (``kind.SKDCGN``), its result row one ``metrics.json`` per trial
(``row``, light: the results tables read it without torch)."""
