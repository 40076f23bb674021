"""hover, drag, fill_form and upload_file against a real headless Chromium."""

import os
import time

import pytest
import pytest_twisted

from mcproxy.testing.tool_calls import failed, make_context, make_registry, ok, text_of, uid_of

READ_OUTPUT = "() => document.getElementById('output').textContent"


@pytest.fixture
def tools(reactor, user_browser):
    return make_registry(reactor, user_browser)


async def open_page(tools, fixture_site, name):
    """A new tab on a fixture page: (context, page id, its first snapshot)."""
    context = make_context()
    await ok(tools, context, "new_page", url=fixture_site.page(name))
    page_id = context.session.selected_page_id
    snapshot = text_of(await ok(tools, context, "take_snapshot", pageId=page_id))
    return context, page_id, snapshot


async def evaluate(tools, context, page_id, function):
    """The JSON text an evaluate_script call returned."""
    text = text_of(await ok(tools, context, "evaluate_script", pageId=page_id, function=function))
    return text.split("```json\n", 1)[1].rsplit("\n```", 1)[0]


@pytest_twisted.ensureDeferred
async def test_hover(tools, fixture_site):
    context, page_id, snapshot = await open_page(tools, fixture_site, "input_pointer.html")
    assert "Tip text" not in snapshot
    menu = uid_of(snapshot, 'button "Menu"')
    result = await ok(tools, context, "hover", pageId=page_id, uid=menu, includeSnapshot=True)
    text = text_of(result)
    assert text.startswith("Successfully hovered over the element\n## Latest page snapshot\n")
    assert '"Tip text"' in text  # shown by the :hover rule
    state = "() => [document.getElementById('output').textContent, document.getElementById('menu').matches(':hover')]"
    assert await evaluate(tools, context, page_id, state) == '["hovered menu",true]'
    result = await ok(tools, context, "hover", pageId=page_id, uid=uid_of(snapshot, 'region "Dock"'))
    assert text_of(result) == "Successfully hovered over the element"
    assert await evaluate(tools, context, page_id, state) == '["hovered menu",false]'


@pytest_twisted.ensureDeferred
async def test_drag_html5(tools, fixture_site):
    context, page_id, snapshot = await open_page(tools, fixture_site, "input_pointer.html")
    apple, basket = uid_of(snapshot, '"Apple"'), uid_of(snapshot, 'region "Basket"')
    result = await ok(tools, context, "drag", pageId=page_id, from_uid=apple, to_uid=basket)
    assert text_of(result) == "Successfully dragged an element"
    moved = "() => [document.getElementById('output').textContent, document.getElementById('apple').parentElement.id]"
    assert await evaluate(tools, context, page_id, moved) == '["dropped apple","basket"]'
    # Dragging works again afterwards (interception was switched off and on cleanly).
    result = await ok(
        tools,
        context,
        "drag",
        pageId=page_id,
        from_uid=uid_of(snapshot, '"Pear"'),
        to_uid=basket,
        includeSnapshot=True,
    )
    assert text_of(result).startswith("Successfully dragged an element\n## Latest page snapshot\n")
    assert await evaluate(tools, context, page_id, READ_OUTPUT) == '"dropped pear"'


@pytest_twisted.ensureDeferred
async def test_drag_mouse_events(tools, fixture_site):
    context, page_id, snapshot = await open_page(tools, fixture_site, "input_pointer.html")
    knob, dock = uid_of(snapshot, 'slider "Knob"'), uid_of(snapshot, 'region "Dock"')
    result = await ok(tools, context, "drag", pageId=page_id, from_uid=knob, to_uid=dock)
    assert text_of(result) == "Successfully dragged an element"
    docked = "() => [document.getElementById('output').textContent, document.getElementById('knob').parentElement.id]"
    assert await evaluate(tools, context, page_id, docked) == '["knob docked after several moves","dock"]'
    text = await failed(tools, context, "drag", pageId=page_id, from_uid=knob, to_uid="9_99")
    assert 'Element uid "9_99" not found' in text


@pytest_twisted.ensureDeferred
async def test_fill_form(tools, fixture_site):
    context, page_id, snapshot = await open_page(tools, fixture_site, "input_form.html")
    first, size = uid_of(snapshot, 'textbox "First name"'), uid_of(snapshot, 'combobox "Size"')
    news = uid_of(snapshot, 'checkbox "Newsletter"')
    elements = [{"uid": first, "value": "Ada"}, {"uid": size, "value": "large"}, {"uid": news, "value": "true"}]
    result = await ok(tools, context, "fill_form", pageId=page_id, elements=elements, includeSnapshot=True)
    text = text_of(result)
    assert text.startswith("Successfully filled out the form\n## Latest page snapshot\n")
    assert f'uid={first} textbox "First name" focusable focused value="Ada"' in text
    assert f'uid={size} combobox "Size" expandable haspopup="menu" value="large"' in text
    assert f'uid={news} checkbox "Newsletter" checked' in text
    values = "() => [first.value, size.value, news.checked]"
    assert await evaluate(tools, context, page_id, values) == '["Ada","l",true]'

    # A control that cannot be filled: the error names it and what was filled before it.
    plain = uid_of(snapshot, 'button "Plain button"')
    elements = [{"uid": first, "value": "Bea"}, {"uid": plain, "value": "x"}, {"uid": news, "value": "false"}]
    text = await failed(tools, context, "fill_form", pageId=page_id, elements=elements)
    assert text.startswith(f'Could not fill element uid "{plain}": This <button> element cannot be filled')
    assert text.endswith(f'Filled before it: "{first}"; the elements after it were not filled.')
    assert await evaluate(tools, context, page_id, values) == '["Bea","l",true]'
    # An unknown uid is found before anything changes.
    elements = [{"uid": first, "value": "Cy"}, {"uid": "9_99", "value": "x"}]
    text = await failed(tools, context, "fill_form", pageId=page_id, elements=elements)
    assert 'Element uid "9_99" not found' in text
    assert await evaluate(tools, context, page_id, values) == '["Bea","l",true]'
    text = await failed(tools, context, "fill_form", pageId=page_id, elements=[{"uid": first}])
    assert text == 'Invalid argument "elements"[0]: needs a "uid" string and a "value" string.'


@pytest_twisted.ensureDeferred
async def test_upload_file(tools, fixture_site, tmp_path):
    context, page_id, snapshot = await open_page(tools, fixture_site, "input_form.html")
    upload = tmp_path / "upload.txt"
    upload.write_bytes(b"hello upload")
    other = tmp_path / "other.csv"
    other.write_bytes(b"a,b\n")
    result = await ok(
        tools, context, "upload_file", pageId=page_id, uid=uid_of(snapshot, 'button "Upload"'), filePaths=[str(upload)]
    )
    assert text_of(result) == f"File uploaded from {upload}."
    assert await evaluate(tools, context, page_id, "() => upload.files[0].name") == '"upload.txt"'
    assert await evaluate(tools, context, page_id, READ_OUTPUT) == '"upload: upload.txt/12"'

    many = uid_of(snapshot, 'button "Many files"')
    result = await ok(
        tools,
        context,
        "upload_file",
        pageId=page_id,
        uid=many,
        filePaths=[str(upload), str(other)],
        includeSnapshot=True,
    )
    assert text_of(result).startswith(f"Files uploaded from {upload}, {other}.\n## Latest page snapshot\n")
    assert await evaluate(tools, context, page_id, READ_OUTPUT) == '"many: upload.txt/12, other.csv/4"'

    # A button that opens a file chooser for a hidden input.
    chooser = uid_of(snapshot, 'button "Choose file"')
    result = await ok(tools, context, "upload_file", pageId=page_id, uid=chooser, filePaths=[str(other)])
    assert text_of(result) == f"File uploaded from {other}."
    assert await evaluate(tools, context, page_id, READ_OUTPUT) == '"hidden-file: other.csv/4"'
    text = await failed(tools, context, "upload_file", pageId=page_id, uid=chooser, filePaths=[str(upload), str(other)])
    assert "takes a single file" in text

    # An element that neither is a file input nor opens a chooser.
    started = time.monotonic()
    text = await failed(
        tools,
        context,
        "upload_file",
        pageId=page_id,
        uid=uid_of(snapshot, 'button "Plain button"'),
        filePaths=[str(upload)],
    )
    assert time.monotonic() - started < 5
    assert "is not a file input, and clicking it did not open a file chooser" in text

    # Chrome takes any path; a file the browser cannot read is reported and not left in the input.
    missing = os.path.join(str(tmp_path), "missing.txt")
    upload_uid = uid_of(snapshot, 'button "Upload"')
    text = await failed(tools, context, "upload_file", pageId=page_id, uid=upload_uid, filePaths=[missing])
    assert text.startswith(
        f"The browser cannot read {missing}: no such readable file on the machine the browser runs on"
    )
    assert await evaluate(tools, context, page_id, "() => upload.files.length") == "0"
    text = await failed(tools, context, "upload_file", pageId=page_id, uid=many, filePaths=[str(upload), str(tmp_path)])
    assert text.startswith(f"The browser cannot read {tmp_path}: ")
    assert await evaluate(tools, context, page_id, "() => many.files.length") == "0"
    # The input went away since the snapshot.
    await evaluate(tools, context, page_id, "() => { upload.remove(); return 1; }")
    text = await failed(tools, context, "upload_file", pageId=page_id, uid=upload_uid, filePaths=[str(upload)])
    assert "no longer exists" in text and "take_snapshot" in text
