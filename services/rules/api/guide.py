"""The route of the API Integration Guide, the developer documentation of each environment."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from infra.problem_types import BY_SLUG, PROBLEM_TYPES_PATH
from services.rules.api import Context
from services.rules.guide import render_integration_guide, render_problem_types
from services.rules.records import NotFound
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


_HTML_PAGE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/html": {}}, "description": "An HTML page."}
}


@router.get(PROBLEM_TYPES_PATH, response_class=HTMLResponse, tags=["docs"], responses=_HTML_PAGE)
async def problem_types(ctx: Context) -> HTMLResponse:
    """Every problem type the platform's services answer with, each linked to its page."""
    return HTMLResponse(render_problem_types(ctx.settings), headers=GUIDE_HEADERS)


@router.get(
    PROBLEM_TYPES_PATH + "/{slug}",
    response_class=HTMLResponse,
    tags=["docs"],
    responses=_HTML_PAGE,
)
async def problem_type(ctx: Context, slug: str) -> HTMLResponse:
    """The page an error's ``type`` names: what the problem means and what to do about it."""
    kind = BY_SLUG.get(slug)
    if kind is None:
        raise NotFound(f"no problem type {slug!r}; {PROBLEM_TYPES_PATH} lists them all")
    return HTMLResponse(render_problem_types(ctx.settings, kind), headers=GUIDE_HEADERS)
