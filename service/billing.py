"""Page quota: reserved before extraction, settled on success, released otherwise.

Reservation is one conditional UPDATE on the customer row, so concurrent workers can never
together reserve past the quota. Settling inserts the billing row keyed by the item (or sync
request) id first (ON CONFLICT DO NOTHING): a replayed finish bills nothing twice.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BindParameter, bindparam, case, update
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from service.models import BillingEntry, Customer


def reserve_pages(session: Session, customer_id: str, pages: int) -> bool:
    result = session.connection().execute(
        update(Customer)
        .where(
            Customer.id == customer_id,
            Customer.page_quota.is_(None)
            | (Customer.pages_used + Customer.pages_reserved + pages <= Customer.page_quota),
        )
        .values(pages_reserved=Customer.pages_reserved + pages)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)


def release_pages(session: Session, customer_id: str, pages: int) -> None:
    if pages <= 0:
        return
    session.connection().execute(
        update(Customer)
        .where(Customer.id == customer_id)
        .values(
            pages_reserved=case(
                (Customer.pages_reserved >= pages, Customer.pages_reserved - pages), else_=0
            )
        )
        .execution_options(synchronize_session=False)
    )


def settle_pages(
    session: Session,
    *,
    billing_id: str,
    customer_id: str,
    batch_id: str | None,
    reserved: int,
    pages: int,
    now: datetime,
) -> bool:
    """Turn a reservation into a billing row; False (and nothing billed) if already billed."""
    # One conditional insert: the primary key decides, even against a concurrent duplicate.
    connection = session.connection()
    inserted = connection.execute(
        _BILL_ONCE[connection.dialect.name],
        {
            "p_id": billing_id,
            "p_customer_id": customer_id,
            "p_batch_id": batch_id,
            "p_pages": pages,
            "p_now": now,
        },
    ).rowcount
    if not inserted:
        release_pages(session, customer_id, reserved)
        return False
    connection.execute(
        _SETTLE, {"p_customer_id": customer_id, "p_pages": pages, "p_reserved": reserved}
    )
    return True


# Every succeeded item settles: built once with bound parameters (building them cost more than
# running them in the worker's profile), per dialect for the conditional insert.
_BILL_ONCE = {
    name: dialect_insert(BillingEntry)
    .values(
        id=bindparam("p_id"),
        customer_id=bindparam("p_customer_id"),
        batch_id=bindparam("p_batch_id"),
        pages=bindparam("p_pages"),
        created_at=bindparam("p_now"),
    )
    .on_conflict_do_nothing(index_elements=["id"])
    for name, dialect_insert in (("postgresql", postgres_insert), ("sqlite", sqlite_insert))
}
_RESERVED: BindParameter[int] = bindparam("p_reserved")
_SETTLE = (
    update(Customer)
    .where(Customer.id == bindparam("p_customer_id"))
    .values(
        pages_used=Customer.pages_used + bindparam("p_pages"),
        pages_reserved=case(
            (Customer.pages_reserved >= _RESERVED, Customer.pages_reserved - _RESERVED), else_=0
        ),
    )
    .execution_options(synchronize_session=False)
)
