/* attnlab dashboard: view state in the URL, page links that keep it, the active page, download names.
   See attnlab/dashboard/viewstate.py for the Python half. */
(function () {
  "use strict";
  var SHARED = ["run", "trace", "item", "layer", "head"];

  function sharedQuery() {
    var now = new URLSearchParams(window.location.search), out = new URLSearchParams();
    SHARED.forEach(function (k) { if (now.has(k)) { out.set(k, now.get(k)); } });
    var q = out.toString();
    return q ? "?" + q : "";
  }

  /* Page links carry the shared keys (so copying a link or opening it in a tab keeps the view);
     the link of the page shown gets aria-current="page". */
  function refreshNav() {
    var path = window.location.pathname, q = sharedQuery();
    document.querySelectorAll("a.nav-link").forEach(function (a) {
      var base = a.getAttribute("data-path");
      if (!base) { base = (a.getAttribute("href") || "/").split("?")[0]; a.setAttribute("data-path", base); }
      if (a.getAttribute("href") !== base + q) { a.setAttribute("href", base + q); }
      if (base === path) { a.setAttribute("aria-current", "page"); } else { a.removeAttribute("aria-current"); }
    });
  }

  /* dcc.Link navigates to its own href prop; a click on a page link goes to the page with the shared keys. */
  document.addEventListener("click", function (e) {
    var a = e.target && e.target.closest ? e.target.closest("a.nav-link") : null;
    if (!a || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) { return; }
    e.preventDefault();
    e.stopPropagation();
    window.history.pushState({}, "", (a.getAttribute("data-path") || a.pathname) + sharedQuery());
    window.dispatchEvent(new CustomEvent("_dashprivate_pushstate"));
    window.scrollTo(0, 0);
    refreshNav();
  }, true);
  window.addEventListener("popstate", refreshNav);
  window.addEventListener("_dashprivate_pushstate", refreshNav);

  /* The PNG download of a figure is named after its provenance (layout.meta.export); Plotly.react resets
     the config on every redraw, so the name is set again after each one. */
  function nameDownload(gd) {
    var meta = gd.layout && gd.layout.meta, ctx = gd._context;
    if (meta && meta.export && ctx && ctx.toImageButtonOptions) {
      ctx.toImageButtonOptions = Object.assign({}, ctx.toImageButtonOptions, {filename: meta.export});
    }
  }
  function watchGraphs() {
    document.querySelectorAll(".js-plotly-plot").forEach(function (gd) {
      if (!gd.__attnlabNamed && typeof gd.on === "function") {
        gd.__attnlabNamed = true;
        gd.on("plotly_afterplot", function () { nameDownload(gd); });
        nameDownload(gd);
      }
    });
  }
  var pending = false;
  new MutationObserver(function () {
    if (pending) { return; }
    pending = true;
    window.requestAnimationFrame(function () { pending = false; watchGraphs(); refreshNav(); });
  }).observe(document.documentElement, {childList: true, subtree: true});

  window.attnlab = Object.assign(window.attnlab || {}, {
    /* Write the page's state into the address bar (replacing the entry: no navigation, no request);
       shared keys the page does not have (layer, head on Flow) are kept for the next page. */
    syncUrl: function (names, values) {
      var params = new URLSearchParams();
      names.forEach(function (name, i) {
        var v = values[i];
        if (v === null || v === undefined || v === "" || (Array.isArray(v) && v.length === 0)) { return; }
        params.set(name, Array.isArray(v) ? v.join(",") : String(v));
      });
      var now = new URLSearchParams(window.location.search);
      SHARED.forEach(function (k) {  /* layer and head stay for the pages that have them */
        if (names.indexOf(k) < 0 && now.has(k)) { params.set(k, now.get(k)); }
      });
      var q = params.toString(), url = window.location.pathname + (q ? "?" + q : "");
      if (url !== window.location.pathname + window.location.search) {
        window.history.replaceState(window.history.state, "", url);
      }
      refreshNav();
      return url;
    }
  });
})();
