"""The A1111 endpoints beyond generation and progress (api/a1111/router.py), in one router for the app."""

from fastapi import APIRouter

from diffserve.api.a1111 import extras, lists, options

router = APIRouter()
for part in (options.router, lists.router, extras.router):
    router.include_router(part)
