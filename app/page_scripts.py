"""What the triage page adds to the browser page itself: arrow keys, card clicks, the reload guard, layout.

Scripts run in one-pixel same-origin iframes (``st.iframe``) and register their listeners from the
page's own realm (``window.parent.Function``): Chrome stops calling a listener once the document that
registered it is gone, and Streamlit replaces these iframes when their content changes. The CSS is
injected with ``st.html``. Kept apart from the page's Python so each reads on its own.
"""

from __future__ import annotations

#: A tiny script in a one-pixel iframe (``st.iframe``, which replaces ``components.v1.html``): the
#: ArrowLeft / ArrowRight keys click the viewer's "Previous image" / "Next image" buttons, unless focus
#: is in a field, list or slider (where the arrows already mean something), and a click anywhere on a
#: gallery card opens it in the viewer.
ARROW_KEYS_JS = """<script>
const win = window.parent;
if (!win.dlArrowKeys) {
  win.dlArrowKeys = true;
  // Registered by a function of the page's own realm (win.Function), not by this iframe's script:
  // Chrome stops calling a listener once the document that registered it is gone, and Streamlit
  // replaces this iframe whenever the viewer is drawn anew.
  new win.Function(`
    document.addEventListener("keydown", (event) => {
      const t = event.target || {};
      const tag = (t.tagName || "").toLowerCase();
      const role = t.getAttribute ? t.getAttribute("role") || "" : "";
      if (event.altKey || event.ctrlKey || event.metaKey || t.isContentEditable
          || ["input", "textarea", "select"].includes(tag)
          || ["slider", "tab", "listbox", "combobox", "option", "radio", "spinbutton"].includes(role)) return;
      const name = {ArrowLeft: "Previous image", ArrowRight: "Next image"}[event.key];
      if (!name) return;
      const button = Array.from(document.querySelectorAll("button")).find(
        (b) => !b.disabled && b.innerText.trim().endsWith(name));
      if (button) { event.preventDefault(); button.click(); }
    });
    // A click anywhere on a gallery card (not on one of its other controls) clicks its "Select <name>"
    // button; on a narrow screen, where the viewer sits above the gallery, the page scrolls up to it.
    document.addEventListener("click", (event) => {
      const target = event.target;
      const card = target && target.closest ? target.closest("div[class*='st-key-card_']") : null;
      if (!card) return;
      const onSelect = target.closest("[class*='st-key-select_']");
      if (!onSelect && target.closest("button, a, input, textarea, select, [role=button], [role=combobox]")) return;
      if (!onSelect) {
        const select = Array.from(card.querySelectorAll("[class*='st-key-select_'] button")).find((b) => !b.disabled);
        if (!select) return;
        select.click();
      }
      const viewer = document.querySelector(".st-key-dl_viewer_pane");
      if (viewer && window.innerWidth <= 640) viewer.scrollIntoView({block: "start"});
    });
  `)();
}
</script>"""


#: Asks the browser to confirm leaving or reloading the page while the session holds images: they live
#: only in this session's memory, so a reload would discard the worklist, decisions and notes.
#: ``__COUNT__`` is the number of images; the listener is installed once and reads the latest count.
UNLOAD_GUARD_JS = """<script>
const win = window.parent;
win.dlWorklistImages = __COUNT__;
if (!win.dlUnloadGuard) {
  win.dlUnloadGuard = true;
  // Registered by a function of the page's own realm (win.Function), not by this iframe's script:
  // Streamlit replaces this iframe when the count changes, and Chrome stops calling a listener once
  // the document that registered it is gone (the guard then silently never fired).
  new win.Function(`
    window.addEventListener("beforeunload", (event) => {
      if (window.dlWorklistImages > 0) { event.preventDefault(); event.returnValue = ""; }
    });
  `)();
}
</script>"""


def unload_guard_js(n_images: int) -> str:
    """The page-leave guard script for a session holding ``n_images`` images (0 disarms it)."""
    return UNLOAD_GUARD_JS.replace("__COUNT__", str(int(n_images)))


#: On screens wide enough for side-by-side columns (Streamlit stacks them at 640 px and below), the
#: gallery's column is drawn left of the viewer's; the page (and screen reader) order stays viewer first.
#: The viewer's column sticks below the app header and scrolls on its own, so it stays in view while
#: the clinician scrolls down a long gallery and clicks a card there.
MASTER_DETAIL_CSS = """<style>
@media (min-width: 641px) {
  [data-testid="stColumn"]:has(.st-key-dl_gallery_pane) { order: -1; }
  .st-key-dl_gallery_pane { padding-bottom: 40vh; }  /* room for the sticky viewer beside the last cards */
  [data-testid="stColumn"]:has(.st-key-dl_viewer_pane) {
    position: sticky; top: 3.75rem; align-self: flex-start;
    max-height: calc(100vh - 4.5rem); overflow-y: auto; overscroll-behavior: contain;
  }
}
</style>"""
