"""Console tools: list_console_messages, get_console_message (data from `mcproxy.browser.collect`)."""

from mcproxy.errors import ToolError
from mcproxy.tools import schema as s
from mcproxy.tools.call import Response, ToolCall
from mcproxy.tools.collected import PAGINATION_SCHEMA, collected, in_chunks, listed, paging_schema, whole_id
from mcproxy.tools.declare import ToolSet
from mcproxy.tools.extension_targets import worker_for

CONSOLE_TYPES = (
    "log",
    "debug",
    "info",
    "error",
    "warn",
    "dir",
    "dirxml",
    "table",
    "trace",
    "clear",
    "startGroup",
    "startGroupCollapsed",
    "endGroup",
    "assert",
    "profile",
    "profileEnd",
    "count",
    "timeEnd",
    "verbose",
    "issue",
)
_HEADING = "## Console messages"
ONE_BASED = "Note: line and column numbers use 1-based indexing"

CONSOLE_OUTPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "consoleMessages": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "type": {"type": "string"},
                    "text": {"type": "string"},
                    "argsCount": {"type": "integer"},
                    "stackTrace": {"type": "string"},
                },
                "required": ["id", "type", "text", "argsCount"],
            },
        },
        "pagination": PAGINATION_SCHEMA,
    },
    "required": ["consoleMessages"],
}


tools = ToolSet("debugging")


@tools.page_tool(
    "list_console_messages",
    title="List console messages",
    description=(
        "List the console messages of a page since its last navigation, including uncaught errors and "
        "browser warnings, collected from the moment the page opened. Each has a msgid for get_console_message."
    ),
    params={
        **paging_schema("messages"),
        "types": s.array(
            "Only messages of these types. Absent or empty: every type.",
            s.string("A console message type.", enum=CONSOLE_TYPES),
        ),
        "includePreservedMessages": s.boolean(
            "Also list the messages of the two previous navigations. Default false.", default=False
        ),
        "includeStackTraces": s.boolean(
            "Show each message's stack trace when it has one (longer answer). Default false.", default=False
        ),
        "serviceWorkerId": s.string(
            "List the messages of this extension service worker (an id from list_pages) instead of the "
            "page's, collected since the proxy first attached to it (earlier ones as far as Chrome kept them)."
        ),
    },
    exclusive=False,
    dialog_safe=True,
    read_only=True,
    output_schema=CONSOLE_OUTPUT_SCHEMA,
)
async def list_console_messages(call: ToolCall) -> Response:
    """The page's console messages since its last navigation (or the last three), paged."""
    args = call.args
    worker_id = args.get("serviceWorkerId")
    source = await worker_for(call, worker_id) if worker_id else call.page
    page = listed(
        (await collected(source, call.clock)).console,
        args,
        preserved="includePreservedMessages",
        types="types",
        type_of=lambda message: message.type,
        what="messages",
    )
    with_stacks = bool(args.get("includeStackTraces"))
    response = Response()
    structured: dict = {"consoleMessages": []}
    response.structured = structured
    if page is None:
        return response.add(f"{_HEADING}\n<no console messages found>")
    chosen, found, structured["pagination"] = page
    # One section of text: the answer's is then the join below, not copied once more.
    lines = [_HEADING, *found]
    items = structured["consoleMessages"]
    any_stack = False

    def render(messages: list) -> None:
        nonlocal any_stack
        # Each message's line is rendered already: without stacks, the listing is one join.
        part = [
            {"id": message.id, "type": message.type, "text": message.text, "argsCount": message.args_count}
            for message in messages
        ]
        items.extend(part)
        if not with_stacks:
            lines.extend([message.line for message in messages])
            return
        for message, item in zip(messages, part, strict=True):
            lines.append(message.line)
            if message.stack:
                stack = message.stack_lines()
                item["stackTrace"] = "\n".join(stack)
                lines.extend("  " + line for line in stack)
                any_stack = True

    await in_chunks(chosen, render, call.clock)
    if any_stack:
        lines.append("Note: stack trace line and column numbers use 1-based indexing")
    return response.add("\n".join(lines))


@tools.page_tool(
    "get_console_message",
    title="Get console message",
    description=(
        "Show one console message in full (arguments, stack trace) by the msgid that list_console_messages gave."
    ),
    params={
        "msgid": s.number("The msgid of a message, from list_console_messages."),
    },
    required=("msgid",),
    exclusive=False,
    dialog_safe=True,
    read_only=True,
)
async def get_console_message(call: ToolCall) -> Response:
    """One console message in full: its arguments and stack trace."""
    console = (await collected(call.page, call.clock)).console
    msgid = whole_id(call.args["msgid"], "msgid")
    message = console.get(msgid)
    if message is None:
        if console.issued(msgid):
            raise ToolError(
                f"Console message {msgid} of page {call.page.page_id} is no longer kept: only the current and "
                f"the two previous navigations are ({console.limits()}). "
                "Call list_console_messages to see the messages available."
            )
        raise ToolError(
            f"No console message with msgid {msgid} on page {call.page.page_id}. "
            "Call list_console_messages to see the messages available."
        )
    lines = [f"ID: {message.id}", f"Message: {message.type}> {message.text}"]
    if message.args:
        lines.append("### Arguments")
        lines.extend(f"Arg #{index}: {arg}" for index, arg in enumerate(message.args))
    if message.stack:
        lines.append("### Stack trace")
        lines.extend(message.stack_lines())
        lines.append(ONE_BASED)
    return Response().add("\n".join(lines))
