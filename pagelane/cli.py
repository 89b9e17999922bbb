"""The `pagelane` command (:func:`main`, the console script): the client commands `run`,
`submit`, `status`, `wait`, `download`, `cancel`, and whatever installed packages add through
the ``pagelane.commands`` entry points (the server's: `api`, `worker`, `up`, `db`, ...).

They talk to an API over HTTP only (``$PAGELANE_API_URL``, key in ``$PAGELANE_API_KEY``), so
they work from any machine. Exit codes, for scripts: 0 everything succeeded; 2 some items
failed (or, for `wait`/`download`, did not succeed); 1 usage, configuration, connection or API
errors; 130 interrupted by Ctrl-C (a `run` can be resumed).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from pagelane._sync.client import Client
from pagelane.errors import ApiError, ConfigurationError, PagelaneConnectionError
from pagelane.models import Batch, BatchItem, FileSpec
from pagelane.progress import make_reporter
from pagelane.protocol import RetryNotice
from pagelane.runner import (
    ERRORS_FILENAME,
    QuoteReport,
    RunFailedError,
    RunInterruptedError,
    RunPlan,
    quote_folder,
    run_folder,
)
from pagelane.state import StateError, json_line, write_atomically

if TYPE_CHECKING:
    from pagelane._async.client import AsyncClient

T = TypeVar("T")
EXIT_OK, EXIT_ERROR, EXIT_SOME_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 130


class ClientUsageError(click.UsageError):
    """click's usage error with exit code 1: for these commands 2 means "some items failed"."""

    exit_code = EXIT_ERROR


class ClientCommand(click.Command):
    """A command whose usage errors exit 1, as documented."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise ClientUsageError(exc.format_message(), exc.ctx) from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise ClientUsageError(exc.format_message(), exc.ctx) from exc


api_url_option = click.option(
    "--api-url",
    envvar="PAGELANE_API_URL",
    default=None,
    help="API base URL [default: $PAGELANE_API_URL or http://127.0.0.1:8080]. "
    "The key comes from $PAGELANE_API_KEY (or $EXTRACT_API_KEY).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def batch_options_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--ocr, --languages, --no-tables, --no-images (SPEC's batch options)."""
    for decorator in reversed(
        [
            click.option(
                "--ocr",
                type=click.Choice(["auto", "force", "never"]),
                default=None,
                help="OCR mode [server default: auto].",
            ),
            click.option(
                "--languages",
                default=None,
                help="Tesseract languages, comma-separated (eng,deu) [server default: eng].",
            ),
            click.option("--no-tables", is_flag=True, help="Do not extract tables."),
            click.option("--no-images", is_flag=True, help="Do not extract images."),
        ]
    ):
        command = decorator(command)
    return command


def _batch_options(
    ocr: str | None, languages: str | None, no_tables: bool, no_images: bool
) -> dict[str, Any]:
    """Only what was asked for: an option left out keeps the server's default."""
    options: dict[str, Any] = {}
    if ocr:
        options["ocr"] = ocr
    if languages:
        options["languages"] = [code.strip() for code in languages.split(",") if code.strip()]
    if no_tables:
        options["extract_tables"] = False
    if no_images:
        options["extract_images"] = False
    return options


# --- run ---------------------------------------------------------------------------------------


@click.command(cls=ClientCommand)
@click.argument(
    "source", type=click.Path(exists=True, file_okay=False, path_type=Path), metavar="DIR"
)
@click.option(
    "--out",
    "-o",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Results go to OUT/<relative path>.json, failures to OUT/errors.jsonl "
    "(required, except with --quote).",
)
@click.option(
    "--include", multiple=True, metavar="GLOB", help="Only matching files (repeatable): '*.pdf'."
)
@click.option("--concurrency", default=16, show_default=True, type=click.IntRange(1, 256))
@click.option(
    "--batch-size",
    default=10_000,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Files per batch.",
)
@batch_options_options
@click.option("--poll-interval", default=1.0, show_default=True, type=click.FloatRange(0.05))
@click.option(
    "--cancel-on-interrupt", is_flag=True, help="On Ctrl-C cancel the batches instead of pausing."
)
@click.option(
    "--quote",
    is_flag=True,
    help="Upload and print what the run would cost (pages, OCR pages, predicted errors); "
    "submit nothing.",
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Retry the failed and cancelled files of the previous run into OUT (a retry batch).",
)
@click.option(
    "--poll",
    "poll_only",
    is_flag=True,
    help="Poll the change feed instead of following the event stream.",
)
@json_option
@api_url_option
@click.pass_context
def run(
    ctx: click.Context,
    source: Path,
    out: Path,
    include: tuple[str, ...],
    concurrency: int,
    batch_size: int,
    ocr: str | None,
    languages: str | None,
    no_tables: bool,
    no_images: bool,
    poll_interval: float,
    cancel_on_interrupt: bool,
    quote: bool,
    retry_failed: bool,
    poll_only: bool,
    as_json: bool,
    api_url: str | None,
) -> None:
    """Process every file under DIR: upload, extract, download the results to OUT.

    Hidden files are skipped. Rerunning the same command resumes: nothing already uploaded is
    sent again, no batch is submitted twice, and only missing results are downloaded. With
    --quote, upload and print the quote (nothing is submitted); with --retry-failed, the
    previous run's failures are retried.
    """
    if out is None and not quote:
        raise click.UsageError("Missing option '--out' / '-o'.")
    if quote and retry_failed:
        raise click.UsageError("--quote and --retry-failed do not go together.")
    if quote:
        _quote_run(
            source,
            out,
            include,
            concurrency,
            ocr,
            languages,
            no_tables,
            no_images,
            as_json,
            api_url,
        )
        return
    assert out is not None
    plan = RunPlan(
        source=source.resolve(),
        out=out.resolve(),
        includes=include,
        concurrency=concurrency,
        batch_size=batch_size,
        batch_options=_batch_options(ocr, languages, no_tables, no_images),
        poll_interval=poll_interval,
        cancel_on_interrupt=cancel_on_interrupt,
        follow_events=not poll_only,
        retry_failed=retry_failed,
    )
    reporter = make_reporter(sys.stderr if as_json else sys.stdout)
    try:
        with Client(
            base_url=api_url,
            on_retry=lambda notice: reporter.note(_retry_message(notice)),
            max_connections=concurrency + 4,
        ) as client:
            summary = run_folder(client, plan, reporter)
    except ConfigurationError as exc:
        _fail(str(exc))
    except RunInterruptedError as exc:
        if exc.cancelled:
            click.echo(
                f"\ninterrupted: cancelled {', '.join(exc.cancelled)} (running items finish; "
                f"the results so far are in {plan.out}).",
                err=True,
            )
        else:
            click.echo(
                f"\ninterrupted: state saved in {plan.out}/.pagelane-run.json.\n"
                f"resume with:  {plan.resume_command()}",
                err=True,
            )
        ctx.exit(EXIT_INTERRUPTED)
    except (StateError, RunFailedError) as exc:
        _fail(str(exc))
    except (PagelaneConnectionError, ApiError) as exc:
        _fail(f"{exc}\nthe state is saved; rerun the same command to resume")
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        click.echo(summary.render())
    # The process exits next. Its final garbage collection walks every object of every
    # imported library (SQLAlchemy, pydantic, httpx) and took 0.1-0.3 s here, a visible part
    # of a short run; everything of ours is already closed and saved, so skip that walk.
    gc.freeze()
    ctx.exit(summary.exit_code)


def _quote_run(
    source: Path,
    out: Path | None,
    include: tuple[str, ...],
    concurrency: int,
    ocr: str | None,
    languages: str | None,
    no_tables: bool,
    no_images: bool,
    as_json: bool,
    api_url: str | None,
) -> None:
    """`pagelane run --quote`: upload as a run would, print the quote, submit nothing."""
    with contextlib.ExitStack() as stack:
        if out is None:  # the uploads' state is only kept when OUT is given
            out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pagelane-q-")))
        plan = RunPlan(
            source=source.resolve(),
            out=out.resolve(),
            includes=include,
            concurrency=concurrency,
            batch_options=_batch_options(ocr, languages, no_tables, no_images),
        )
        reporter = make_reporter(sys.stderr)
        try:
            with Client(
                base_url=api_url,
                on_retry=lambda notice: reporter.note(_retry_message(notice)),
                max_connections=concurrency + 4,
            ) as client:
                report = quote_folder(client, plan, reporter)
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except (ConfigurationError, StateError, RunFailedError) as exc:
            _fail(str(exc))
        except (PagelaneConnectionError, ApiError) as exc:
            _fail(str(exc))
    if as_json:
        body = report.quote.model_dump(mode="json")
        for item in body.get("items", []):
            item["path"] = report.paths.get(item["file_id"])
        click.echo(json.dumps(body, indent=2))
        return
    _print_quote(report)


def _print_quote(report: QuoteReport) -> None:
    from rich.console import Console
    from rich.table import Table

    quote = report.quote
    table = Table(title=f"quote {quote.id}", title_justify="left")
    table.add_column("file")
    table.add_column("pages", justify="right")
    table.add_column("OCR pages", justify="right")
    table.add_column("predicted error")
    for item in sorted(quote.items, key=lambda i: report.paths.get(i.file_id, i.file_id)):
        table.add_row(
            report.paths.get(item.file_id, item.file_id),
            _count(item.page_count),
            _count(item.ocr_pages),
            item.predicted_error or "",
        )
    for relative, error in sorted(report.rejected.items()):
        table.add_row(relative, "", "", f"{error.code} (not uploaded)")
    totals = quote.totals
    if totals is not None:
        table.add_section()
        failures = totals.predicted_failures + len(report.rejected)
        table.add_row(
            f"total: {len(quote.items) + len(report.rejected)} files",
            str(totals.pages),
            str(totals.ocr_pages),
            f"{failures} predicted to fail" if failures else "",
        )
    console = Console(width=max(100, Console().width), soft_wrap=False)
    console.print(table)
    if totals is not None:
        quota = "unlimited" if totals.quota_remaining is None else str(totals.quota_remaining)
        fits = "fits" if totals.fits_quota else "does NOT fit"
        estimate = (
            f"; estimated {totals.estimated_seconds:.0f} s"
            if totals.estimated_seconds is not None
            else ""
        )
        console.print(
            f"billable pages: {totals.billable_pages} (quota remaining: {quota}, {fits}){estimate}"
        )
    console.print("nothing was submitted; run without --quote to process the folder")


def _count(value: int | None) -> str:
    return "" if value is None else str(value)


# --- submit, status, wait, cancel --------------------------------------------------------------


@click.command(cls=ClientCommand)
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--wait", "wait_for_it", is_flag=True, help="Wait until terminal; exit codes as `wait`."
)
@click.option("--idempotency-key", default=None, help="Make a retried submit return one batch.")
@click.option("--concurrency", default=16, show_default=True, type=click.IntRange(1, 256))
@click.option("--poll-interval", default=2.0, show_default=True, type=click.FloatRange(0.05))
@batch_options_options
@json_option
@api_url_option
@click.pass_context
def submit(
    ctx: click.Context,
    files: tuple[Path, ...],
    wait_for_it: bool,
    idempotency_key: str | None,
    concurrency: int,
    poll_interval: float,
    ocr: str | None,
    languages: str | None,
    no_tables: bool,
    no_images: bool,
    as_json: bool,
    api_url: str | None,
) -> None:
    """Upload FILES and submit them as one batch; prints the batch id (the batch with --json)."""
    empty = [str(p) for p in files if p.stat().st_size == 0]
    if empty:
        raise click.UsageError(f"empty files cannot be submitted: {', '.join(empty)}")
    options = _batch_options(ocr, languages, no_tables, no_images)

    async def go(client: AsyncClient) -> Batch:
        specs = await asyncio.to_thread(lambda: [FileSpec.from_path(p) for p in files])
        registered = await client.files.create_many(specs)
        limit = asyncio.Semaphore(concurrency)

        async def upload(index: int) -> None:
            async with limit:
                await client.files.upload(registered[index], files[index])

        async with asyncio.TaskGroup() as tasks:
            for index in range(len(files)):
                tasks.create_task(upload(index))
        batch = await client.batches.create(
            [f.id for f in registered], options=options or None, idempotency_key=idempotency_key
        )
        if not as_json:
            click.echo(batch.id)  # at once: a script can record it before --wait returns
        if wait_for_it:
            batch = await client.batches.wait(batch.id, poll_interval=poll_interval)
        return batch

    batch = _with_client(api_url, go)
    if as_json:
        _echo_json(batch)
    if wait_for_it:
        if not as_json:
            click.echo(_status_line(batch), err=True)
        ctx.exit(_terminal_exit_code(batch))


@click.command(cls=ClientCommand)
@click.argument("batch_id", metavar="BATCH")
@json_option
@api_url_option
def status(batch_id: str, as_json: bool, api_url: str | None) -> None:
    """Show a batch's status and counts."""
    batch = _with_client(api_url, lambda client: client.batches.get(batch_id, limit=1))
    if as_json:
        _echo_json(batch)
    else:
        click.echo(_status_line(batch))


@click.command(cls=ClientCommand)
@click.argument("batch_id", metavar="BATCH")
@click.option("--poll-interval", default=2.0, show_default=True, type=click.FloatRange(0.05))
@click.option("--timeout", default=None, type=click.FloatRange(0), help="Give up after seconds.")
@json_option
@api_url_option
@click.pass_context
def wait(
    ctx: click.Context,
    batch_id: str,
    poll_interval: float,
    timeout: float | None,
    as_json: bool,
    api_url: str | None,
) -> None:
    """Wait until a batch is terminal; exit 0 when every item succeeded, 2 otherwise."""

    async def go(client: AsyncClient) -> Batch:
        return await client.batches.wait(batch_id, poll_interval=poll_interval, timeout=timeout)

    try:
        batch = _with_client(api_url, go)
    except TimeoutError as exc:
        _fail(str(exc))
    if as_json:
        _echo_json(batch)
    else:
        click.echo(_status_line(batch))
    ctx.exit(_terminal_exit_code(batch))


@click.command(cls=ClientCommand)
@click.argument("batch_id", metavar="BATCH")
@json_option
@api_url_option
def cancel(batch_id: str, as_json: bool, api_url: str | None) -> None:
    """Cancel a batch's pending items (running ones finish)."""
    batch = _with_client(api_url, lambda client: client.batches.cancel(batch_id))
    if as_json:
        _echo_json(batch)
    else:
        click.echo(_status_line(batch))


@click.command(cls=ClientCommand)
@click.argument("batch_id", metavar="BATCH")
@click.option("--include-cancelled", is_flag=True, help="Retry the batch's cancelled items too.")
@click.option("--idempotency-key", default=None, help="Make a repeated retry return one batch.")
@json_option
@api_url_option
def retry(
    batch_id: str,
    include_cancelled: bool,
    idempotency_key: str | None,
    as_json: bool,
    api_url: str | None,
) -> None:
    """Submit a new batch of BATCH's retryable failures; prints the new batch's id."""
    batch = _with_client(
        api_url,
        lambda client: client.batches.retry(
            batch_id, include_cancelled=include_cancelled, idempotency_key=idempotency_key
        ),
    )
    if as_json:
        _echo_json(batch)
    else:
        click.echo(batch.id)


# --- download ----------------------------------------------------------------------------------


@click.command(cls=ClientCommand)
@click.argument("batch_id", metavar="BATCH")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--concurrency", default=16, show_default=True, type=click.IntRange(1, 256))
@json_option
@api_url_option
@click.pass_context
def download(
    ctx: click.Context,
    batch_id: str,
    out: Path,
    concurrency: int,
    as_json: bool,
    api_url: str | None,
) -> None:
    """Download the results of a batch's succeeded items to OUT/<filename>.json.

    Failed items are listed in OUT/errors.jsonl. Results already in OUT are not fetched again.
    Does not wait: items still running are counted as unfinished (use `pagelane wait` first).
    """

    async def go(client: AsyncClient) -> dict[str, Any]:
        items = await _latest_items(client, batch_id)
        names = await _result_names(client, items, concurrency)
        out.mkdir(parents=True, exist_ok=True)
        limit = asyncio.Semaphore(concurrency)
        fetched = 0

        async def fetch(item: BatchItem) -> None:
            nonlocal fetched
            target = out / names[item.id]
            if target.exists():
                return
            async with limit:
                await client.results.download(batch_id, item.id, target)
            fetched += 1

        succeeded = [i for i in items if i.status == "succeeded"]
        async with asyncio.TaskGroup() as tasks:
            for item in succeeded:
                tasks.create_task(fetch(item))
        failures = [i for i in items if i.status in ("failed", "cancelled")]
        write_atomically(
            out / ERRORS_FILENAME,
            "".join(
                json_line(
                    {
                        "path": names[i.id][: -len(".json")],
                        "item_id": i.id,
                        "code": i.error.code if i.error else i.status,
                        "message": i.error.message if i.error else "",
                        "file_id": i.file_id,
                        "batch_id": batch_id,
                    }
                )
                for i in failures
            ).encode(),
        )
        return {
            "batch_id": batch_id,
            "out": str(out),
            "succeeded": len(succeeded),
            "downloaded": fetched,
            "failed": len(failures),
            "unfinished": len(items) - len(succeeded) - len(failures),
        }

    report = _with_client(api_url, go)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(
            f"{report['succeeded']} results in {out}/ ({report['downloaded']} downloaded now), "
            f"{report['failed']} failed, {report['unfinished']} unfinished"
        )
    ctx.exit(EXIT_OK if report["failed"] == report["unfinished"] == 0 else EXIT_SOME_FAILED)


async def _latest_items(client: AsyncClient, batch_id: str) -> list[BatchItem]:
    """Every item's latest state now, without waiting for the batch to finish."""
    latest: dict[str, BatchItem] = {}
    cursor: str | None = None
    page_size = 500
    while True:
        page = await client.batches.get(batch_id, cursor=cursor, limit=page_size)
        for item in page.items or []:
            latest[item.id] = item
        cursor = page.next_cursor
        if len(page.items or []) < page_size:
            return sorted(latest.values(), key=lambda i: i.position)


async def _result_names(
    client: AsyncClient, items: Sequence[BatchItem], concurrency: int
) -> dict[str, str]:
    """item id → result file name: the registered filename + ``.json`` (made safe: no absolute
    paths, no ``..``), or ``<position>-<name>`` where two items would share one name."""
    limit = asyncio.Semaphore(concurrency)
    filenames: dict[str, str | None] = {}

    async def look_up(item: BatchItem) -> None:
        async with limit:
            filenames[item.id] = (await client.files.get(item.file_id)).filename

    async with asyncio.TaskGroup() as tasks:
        for item in items:
            tasks.create_task(look_up(item))
    safe = {item.id: _safe_relative(filenames[item.id] or item.file_id) for item in items}
    seen: dict[str, int] = {}
    for name in safe.values():
        seen[name] = seen.get(name, 0) + 1
    return {
        item.id: (
            safe[item.id]
            if seen[safe[item.id]] == 1
            else f"{item.position:05d}-{safe[item.id].replace('/', '_')}"
        )
        + ".json"
        for item in items
    }


def _safe_relative(name: str) -> str:
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("/", "..", ".")]
    return "/".join(parts) or "result"


# --- plumbing ----------------------------------------------------------------------------------


def _with_client(api_url: str | None, work: Callable[[AsyncClient], Awaitable[T]]) -> T:
    from pagelane._async.client import AsyncClient  # here: `pagelane run` never loads it

    async def go() -> T:
        async with AsyncClient(
            base_url=api_url,
            on_retry=lambda notice: click.echo(_retry_message(notice), err=True),
        ) as client:
            return await work(client)

    try:
        return _run_async(go)
    except RunInterruptedError:
        raise
    except ApiError as exc:
        _fail(str(exc))
    except PagelaneConnectionError as exc:
        _fail(str(exc))


def _run_async(go: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await go()

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        click.echo("\ninterrupted", err=True)
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    except ConfigurationError as exc:
        _fail(str(exc))
    except BaseExceptionGroup as group:
        # A TaskGroup's failure: report its first real error as itself.
        first = group.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


def _fail(message: str) -> NoReturn:
    click.echo(f"pagelane: {message}", err=True)
    raise click.exceptions.Exit(EXIT_ERROR)


def _retry_message(notice: RetryNotice) -> str:
    return (
        f"{notice.reason} from {notice.method} {notice.url}; "
        f"retrying in {notice.delay:.1f} s (attempt {notice.attempt + 1})"
    )


def _status_line(batch: Batch) -> str:
    c = batch.counts
    done = c.succeeded + c.failed + c.cancelled
    return (
        f"{batch.id}  {batch.status}  {done}/{batch.total_items} done  "
        f"(succeeded {c.succeeded}, failed {c.failed}, cancelled {c.cancelled}, "
        f"running {c.running}, pending {c.pending})  pages billed {batch.pages_billed}"
    )


def _terminal_exit_code(batch: Batch) -> int:
    # By counts, not status: a batch whose pending items were cancelled is "completed" when the
    # rest succeeded, but a script waiting for its results did not get them all.
    return EXIT_OK if batch.counts.succeeded == batch.total_items else EXIT_SOME_FAILED


def _echo_json(batch: Batch) -> None:
    body = batch.model_dump(mode="json", exclude={"items", "next_cursor"})
    click.echo(json.dumps(body, indent=2))


# --- the `pagelane` group ----------------------------------------------------------------------

# Each entry point of this group names a function that takes the `pagelane` click group and adds
# commands to it. The server's (pyproject.toml: `server = "service.cli:register"`) is the only
# link between the SDK and the server: this package imports nothing of it.
COMMANDS_ENTRY_POINT_GROUP = "pagelane.commands"


@click.group()
def cli() -> None:
    """Pagelane: a self-hosted async batch lane for document extraction.

    The client commands talk to an API over HTTP; the server's (api, worker, up, ...) need the
    server extra: pip install 'pagelane[server]'.
    """


for _command in (run, submit, status, wait, download, cancel, retry):
    cli.add_command(_command)

_plugins_loaded = False


def load_plugin_commands(group: click.Group) -> None:
    """Call every ``pagelane.commands`` entry point with ``group`` (once per process for
    :data:`cli`). One that fails to load is reported on stderr; the others still work."""
    for entry_point in entry_points(group=COMMANDS_ENTRY_POINT_GROUP):
        try:
            register = entry_point.load()
        except Exception as exc:
            click.echo(
                f"pagelane: the {entry_point.name!r} commands ({entry_point.value}) did not "
                f"load: {exc}",
                err=True,
            )
            continue
        register(group)


def main(argv: Sequence[str] | None = None) -> None:
    """The console script: the client commands plus every installed plugin's."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        load_plugin_commands(cli)
    cli.main(args=list(argv) if argv is not None else None, prog_name="pagelane")


if __name__ == "__main__":
    main()
