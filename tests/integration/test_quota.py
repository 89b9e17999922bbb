"""Page quota with real workers: reserve, settle, and payment_required for the rest."""

from __future__ import annotations

from sqlalchemy import select

from service.models import BillingEntry, Customer
from tests.support.live import Stack, corpus_bytes


def test_quota_runs_out_mid_batch(stack: Stack) -> None:
    stack.worker(concurrency=1)
    stack.beat()
    # 5 pages of quota; documents of 1 + 4 + 4 + 1 pages, processed in order (cap 1).
    tenant = stack.tenant("metered", quota=5, concurrency=1)
    one = corpus_bytes("digital-crazyones-1p.pdf")
    four = corpus_bytes("digital-lorem-pdflatex-4p.pdf")
    batch = tenant.submit(stack.upload_many(tenant, [one, four, four, one])).get_json()
    final = stack.wait_terminal(tenant, batch["id"])
    items = stack.items(batch["id"])
    assert [i.status for i in items] == ["succeeded", "succeeded", "failed", "failed"]
    assert [i.error_code for i in items[2:]] == ["payment_required", "payment_required"]
    assert final["status"] == "partially_failed" and final["pages_billed"] == 5
    with stack.ctx.session_factory() as session:
        customer = session.get(Customer, tenant.customer_id)
        assert customer is not None
        assert (customer.pages_used, customer.pages_reserved) == (5, 0)
        billed = set(session.scalars(select(BillingEntry.id)))
    assert billed == {items[0].id, items[1].id}
    # Nothing left: the next submit fails fast.
    again = tenant.submit(stack.upload_many(tenant, [one]))
    assert again.status_code == 402 and again.get_json()["error"] == "payment_required"
