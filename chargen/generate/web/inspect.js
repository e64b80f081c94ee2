// What the network sees: the view of chargen's inspection JSON (chargen inspect --format html, and the served
// page's Inspect view). Plain JavaScript, no dependency: chargenInspect(root, data) fills root.
(function () {
  "use strict";
  // Surprise (nats) below each limit takes its shade, as in the terminal (generate/report.py's SHADES).
  var SHADES = [[0.5, "#ffffff"], [1, "#ffd7d7"], [2, "#ffafaf"], [3, "#ff8787"], [4.5, "#ff5f5f"], [Infinity, "#ff0000"]];
  var GATE_COLOURS = { input: "#1f77b4", forget: "#d62728", output: "#2ca02c", reset: "#9467bd", update: "#ff7f0e" };

  function shade(surprise) {
    for (var i = 0; i < SHADES.length; i++) if (surprise < SHADES[i][0]) return SHADES[i][1];
    return SHADES[SHADES.length - 1][1];
  }

  function activationColour(a) { // -1 blue, 0 white, +1 red
    var x = Math.max(-1, Math.min(1, a)), k = Math.round(255 * (1 - Math.abs(x)));
    return x >= 0 ? "rgb(255," + k + "," + k + ")" : "rgb(" + k + "," + k + ",255)";
  }

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function show(c) { return c === "\n" ? "\\n" : c === " " ? "\u2423" : c; }

  function chargenInspect(root, data) {
    root.textContent = "";
    root.classList.add("chargen-inspect");
    var n = data.chars.length, total = 0;
    for (var i = 0; i < n; i++) total -= data.logprobs[i];
    root.appendChild(el("p", { "class": "summary" },
      n + " characters, " + (total / n).toFixed(4) + " nats/char (" + (total / n / Math.LN2).toFixed(4) + " bits/char)"));

    var controls = el("div", { "class": "controls" });
    var picker = el("select", { id: "unit-layer", "aria-label": "layer and kind" });
    picker.appendChild(el("option", { value: "" }, "shade by surprise"));
    Object.keys(data.units).forEach(function (layer) {
      Object.keys(data.units[layer]).forEach(function (kind) {
        picker.appendChild(el("option", { value: layer + "|" + kind }, layer + " " + kind));
      });
    });
    var unit = el("select", { id: "unit-index", "aria-label": "unit" });
    (data.unit_ids || []).forEach(function (u, j) { unit.appendChild(el("option", { value: String(j) }, "unit " + u)); });
    controls.appendChild(el("label", {}, "colour: "));
    controls.appendChild(picker);
    controls.appendChild(unit);
    root.appendChild(controls);

    var text = el("div", { "class": "text", id: "inspect-text" });
    var tip = el("div", { "class": "tip", id: "inspect-tip", hidden: "" });
    var spans = [];
    for (var t = 0; t < n; t++) {
      var s = el("span", { "class": "ch", "data-i": String(t), "data-logprob": String(data.logprobs[t]) }, data.chars[t]);
      spans.push(s);
      text.appendChild(s);
    }
    root.appendChild(text);
    root.appendChild(tip);

    function surprise() { for (var t = 0; t < n; t++) spans[t].style.background = shade(-data.logprobs[t]); }
    function byUnit(layer, kind, j) {
      var rows = data.units[layer][kind];
      for (var t = 0; t < n; t++) spans[t].style.background = activationColour(rows[t][j]);
    }
    function recolour() {
      if (!picker.value) return surprise();
      var parts = picker.value.split("|");
      byUnit(parts[0], parts[1], Number(unit.value || 0));
    }
    picker.addEventListener("change", recolour);
    unit.addEventListener("change", recolour);
    surprise();

    function guesses(ev) {
      var target = ev.target.closest ? ev.target.closest(".ch") : null;
      if (!target) return;
      var t = Number(target.getAttribute("data-i")), rows = data.top[t] || [];
      tip.textContent = "";
      tip.appendChild(el("div", { "class": "head" }, "'" + show(data.chars[t]) + "': log p " + data.logprobs[t].toFixed(3) + "; guesses:"));
      rows.forEach(function (g) { tip.appendChild(el("div", { "class": "guess" }, show(g[0]) + "  " + (100 * g[1]).toFixed(1) + "%")); });
      tip.hidden = false;
      tip.setAttribute("data-i", String(t));
    }
    text.addEventListener("mouseover", guesses);
    text.addEventListener("click", guesses);

    var best = el("div", { "class": "units" });
    best.appendChild(el("h3", {}, "Units that track the text"));
    Object.keys(data.correlations).forEach(function (feature) {
      var row = el("div", { "class": "feature" });
      row.appendChild(el("span", { "class": "name" }, feature + ": "));
      if (!data.correlations[feature].length) row.appendChild(el("span", { "class": "none" }, "(it does not vary in this text)"));
      data.correlations[feature].forEach(function (u) {
        var b = el("button", { type: "button", "class": "unit", "data-layer": "layer " + u.layer, "data-kind": u.kind, "data-unit": String(u.unit) },
          "L" + u.layer + " " + u.kind + " " + u.unit + " (r " + u.r.toFixed(2) + ")");
        b.addEventListener("click", function () {
          var j = (data.unit_ids || []).indexOf(u.unit), key = "layer " + u.layer + "|" + u.kind;
          if (j < 0 || !data.units["layer " + u.layer]) { b.title = "this unit was not kept"; return; }
          picker.value = key;
          unit.value = String(j);
          recolour();
        });
        row.appendChild(b);
      });
      best.appendChild(row);
    });
    root.appendChild(best);
    root.appendChild(gatesPicture(data.gates));
  }

  function gatesPicture(gates) {
    var box = el("div", { "class": "gates" });
    box.appendChild(el("h3", {}, "Gate saturation (fraction of characters: left < 0.1, right > 0.9)"));
    var ns = "http://www.w3.org/2000/svg", size = 180, pad = 24;
    Object.keys(gates).forEach(function (layer) {
      var svg = document.createElementNS(ns, "svg");
      svg.setAttribute("width", size + pad); svg.setAttribute("height", size + pad);
      svg.setAttribute("class", "scatter"); svg.setAttribute("data-layer", layer);
      var frame = document.createElementNS(ns, "polyline");
      frame.setAttribute("points", pad + ",0 " + pad + "," + size + " " + (pad + size) + "," + size);
      frame.setAttribute("fill", "none"); frame.setAttribute("stroke", "#888");
      svg.appendChild(frame);
      var diag = document.createElementNS(ns, "line");
      diag.setAttribute("x1", pad); diag.setAttribute("y1", 0); diag.setAttribute("x2", pad + size); diag.setAttribute("y2", size);
      diag.setAttribute("stroke", "#ddd");
      svg.appendChild(diag);
      Object.keys(gates[layer]).forEach(function (gate) {
        var g = gates[layer][gate];
        for (var u = 0; u < g.left.length; u++) {
          var dot = document.createElementNS(ns, "circle");
          dot.setAttribute("cx", pad + size * g.left[u]); dot.setAttribute("cy", size * (1 - g.right[u]));
          dot.setAttribute("r", 2.5); dot.setAttribute("fill", GATE_COLOURS[gate] || "#000"); dot.setAttribute("opacity", 0.6);
          dot.setAttribute("class", "gate-dot"); dot.setAttribute("data-gate", gate);
          svg.appendChild(dot);
        }
      });
      var caption = el("div", { "class": "caption" }, layer + ": " + Object.keys(gates[layer]).join(", ") + " (x: left, y: right)");
      var wrap = el("figure", {});
      wrap.appendChild(svg);
      wrap.appendChild(caption);
      box.appendChild(wrap);
    });
    return box;
  }

  window.chargenInspect = chargenInspect;
})();
