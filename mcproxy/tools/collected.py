"""Collected console and network data as the list and get tools read it: by id, a page at a time.

The data comes from the collector (`mcproxy.browser.collect`); this only finds it and cuts
it into pages of output.
"""

from collections.abc import Callable

from twisted.internet.task import deferLater

from mcproxy.browser.collect import PageRecords
from mcproxy.browser.journal import EntryT, Journal
from mcproxy.errors import ToolError
from mcproxy.tools.schema import MAX_SAFE_INTEGER


def records_of(page) -> PageRecords:
    """The page's collected data; ToolError when collection is not running for it."""
    records = page.state.records
    if records is None:
        raise ToolError(
            f"Console and network collection is not running for page {page.page_id}; "
            "this server was started without the collector. Ask its operator."
        )
    return records


async def collected(source, clock) -> PageRecords:
    """`records_of` ``source`` (a page or worker) once collection that just started caught up."""
    return await records_of(source).ready(clock)


def whole_id(value: float, name: str) -> int:
    """A ``msgid``/``reqid`` argument (a JSON number) as an int; ToolError when it has a fraction."""
    if not float(value).is_integer():
        raise ToolError(f'Invalid argument "{name}": expected a whole number, got {value}.')
    return int(value)


# -- paging, shared by the list tools -------------------------------------------------------------

PAGINATION_SCHEMA = {
    "type": "object",
    "properties": {
        "currentPage": {"type": "integer"},
        "totalPages": {"type": "integer"},
        "hasNextPage": {"type": "boolean"},
        "hasPreviousPage": {"type": "boolean"},
        "startIndex": {"type": "integer"},
        "endIndex": {"type": "integer"},
        "invalidPage": {"type": "boolean"},
    },
    "required": ["currentPage", "totalPages", "hasNextPage", "hasPreviousPage", "startIndex", "endIndex"],
}
DEFAULT_PAGE_SIZE = 20
#: How many entries a list tool renders before it lets the reactor run other work: about
#: half a millisecond's worth, so that a page's 10,000 messages never hold it for all of them.
CHUNK = 1_000


def paging_schema(what: str) -> dict[str, dict]:
    """The ``pageSize`` and ``pageIdx`` parameters of a list tool."""
    return {
        "pageSize": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_SAFE_INTEGER,
            "description": f"How many {what} to return per page. Absent: all of them.",
        },
        "pageIdx": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_SAFE_INTEGER,
            "description": "Which page to return, counting from 0. Absent: the first.",
        },
    }


def listed(
    journal: Journal[EntryT],
    args: dict,
    *,
    preserved: str,
    types: str,
    type_of: Callable[[EntryT], str],
    what: str,
) -> tuple[list, list[str], dict] | None:
    """A list tool's page of ``journal``: the current navigation's entries (every kept one's
    when ``args[preserved]``), only of the types ``args[types]`` names, paged by ``pageSize``
    and ``pageIdx``: `paginate`'s three values, its lines also telling how many ``what``
    were dropped for room. None when no entry matches."""
    keep_all = bool(args.get(preserved))
    entries = journal.entries(keep_all)
    wanted = set(args.get(types) or ())
    if wanted:
        entries = [entry for entry in entries if type_of(entry) in wanted]
    if not entries:
        return None
    chosen, lines, pagination = paginate(entries, args.get("pageSize"), args.get("pageIdx"))
    dropped = journal.dropped(keep_all)
    if dropped:
        lines.append(f"{dropped} older {what} dropped to bound memory ({journal.limits()}).")
    return chosen, lines, pagination


def paginate(items: list, page_size: float | None, page_idx: float | None) -> tuple[list, list[str], dict]:
    """One page of ``items``: the items, the text lines describing the page, and ``pagination``."""
    total = len(items)
    paged = page_size is not None or page_idx is not None
    size = int(page_size) if page_size is not None else (DEFAULT_PAGE_SIZE if paged else max(total, 1))
    pages = max(1, -(-total // size))
    current = 0 if page_idx is None else int(page_idx)
    invalid = current >= pages
    if invalid:
        current = 0
    start = current * size
    chosen = items[start : start + size]
    lines = ["Invalid page number provided. Showing first page."] if invalid else []
    lines.append(f"Showing {start + 1}-{start + len(chosen)} of {total} (Page {current + 1} of {pages}).")
    if paged and current < pages - 1:
        lines.append(f"Next page: {current + 1}")
    if paged and current > 0:
        lines.append(f"Previous page: {current - 1}")
    pagination = {
        "currentPage": current,
        "totalPages": pages,
        "hasNextPage": current < pages - 1,
        "hasPreviousPage": current > 0,
        "startIndex": start,
        "endIndex": start + len(chosen),
        "invalidPage": invalid,
    }
    return chosen, lines, pagination


async def in_chunks(entries: list, render: Callable[[list], object], clock) -> None:
    """``render`` each `CHUNK` of ``entries`` in turn, oldest first, the reactor free between two."""
    for start in range(0, len(entries), CHUNK):
        if start:
            await deferLater(clock, 0, lambda: None)
        render(entries[start : start + CHUNK])
