/* attnlab dashboard: the data behind any figure as CSV, exactly what is drawn (the "Data (.csv)" button under
   every graph; see attnlab/dashboard/widgets.py). One row per drawn point: per cell for 2-D z (heatmaps), per
   element of x / y / z / text / customdata otherwise. */
(function () {
  "use strict";
  var COLUMNS = ["trace", "name", "type", "row", "col", "x", "y", "z", "text", "customdata"];

  function cell(v) {
    if (v === null || v === undefined || (typeof v === "number" && Number.isNaN(v))) { return ""; }
    var s = (typeof v === "object") ? JSON.stringify(Array.isArray(v) || ArrayBuffer.isView(v) ? Array.from(v) : v)
      : String(v);
    return /[",\n\r]/.test(s) ? "\"" + s.replace(/"/g, "\"\"") + "\"" : s;
  }
  function arr(v) { return (Array.isArray(v) || ArrayBuffer.isView(v)) ? v : null; }
  function at(v, i) { var a = arr(v); return a ? a[i] : undefined; }
  function is2d(z) { var a = arr(z); return !!(a && a.length && arr(a[0])); }

  function rowsOf(t, index) {
    var out = [], name = t.name || "", type = t.type || "";
    if (is2d(t.z)) {
      for (var i = 0; i < t.z.length; i++) {
        for (var j = 0; j < t.z[i].length; j++) {
          var text = is2d(t.text) ? t.text[i][j] : undefined, custom = is2d(t.customdata) ? t.customdata[i][j] : undefined;
          out.push([index, name, type, i, j, arr(t.x) ? t.x[j] : j, arr(t.y) ? t.y[i] : i, t.z[i][j], text, custom]);
        }
      }
      return out;
    }
    var n = 0;
    ["x", "y", "z", "text", "customdata"].forEach(function (k) { var a = arr(t[k]); if (a) { n = Math.max(n, a.length); } });
    for (var k = 0; k < n; k++) {
      out.push([index, name, type, k, "", at(t.x, k), at(t.y, k), at(t.z, k), at(t.text, k), at(t.customdata, k)]);
    }
    return out;
  }

  /* The CSV text of a drawn figure (its plot div). */
  function figureCsv(gd) {
    var lines = [COLUMNS.join(",")];
    (gd._fullData || gd.data || []).forEach(function (t, index) {
      if (t.visible === false) { return; }
      rowsOf(t, index).forEach(function (r) { lines.push(r.map(cell).join(",")); });
    });
    return lines.join("\n") + "\n";
  }

  /* dcc.Download's data for the graph with this id (named after the figure's provenance, layout.meta.export). */
  function figureDownload(graphId) {
    var host = document.getElementById(graphId);
    var gd = host && (host.classList.contains("js-plotly-plot") ? host : host.querySelector(".js-plotly-plot"));
    if (!gd || !(gd._fullData || gd.data)) { return window.dash_clientside.no_update; }
    var meta = gd.layout && gd.layout.meta, name = (meta && meta.export) || ("attnlab_" + graphId);
    return {content: figureCsv(gd), filename: name + ".csv", type: "text/csv", base64: false};
  }

  window.attnlab = Object.assign(window.attnlab || {}, {figureCsv: figureCsv, figureDownload: figureDownload});
})();
