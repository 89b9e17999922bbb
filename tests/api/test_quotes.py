"""Quotes through the API, the workers' part run in-process (tests/integration/test_quotes.py
runs it with real worker processes against real submissions)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from service import quotes
from service.clock import utcnow
from service.db import transaction
from service.models import Quote
from tasks.quotes import redispatch_stalled_quotes, run_quote_chunk
from tests.api.conftest import ApiEnv, Tenant
from tests.corpus import CORPUS


@pytest.fixture
def chunks(api_env: ApiEnv) -> list[tuple[Any, ...]]:
    published: list[tuple[Any, ...]] = []
    app: Any = api_env.client.application
    app.extensions["pagelane"].publish_quote_chunks = lambda quote_id, chunks, options: (
        published.extend((quote_id, files, options) for files in chunks)
    )
    return published


def _work(env: ApiEnv, published: list[tuple[Any, ...]]) -> None:
    while published:
        run_quote_chunk(env.ctx, *published.pop(0))


def _upload(tenant: Tenant, *names: str) -> list[str]:
    return [tenant.upload((CORPUS / n).read_bytes(), n) for n in names]


def test_quote_predicts_pages_ocr_and_errors(
    api_env: ApiEnv, alice: Tenant, chunks: list[tuple[Any, ...]]
) -> None:
    names = [
        "digital-lorem-pdflatex-4p.pdf",
        "mixed-generated-scan-and-digital-pages-6p.pdf",
        "encrypted-password-test-4p.pdf",
        "unsupported-plaintext-named-as.pdf",
        "image-generated-multipage-3p.tiff",
    ]
    files = _upload(alice, *names)
    waiting = alice.register(b"%PDF-1.4 never uploaded")["id"]
    response = alice.post("/v1/quotes", {"file_ids": [*files, waiting]})
    assert response.status_code == 201, response.get_json()
    quote = response.get_json()
    assert quote["object"] == "quote" and quote["id"].startswith("quote_")
    assert quote["status"] == "pending" and quote["totals"] is None
    assert quote["file_count"] == 6
    _work(api_env, chunks)
    done = alice.get(f"/v1/quotes/{quote['id']}").get_json()
    assert done["status"] == "completed" and done["completed_at"]
    got = [(i["page_count"], i["ocr_pages"], i["predicted_error"]) for i in done["items"]]
    assert got == [
        (4, 0, None),
        (6, 3, None),
        (None, None, "extraction_failed"),
        (None, None, "unsupported_input"),
        (3, 3, None),
        (None, None, "upload_missing"),
    ]
    totals = done["totals"]
    assert totals["pages"] == totals["billable_pages"] == 13
    assert totals["ocr_pages"] == 6
    assert totals["predicted_failures"] == 3
    assert totals["quota_remaining"] is None and totals["fits_quota"] is True
    assert totals["estimated_seconds"] > 0
    # Nothing extracted or billed, and another customer sees nothing.
    assert alice.get("/v1/batches").get_json()["data"] == []
    assert api_env.tenant("bob").get(f"/v1/quotes/{quote['id']}").status_code == 404
    assert alice.get("/v1/quotes/quote_nope").status_code == 404


def test_quote_applies_the_quota_in_position_order(
    api_env: ApiEnv, chunks: list[tuple[Any, ...]]
) -> None:
    tenant = api_env.tenant("metered", quota=6)
    files = _upload(
        tenant,
        "digital-lorem-pdflatex-4p.pdf",
        "digital-crazyones-1p.pdf",
        "digital-french-minutes-2p.pdf",
        "digital-crazyones-1p.pdf",
    )
    quote = tenant.post("/v1/quotes", {"file_ids": files}).get_json()
    _work(api_env, chunks)
    done = tenant.get(f"/v1/quotes/{quote['id']}").get_json()
    assert [i["predicted_error"] for i in done["items"]] == [
        None,
        None,
        "payment_required",
        "payment_required",
    ]
    assert done["totals"]["billable_pages"] == 5
    assert done["totals"]["quota_remaining"] == 6
    assert done["totals"]["fits_quota"] is False


def test_a_chunk_counts_down_only_the_files_it_answered_first(
    api_env: ApiEnv, alice: Tenant, chunks: list[tuple[Any, ...]]
) -> None:
    # A chunk's answers are one executemany: its rowcount must be the sum over the answers
    # (not the last statement's, nor -1), or a redelivered chunk would count files twice.
    files = _upload(alice, *["digital-crazyones-1p.pdf"] * 3)
    quote_id = alice.post("/v1/quotes", {"file_ids": files}).get_json()["id"]

    def record(*answers: tuple[int, int]) -> bool:
        with transaction(api_env.ctx.session_factory) as session:
            found = [quotes.FileAnswer(p, pages, 0, None) for p, pages in answers]
            return quotes.record_answers(session, quote_id, found)

    def files_left() -> int:
        with api_env.ctx.session_factory() as session:
            quote = session.get(Quote, quote_id)
            assert quote is not None
            return quote.files_left

    assert record((0, 1)) is False and files_left() == 2
    assert record((1, 1), (0, 7)) is False and files_left() == 1  # position 0 again: ignored
    assert record((0, 7), (1, 7), (2, 1)) is True and files_left() == 0
    done = alice.get(f"/v1/quotes/{quote_id}").get_json()
    assert [i["page_count"] for i in done["items"]] == [1, 1, 1]
    assert done["status"] == "completed" and done["totals"]["pages"] == 3


def test_a_quote_is_cut_into_a_few_chunks_that_carry_their_files(
    api_env: ApiEnv, alice: Tenant, chunks: list[tuple[Any, ...]]
) -> None:
    """Each message names its files (position, blob key, declared sha256) and the options:
    the worker reads nothing before fetching. Every uploaded file is in exactly one chunk."""
    data = (CORPUS / "digital-crazyones-1p.pdf").read_bytes()
    files = [
        alice.upload(data, f"{n}.pdf") for n in range(30)
    ]  # under the 60-a-window submit limit
    never_uploaded = alice.register(b"%PDF-1.4 never uploaded")["id"]
    quote_id = alice.post("/v1/quotes", {"file_ids": [never_uploaded, *files]}).get_json()["id"]
    assert quotes.chunk_files(60) == 25 and quotes.chunk_files(1000) == 63
    assert quotes.chunk_files(10_000) == quotes.CHUNK_FILES_MAX
    assert [len(files_) for _, files_, _ in chunks] == [25, 5]
    assert {q for q, _, _ in chunks} == {quote_id}
    positions = [position for _, files_, _ in chunks for position, _, _ in files_]
    assert positions == list(range(1, 31))  # position 0 has no bytes: answered at once
    first_position, blob_key, sha256 = chunks[0][1][0]
    assert first_position == 1 and blob_key.endswith(files[0]) and sha256 is None
    assert chunks[0][2]["ocr"] == "auto"
    _work(api_env, chunks)
    done = alice.get(f"/v1/quotes/{quote_id}").get_json()
    assert done["status"] == "completed" and done["totals"]["pages"] == 30


def test_a_stalled_quote_gets_its_unanswered_files_published_again(
    api_env: ApiEnv, alice: Tenant, chunks: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk lost with its worker would leave the quote pending until it expired: the sweep
    publishes the files no chunk answered, once per stall period, and the quote completes."""
    republished: list[tuple[Any, ...]] = []
    monkeypatch.setattr(
        api_env.ctx,
        "publish_quote_chunks",
        lambda quote_id, chunks_, options: republished.extend(
            (quote_id, files, options) for files in chunks_
        ),
    )
    data = (CORPUS / "digital-crazyones-1p.pdf").read_bytes()
    files = [alice.upload(data, f"{n}.pdf") for n in range(30)]
    quote_id = alice.post("/v1/quotes", {"file_ids": files}).get_json()["id"]
    lost = chunks.pop(0)  # 25 files: its worker died
    _work(api_env, chunks)  # the other 5 are answered
    now = utcnow()
    assert redispatch_stalled_quotes(api_env.ctx, now + timedelta(minutes=4)) == {
        "quotes_redispatched": 0,
        "files_redispatched": 0,
    }
    later = now + quotes.STALLED_AFTER + timedelta(minutes=1)
    assert redispatch_stalled_quotes(api_env.ctx, later)["files_redispatched"] == 25
    assert republished == [lost]  # the same files, positions and options as the lost message
    assert redispatch_stalled_quotes(api_env.ctx, later)["quotes_redispatched"] == 0  # once
    _work(api_env, republished)
    done = alice.get(f"/v1/quotes/{quote_id}").get_json()
    assert done["status"] == "completed" and done["totals"]["pages"] == 30
    too_late = later + quotes.STALLED_AFTER * 2  # completed: never again
    assert redispatch_stalled_quotes(api_env.ctx, too_late)["quotes_redispatched"] == 0


def test_quote_refusals_and_rate_limit_shape(alice: Tenant) -> None:
    assert alice.post("/v1/quotes", {"file_ids": []}).status_code == 422
    unknown = alice.post("/v1/quotes", {"file_ids": ["file_nope"]})
    assert unknown.status_code == 404 and unknown.get_json()["error"] == "file_not_found"
    assert "X-RateLimit-Limit" in alice.post("/v1/quotes", {"file_ids": ["f"]}).headers


def test_quotes_are_documented(alice: Tenant) -> None:
    paths = alice.get("/openapi.json").get_json()["paths"]
    assert {"201", "401", "404", "422", "429"} <= set(paths["/v1/quotes"]["post"]["responses"])
    assert {"200", "401", "404"} <= set(paths["/v1/quotes/{quote_id}"]["get"]["responses"])
