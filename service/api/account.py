"""`GET /v1/account`: who the key belongs to and how much of its page quota is left
(pagelane extension; the console's header shows it)."""

from __future__ import annotations

from typing import Literal

from flask import Response
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, Field

from service.api.common import caller, json_response, responses, service
from service.api.errors import not_found
from service.models import Customer

tag = Tag(name="account", description="The calling customer's quota and limits.")


class AccountResource(BaseModel):
    object: Literal["account"] = "account"
    customer_id: str
    page_quota: int | None = Field(description="Pages this customer may use; null = unlimited.")
    pages_used: int = Field(description="Pages billed so far.")
    pages_reserved: int = Field(description="Pages held by running items, settled on success.")
    pages_remaining: int | None = Field(
        description="page_quota - pages_used - pages_reserved (never below 0); null = unlimited."
    )
    concurrency: int = Field(description="Items of this customer that may run at once.")


def make_account_blueprint() -> APIBlueprint:
    bp = APIBlueprint(
        "account", __name__, url_prefix="/v1", abp_tags=[tag], abp_security=[{"ApiKey": []}]
    )

    @bp.get("/account", responses=responses(AccountResource, 401))
    def get_account() -> Response:
        """The calling customer: page quota, pages used and reserved, concurrency."""
        with service().session_factory() as session:
            customer = session.get(Customer, caller().customer_id)
            if customer is None:  # a key outliving its customer: treat like an unknown key
                raise not_found("account")
            return json_response(account_body(customer))

    return bp


def account_body(customer: Customer) -> dict[str, object]:
    remaining = (
        None
        if customer.page_quota is None
        else max(0, customer.page_quota - customer.pages_used - customer.pages_reserved)
    )
    return AccountResource(
        customer_id=customer.id,
        page_quota=customer.page_quota,
        pages_used=customer.pages_used,
        pages_reserved=customer.pages_reserved,
        pages_remaining=remaining,
        concurrency=customer.concurrency,
    ).model_dump()
