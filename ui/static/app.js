// CloudSkin operator UI: the node page's live charts (uPlot, fed by
// server-sent events). Everything else is plain HTML and htmx.
(function () {
  "use strict";
  function ready(fn) { if (document.readyState !== "loading") fn(); else document.addEventListener("DOMContentLoaded", fn); }

  var defs = {
    cpu: { series: [{ label: "CPU %", stroke: "#0b5cad", key: "cpu" }], range: [0, 100] },
    mem: { series: [{ label: "Memory %", stroke: "#8250df", key: "mem" }], range: [0, 100] },
    power: { series: [{ label: "Power W", stroke: "#bf8700", key: "power" }, { label: "Solar W", stroke: "#2da44e", key: "solar" }] },
    battery: { series: [{ label: "Battery %", stroke: "#2da44e", key: "battery" }], range: [0, 100] },
    net: { series: [{ label: "rx B/s", stroke: "#0b5cad", key: "rx" }, { label: "tx B/s", stroke: "#cf222e", key: "tx" }] }
  };
  var maxPoints = 1800;

  function setup() {
    var box = document.getElementById("charts");
    var seed = document.getElementById("series");
    if (!box || !seed || typeof uPlot === "undefined") return;
    var points = [];
    try { points = JSON.parse(seed.textContent) || []; } catch (e) { points = []; }
    var charts = [];
    box.querySelectorAll(".chart").forEach(function (el) {
      var d = defs[el.dataset.series];
      var data = [points.map(function (p) { return p.t; })];
      d.series.forEach(function (s) { data.push(points.map(function (p) { return p[s.key] == null ? null : p[s.key]; })); });
      var opts = {
        width: Math.max(260, el.clientWidth), height: 160,
        series: [{}].concat(d.series.map(function (s) { return { label: s.label, stroke: s.stroke, width: 1.5, spanGaps: false }; })),
        scales: { x: { time: true }, y: d.range ? { range: d.range } : { auto: true } },
        axes: [{}, { size: 64 }],
        legend: { live: true }
      };
      var u = new uPlot(opts, data, el);
      charts.push({ u: u, def: d, data: data, el: el });
    });
    var latest = document.getElementById("latest");
    var state = document.getElementById("live-state");
    var last = points.length ? points[points.length - 1].t : null;
    function show(p) {
      if (!latest) return;
      var parts = ["CPU " + p.cpu.toFixed(1) + "%", "mem " + p.mem.toFixed(1) + "%", p.power.toFixed(1) + " W"];
      if (p.battery != null) parts.push("battery " + p.battery.toFixed(0) + "%");
      parts.push("rx " + Math.round(p.rx) + " B/s", "tx " + Math.round(p.tx) + " B/s");
      latest.textContent = parts.join(" · ") + " at " + new Date(p.t * 1000).toLocaleTimeString();
      latest.dataset.t = String(p.t);
      var b = document.getElementById("battery-now");
      if (b && p.battery != null) b.textContent = p.battery.toFixed(0) + "%";
    }
    if (points.length) show(points[points.length - 1]);
    var pending = [];
    var scheduled = false;
    function flush() {
      scheduled = false;
      var batch = pending; pending = [];
      charts.forEach(function (c) {
        batch.forEach(function (p) {
          c.data[0].push(p.t);
          c.def.series.forEach(function (s, i) { c.data[i + 1].push(p[s.key] == null ? null : p[s.key]); });
        });
        if (c.data[0].length > maxPoints) c.data.forEach(function (a) { a.splice(0, a.length - maxPoints); });
        c.u.setData(c.data);
      });
      if (batch.length) show(batch[batch.length - 1]);
    }
    var url = box.dataset.live;
    function connect() {
      var es = new EventSource(url + (last ? "?since=" + last : ""));
      es.addEventListener("open", function () { if (state) state.textContent = "live"; });
      es.addEventListener("sample", function (ev) {
        var p = JSON.parse(ev.data);
        if (last && p.t <= last) return;
        last = p.t;
        pending.push(p);
        if (!scheduled) { scheduled = true; requestAnimationFrame(flush); }
      });
      es.addEventListener("failure", function (ev) { if (state) state.textContent = "error: " + JSON.parse(ev.data); });
      es.onerror = function () { if (state) state.textContent = "reconnecting…"; };
    }
    connect();
    var resizeTimer;
    window.addEventListener("resize", function () {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(function () { charts.forEach(function (c) { c.u.setSize({ width: Math.max(260, c.el.clientWidth), height: 160 }); }); }, 150);
    });
  }
  ready(setup);
})();
