"""Page-side JavaScript the input tools run: filling a control, noticing an HTML5 drag,
checking that chosen files can be read."""

#: Called on a form control with the value to fill; answers what was done or what Python
#: still has to type (``{kind: 'type', secret}``).
FILL = """function (value) {
  const el = this;
  if (!el.isConnected) return {kind: 'stale'};
  const tag = el.localName;
  const changed = () => {
    el.dispatchEvent(new Event('input', {bubbles: true}));
    el.dispatchEvent(new Event('change', {bubbles: true}));
  };
  if (tag === 'select') {
    const options = Array.from(el.options);
    const match = options.find(o => o.value === value) || options.find(o => o.text.trim() === value.trim());
    if (!match) {
      return {kind: 'error', message: 'No option "' + value + '" in this list; its options are: ' +
        options.map(o => '"' + o.text.trim() + '"').join(', ') + '.'};
    }
    options.forEach(o => { o.selected = o === match; });
    changed();
    return {kind: 'done'};
  }
  const role = el.getAttribute('role');
  const toggle = tag === 'input' && (el.type === 'checkbox' || el.type === 'radio');
  if (toggle || role === 'checkbox' || role === 'switch' || role === 'radio') {
    if (value !== 'true' && value !== 'false') {
      return {kind: 'error', message: 'Fill a checkbox, switch or radio button with "true" or "false".'};
    }
    const want = value === 'true';
    const now = toggle ? el.checked : el.getAttribute('aria-checked') === 'true';
    if (now !== want) {
      if (!want && (el.type === 'radio' || role === 'radio')) {
        return {
          kind: 'error',
          message: 'A radio button cannot be unchecked; fill another one of its group with "true".',
        };
      }
      el.click();
    }
    return {kind: 'done'};
  }
  const direct = ['date', 'time', 'datetime-local', 'month', 'week', 'range', 'color'];
  const notText = ['button', 'submit', 'reset', 'file', 'image', 'hidden'];
  if (tag === 'input' && direct.includes(el.type)) {
    el.value = value;
    changed();
    return {kind: 'done'};
  }
  if (!(tag === 'textarea' || el.isContentEditable || (tag === 'input' && !notText.includes(el.type)))) {
    return {kind: 'error', message: 'This <' + tag + '> element cannot be filled; fill works on text fields, ' +
      'text areas, lists (select) and checkboxes. Use click for buttons and links.'};
  }
  el.focus();
  if (el.isContentEditable) {
    const range = document.createRange();
    range.selectNodeContents(el);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  } else {
    try { el.select(); } catch (e) { /* inputs without a text selection */ }
  }
  if (value === '') {
    if (el.isContentEditable) el.textContent = ''; else el.value = '';
    el.dispatchEvent(new Event('input', {bubbles: true}));
    return {kind: 'done'};
  }
  return {kind: 'type', secret: tag === 'input' && el.type === 'password'};
}"""


# Notes whether the page started an HTML5 drag (a ``dragstart`` it did not cancel).
WATCH_DRAGSTART = """(() => {
  const watch = {event: null};
  watch.listener = e => { watch.event = e; };
  document.addEventListener('dragstart', watch.listener, true);
  return watch;
})()"""
DRAG_STARTED = """function () {
  document.removeEventListener('dragstart', this.listener, true);
  return this.event !== null && !this.event.defaultPrevented;
}"""

# Chrome takes any path and hands the page a File that fails when read: try one byte (a
# missing file claims size 0, and an empty slice is never read, so read those whole).
# Chrome also sets files on an input removed from the page; that uid is stale.
UNREADABLE_FILES = """async function () {
  if (!this.isConnected) return null;
  const bad = [];
  for (const [index, file] of Array.from(this.files).entries()) {
    try { await (file.size ? file.slice(0, 1) : file).arrayBuffer(); } catch (e) { bad.push(index); }
  }
  if (bad.length) {
    this.value = '';
    this.dispatchEvent(new Event('input', {bubbles: true}));
    this.dispatchEvent(new Event('change', {bubbles: true}));
  }
  return bad;
}"""
