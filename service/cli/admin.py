"""Administration: the database schema, API keys and customers."""

from __future__ import annotations

import click

from service.cli.common import load_for_db


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations (run before starting a new version of the API or workers)."""
    from service.db import make_engine
    from service.migrate import current_revision, upgrade

    engine = make_engine(load_for_db())
    upgrade(engine, revision)
    click.echo(f"database at revision {current_revision(engine)}")
    engine.dispose()


@click.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--customer", "customer_name", required=True, help="Customer name (created if new).")
@click.option("--quota-pages", type=int, default=None, help="Page quota (default: unlimited).")
@click.option("--concurrency", type=int, default=None, help="Running items cap, fleet-wide.")
def keys_create(customer_name: str, quota_pages: int | None, concurrency: int | None) -> None:
    """Create an API key; the key alone is printed on the last line."""
    from service.auth import create_api_key, get_or_create_customer
    from service.db import make_engine, make_session_factory, transaction

    settings = load_for_db()
    engine = make_engine(settings)
    with transaction(make_session_factory(engine)) as session:
        customer = get_or_create_customer(
            session,
            customer_name,
            default_concurrency=settings.default_concurrency,
            quota_pages=quota_pages if quota_pages is not None else settings.default_quota_pages,
            concurrency=concurrency,
        )
        row, key = create_api_key(session, customer)
        click.echo(f"customer {customer.name} ({customer.id}); key id {row.id}", err=True)
    engine.dispose()
    click.echo(key)


@keys.command("revoke")
@click.argument("key_id_or_prefix")
def keys_revoke(key_id_or_prefix: str) -> None:
    """Revoke a key by its id (key_...) or its visible prefix."""
    from sqlalchemy import select

    from service.clock import utcnow
    from service.db import make_engine, make_session_factory, transaction
    from service.models import ApiKey

    engine = make_engine(load_for_db())
    with transaction(make_session_factory(engine)) as session:
        rows = list(
            session.scalars(
                select(ApiKey).where(
                    (ApiKey.id == key_id_or_prefix) | (ApiKey.prefix == key_id_or_prefix),
                    ApiKey.revoked_at.is_(None),
                )
            )
        )
        if len(rows) != 1:
            raise click.ClickException(f"{len(rows)} active keys match {key_id_or_prefix!r}")
        rows[0].revoked_at = utcnow()
        click.echo(f"revoked {rows[0].id}")
    engine.dispose()


@click.group()
def customers() -> None:
    """Customers."""


@customers.command("list")
def customers_list() -> None:
    """Customers with their quota, usage, concurrency and active keys."""
    from sqlalchemy import func, select

    from service.db import make_engine, make_session_factory
    from service.models import ApiKey, Customer

    engine = make_engine(load_for_db())
    with make_session_factory(engine)() as session:
        key_counts = dict(
            session.execute(
                select(ApiKey.customer_id, func.count())
                .where(ApiKey.revoked_at.is_(None))
                .group_by(ApiKey.customer_id)
            ).all()
        )
        click.echo(f"{'id':<36} {'name':<20} {'quota':>10} {'used':>10} {'cap':>4} {'keys':>4}")
        for c in session.scalars(select(Customer).order_by(Customer.created_at)):
            quota = "unlimited" if c.page_quota is None else str(c.page_quota)
            click.echo(
                f"{c.id:<36} {c.name:<20} {quota:>10} {c.pages_used:>10} "
                f"{c.concurrency:>4} {key_counts.get(c.id, 0):>4}"
            )
    engine.dispose()


# --- roles -------------------------------------------------------------------------------------
