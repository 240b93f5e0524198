"""The web edge: Flask plumbing for services (:mod:`shared.web.http`) and ``ozzy web``."""
