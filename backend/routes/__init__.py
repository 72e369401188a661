"""One module per resource. Every module here that defines `router` (a fastapi.APIRouter), or
`make_router()` returning one (for a router made per app, e.g. from the job registry), is mounted under
/api/v1 by backend.app.create_app; adding a resource means adding a module, nothing else."""

from __future__ import annotations

import importlib
import pkgutil

from fastapi import APIRouter


def discover() -> list[APIRouter]:
    routers = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        make = getattr(module, "make_router", None)
        router = make() if make is not None else getattr(module, "router", None)
        if isinstance(router, APIRouter):
            routers.append(router)
    return routers
