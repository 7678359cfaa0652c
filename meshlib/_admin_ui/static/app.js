// meshlib's admin page: polls ui/state and draws routes, clusters (with rates from counter deltas) and recent errors.
// No framework and nothing from elsewhere: the page must work offline. Text is set with textContent, never as HTML.
"use strict";

(function () {
  const params = new URLSearchParams(window.location.search);
  // ?interval=MS polls faster or slower (tests use it); one second by default.
  const interval = Math.max(100, Number(params.get("interval")) || 1000);
  let previous = null; // the last state's clock and each cluster's counts, for the rates

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "class") node.className = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fixed(value, digits) {
    return Number.isFinite(value) ? value.toFixed(digits) : "–";
  }

  function ago(seconds) {
    if (seconds < 1) return "just now";
    if (seconds < 90) return Math.round(seconds) + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    return Math.round(seconds / 3600) + " h ago";
  }

  function rates(state) {
    const out = {};
    for (const [name, cluster] of Object.entries(state.clusters)) {
      const total = cluster.requests + cluster.refused;
      const before = previous && previous.clusters[name];
      const seconds = previous ? state.clock - previous.clock : 0;
      if (!before || seconds <= 0) {
        out[name] = null;
        continue;
      }
      // A restarted worker starts its counts again: never show a negative rate.
      const requests = Math.max(0, total - before.total);
      const errors = Math.max(0, cluster.errors - before.errors);
      out[name] = {
        rps: requests / seconds,
        eps: errors / seconds,
        errorRate: requests > 0 ? Math.min(1, errors / requests) : errors > 0 ? 1 : 0,
      };
    }
    return out;
  }

  function remember(state) {
    const clusters = {};
    for (const [name, cluster] of Object.entries(state.clusters)) {
      clusters[name] = { total: cluster.requests + cluster.refused, errors: cluster.errors };
    }
    previous = { clock: state.clock, clusters };
  }

  function renderHeader(state) {
    document.getElementById("service").textContent = state.service;
    document.getElementById("version").textContent = String(state.version);
    document.getElementById("digest").textContent = String(state.digest).slice(0, 12);
    let workers = state.workers === 1 ? "1 process" : state.workers + " workers";
    if (state.workers_missing.length) workers += " (not answering: " + state.workers_missing.join(", ") + ")";
    document.getElementById("workers").textContent = workers;
    document.getElementById("updated").textContent = new Date(state.now * 1000).toLocaleTimeString();
  }

  function renderRoutes(state) {
    const body = document.querySelector("#routes tbody");
    const rows = state.routes.map((route) => {
      let to;
      if (route.direct_response !== null) {
        to = el("td", {}, "direct response " + route.direct_response);
      } else {
        to = el(
          "td",
          { class: "split" },
          ...route.split.map((leg) =>
            el(
              "span",
              { class: "leg", "data-cluster": leg.cluster, "data-weight": leg.weight, "data-percent": leg.percent },
              bar(leg.percent),
              leg.cluster + " " + leg.percent + "%",
            ),
          ),
        );
      }
      const name = route.implicit ? route.name + " (implicit)" : route.name;
      return el("tr", { "data-route": route.name }, el("td", {}, name), el("td", {}, route.match.join(", ") || "any"), to);
    });
    body.replaceChildren(...rows);
  }

  function bar(percent) {
    // Through the CSSOM: the page's Content-Security-Policy refuses inline style attributes.
    const node = el("span", { class: "bar" });
    node.style.width = Math.max(2, percent) + "px";
    return node;
  }

  function breakerBadge(state) {
    if (state === null) return el("span", { class: "badge quiet", "data-breaker": "none" }, "no breaker");
    const tone = state === "closed" ? "good" : state === "open" ? "bad" : "warn";
    return el("span", { class: "badge " + tone, "data-breaker": state }, "breaker " + state);
  }

  function endpointRow(endpoint) {
    let health;
    if (endpoint.ejected) {
      health = el("span", { class: "badge bad" }, "ejected (×" + endpoint.times_ejected + ")");
    } else if (!endpoint.healthy) {
      health = el("span", { class: "badge bad" }, "unhealthy");
    } else {
      health = el("span", { class: "badge good" }, "healthy");
    }
    return el(
      "tr",
      {
        class: "endpoint",
        "data-endpoint": endpoint.url,
        "data-healthy": endpoint.healthy,
        "data-ejected": endpoint.ejected,
      },
      el("td", {}, endpoint.url),
      el("td", { class: "num" }, endpoint.weight),
      el("td", {}, health),
      el("td", { class: "num" }, endpoint.in_flight),
      el("td", { class: "num" }, endpoint.requests),
    );
  }

  function renderClusters(state, rate) {
    const sections = Object.entries(state.clusters).map(([name, cluster]) => {
      const r = rate[name];
      const header = el(
        "header",
        {},
        el("h3", {}, name),
        breakerBadge(cluster.breaker),
        el("span", { class: "rps", "data-rps": r ? r.rps.toFixed(3) : "" }, (r ? fixed(r.rps, 1) : "–") + " req/s"),
        el("span", { class: "eps", "data-eps": r ? r.eps.toFixed(3) : "" }, (r ? fixed(r.eps, 1) : "–") + " errors/s"),
        el(
          "span",
          { class: "error-rate" + (r && r.errorRate > 0 ? " bad" : ""), "data-error-rate": r ? r.errorRate.toFixed(4) : "" },
          (r ? fixed(r.errorRate * 100, 1) : "–") + "% errors",
        ),
        el("span", { class: "quiet" }, cluster.lb),
      );
      const table = el(
        "table",
        {},
        el(
          "thead",
          {},
          el("tr", {}, el("th", {}, "endpoint"), el("th", {}, "weight"), el("th", {}, "state"), el("th", {}, "in flight"), el("th", {}, "requests")),
        ),
        el("tbody", {}, ...cluster.endpoints.map(endpointRow)),
      );
      return el("section", { class: "cluster", "data-cluster": name, "data-breaker": cluster.breaker || "none" }, header, table);
    });
    document.getElementById("clusters").replaceChildren(...sections);
  }

  function renderErrors(state) {
    const rows = state.recent_errors.map((error) => {
      const what = error.status !== null && error.status !== undefined ? error.code + " (" + error.status + ")" : error.code;
      const when = new Date(error.time * 1000);
      const worker = error.worker !== undefined ? " · worker " + error.worker : "";
      return el(
        "tr",
        { class: "error", "data-code": error.code, "data-cluster": error.cluster, "data-endpoint": error.endpoint || "" },
        el("td", { title: when.toISOString() }, ago(state.now - error.time) + worker),
        el("td", {}, error.cluster),
        el("td", {}, error.endpoint || "–"),
        el("td", { class: "bad" }, what),
        el("td", { class: "message" }, error.message),
      );
    });
    document.querySelector("#errors tbody").replaceChildren(...rows);
    document.getElementById("no-errors").hidden = rows.length > 0;
  }

  async function poll() {
    const status = document.getElementById("status");
    try {
      const response = await fetch("ui/state", { cache: "no-store" });
      if (!response.ok) throw new Error("ui/state answered " + response.status);
      const state = await response.json();
      const rate = rates(state);
      renderHeader(state);
      renderRoutes(state);
      renderClusters(state, rate);
      renderErrors(state);
      remember(state);
      status.textContent = "live";
      status.dataset.state = "live";
    } catch (error) {
      // Keep showing the last state: the proxy may be reloading or restarting.
      status.textContent = "not updating: " + error.message;
      status.dataset.state = "error";
    } finally {
      window.setTimeout(poll, interval);
    }
  }

  poll();
})();
