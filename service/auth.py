"""API keys: 32 random bytes shown once, stored as a sha256 hash with a short visible prefix."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from service.clock import utcnow
from service.ids import new_id
from service.models import ApiKey, Customer

KEY_PREFIX = "pl_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the customer and the key used (rate limits are per key)."""

    customer_id: str
    key_id: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_api_key(session: Session, customer: Customer) -> tuple[ApiKey, str]:
    """Returns the stored row and the clear key, which exists nowhere else after this."""
    key = generate_key()
    row = ApiKey(
        id=new_id("key"),
        customer_id=customer.id,
        prefix=key[:10],
        key_hash=hash_key(key),
        created_at=utcnow(),
    )
    session.add(row)
    return row, key


def get_or_create_customer(
    session: Session,
    name: str,
    *,
    default_concurrency: int,
    default_quota_pages: int | None = None,
    quota_pages: int | None = None,
    concurrency: int | None = None,
) -> Customer:
    """The customer named ``name``, created with the defaults if new.

    Only explicit values change an existing customer: ``quota_pages=None`` keeps its quota
    (the default applies to new customers only), ``concurrency=None`` keeps its cap.
    """
    customer = session.scalar(select(Customer).where(Customer.name == name))
    if customer is None:
        customer = Customer(
            id=new_id("cus"),
            name=name,
            page_quota=quota_pages if quota_pages is not None else default_quota_pages,
            pages_used=0,
            pages_reserved=0,
            concurrency=concurrency or default_concurrency,
            created_at=utcnow(),
        )
        session.add(customer)
    else:
        if quota_pages is not None:
            customer.page_quota = quota_pages
        if concurrency is not None:
            customer.concurrency = concurrency
    session.flush()
    return customer


# Every API request runs this: built once, bound per call (building it cost more than running it).
_LIVE_KEY = select(ApiKey.id, ApiKey.customer_id).where(
    ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None)
)


def authenticate(db: Session | Connection, key: str) -> Principal | None:
    if not key:
        return None
    row = db.execute(_LIVE_KEY, {"key_hash": hash_key(key)}).first()
    return Principal(customer_id=row.customer_id, key_id=row.id) if row else None
