"""The route of the API Integration Guide, the developer documentation of each environment."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from services.rules.api import Context
from services.rules.guide import render_integration_guide
from services.rules.settings import INTEGRATION_GUIDE_PATH

router = APIRouter()

#: The guide loads nothing from elsewhere and runs no script; say so to the browser.
GUIDE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'",
    "Cache-Control": "public, max-age=300",
}


@router.get(
    INTEGRATION_GUIDE_PATH,
    response_class=HTMLResponse,
    tags=["docs"],
    responses={200: {"content": {"text/html": {}}, "description": "The guide as an HTML page."}},
)
async def integration_guide(
    ctx: Context,
    environment: Annotated[
        Literal["staging", "production"],
        Query(description="The environment whose URLs the guide shows.", examples=["staging"]),
    ],
) -> HTMLResponse:
    """The API Integration Guide for third-party developers: tokens, triggers, response codes,
    callbacks and their signatures, with this deployment's URLs."""
    page = render_integration_guide(ctx.settings, environment)
    return HTMLResponse(page, headers=GUIDE_HEADERS)
