// Cairn's web console: sign-in, flights and passengers, the live audit log
// and the operations view. Plain JavaScript, no build step.
//
// Live data comes over /ws (RES protocol, through the vendored resclient);
// writes go to the HTTP API so that a refusal shows its problem detail.
// The access token lives in sessionStorage and travels only in the
// Authorization header (and the RES auth request), never in a URL or a log.
(function () {
  "use strict";

  var ResClient = window.resclient && window.resclient.default;

  var SESSION_KEY = "cairn.session";
  var SESSION_ENDED = "Your session ended, sign in again";
  var CHART_SECONDS = 60;

  // ---------------------------------------------------------------------
  // DOM helpers. Text is always set as text (textContent, text nodes),
  // never parsed as HTML.
  // ---------------------------------------------------------------------

  var BOOLEAN_PROPS = { hidden: 1, disabled: 1, required: 1, checked: 1, selected: 1, readOnly: 1, noValidate: 1 };

  function h(tag, props) {
    var node = document.createElement(tag);
    setProps(node, props);
    for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }

  function setProps(node, props) {
    if (!props) return;
    Object.keys(props).forEach(function (key) {
      var value = props[key];
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value == null ? "" : String(value);
      else if (key === "value") node.value = value;
      else if (BOOLEAN_PROPS[key]) node[key] = !!value;
      else if (key.slice(0, 2) === "on" && typeof value === "function") node.addEventListener(key.slice(2), value);
      else if (value != null && value !== false) node.setAttribute(key, String(value));
    });
  }

  function append(node, child) {
    if (child == null || child === false) return;
    if (Array.isArray(child)) child.forEach(function (c) { append(node, c); });
    else node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }

  var SVG_NS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    var node = document.createElementNS(SVG_NS, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, String(attrs[k])); });
    return node;
  }

  function byId(id) { return document.getElementById(id); }

  function setText(node, text) {
    var value = text == null ? "" : String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  /** An error box (role="alert"), hidden while it has nothing to say. */
  function alertBox(id) {
    return h("div", { class: "alert", role: "alert", id: id, hidden: true });
  }
  function showAlert(box, text) { setText(box, text); box.hidden = !text; }
  function clearAlerts(root) {
    Array.prototype.forEach.call(root.querySelectorAll(".alert"), function (b) { showAlert(b, ""); });
  }

  /** A polite status line for progress and confirmations. */
  function statusLine(id) { return h("p", { class: "note", role: "status", id: id }); }

  function field(id, label, input, hint) {
    input.id = id;
    return h("div", { class: "field" }, h("label", { for: id, text: label }), input, hint || null);
  }

  function tableWrap(table, label) {
    return h("div", { class: "table-wrap", role: "region", "aria-label": label, tabindex: "0" }, table);
  }

  function headRow(names) {
    return h("thead", null, h("tr", null, names.map(function (n) { return h("th", { scope: "col", text: n }); })));
  }

  // ---------------------------------------------------------------------
  // Formatting. Times are shown and entered in UTC.
  // ---------------------------------------------------------------------

  function isoUtc(value) {
    var d = new Date(value);
    return isNaN(d.getTime()) ? null : d.toISOString();
  }

  function fmtDateTime(value) {
    var iso = isoUtc(value);
    return iso ? iso.slice(0, 10) + " " + iso.slice(11, 16) + " UTC" : (value || "");
  }

  function fmtSeconds(value) {
    var iso = isoUtc(value);
    return iso ? iso.slice(0, 10) + " " + iso.slice(11, 19) : (value || "");
  }

  /** A datetime-local value ("YYYY-MM-DDTHH:MM") read as UTC, as RFC 3339. */
  function inputToUtc(value) {
    if (!value) return "";
    return value.length === 16 ? value + ":00Z" : value + "Z";
  }

  function utcToInput(value) {
    var iso = isoUtc(value);
    return iso ? iso.slice(0, 16) : "";
  }

  function fmtNumber(value) {
    return value == null ? "—" : String(value);
  }

  function errorText(e) {
    if (!e) return "Something went wrong.";
    if (typeof e === "string") return e;
    return e.message || (e.code ? String(e.code) : "Something went wrong.");
  }

  // ---------------------------------------------------------------------
  // Session: tokens, refresh, sign-in and sign-out.
  // ---------------------------------------------------------------------

  var session = loadSession();
  var refreshTimer = null;
  var refreshing = null;
  var notice = null; // { text, error } shown by the next page rendered

  function loadSession() {
    try {
      var s = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
      return s && s.accessToken && s.tenant ? s : null;
    } catch (e) {
      return null;
    }
  }

  function saveSession() {
    try {
      if (session) sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
      else sessionStorage.removeItem(SESSION_KEY);
    } catch (e) { /* storage unavailable: the session lasts as long as the page */ }
  }

  /** The claims of a JWT (its payload, base64url JSON); {} if unreadable. */
  function claimsOf(token) {
    try {
      var part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      while (part.length % 4) part += "=";
      var binary = atob(part);
      var bytes = new Uint8Array(binary.length);
      for (var i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
      return JSON.parse(new TextDecoder().decode(bytes)) || {};
    } catch (e) {
      return {};
    }
  }

  function rolesOf(claims) {
    var roles = Array.isArray(claims.roles) ? claims.roles.slice() : [];
    var realm = claims.realm_access && Array.isArray(claims.realm_access.roles) ? claims.realm_access.roles : [];
    realm.forEach(function (r) { if (roles.indexOf(r) < 0) roles.push(r); });
    return roles;
  }

  function isSuperAdmin() {
    return !!session && session.roles.indexOf("super-admin") >= 0;
  }

  /** The tenant whose data is shown. */
  function shownTenant() {
    return session ? session.viewTenant || session.tenant : "";
  }

  function realmUrl(tenant, endpoint) {
    return "/realms/" + encodeURIComponent(tenant) + "/protocol/openid-connect/" + endpoint;
  }

  async function readJson(response) {
    var text = "";
    try { text = await response.text(); } catch (e) { return null; }
    if (!text) return null;
    try { return JSON.parse(text); } catch (e) { return null; }
  }

  function OAuthError(message, final) { this.message = message; this.final = final; }

  /** POST to the token endpoint; resolves with its JSON. */
  async function tokenRequest(tenant, form) {
    var response;
    try {
      response = await fetch(realmUrl(tenant, "token"), {
        method: "POST",
        headers: { accept: "application/json" },
        body: new URLSearchParams(form),
        cache: "no-store",
      });
    } catch (e) {
      throw new OAuthError("Cannot reach the server. Check your connection and try again.", false);
    }
    var body = await readJson(response);
    if (response.ok && body && body.access_token) return body;
    var message = (body && (body.error_description || body.detail || body.title || body.error)) ||
      "Sign-in failed (HTTP " + response.status + ").";
    throw new OAuthError(message, response.status < 500);
  }

  function applyTokens(body) {
    var claims = claimsOf(body.access_token);
    session.accessToken = body.access_token;
    if (body.refresh_token) session.refreshToken = body.refresh_token;
    session.expiresAt = claims.exp ? claims.exp * 1000 : Date.now() + (Number(body.expires_in) || 300) * 1000;
    session.roles = rolesOf(claims);
    if (claims.preferred_username) session.username = claims.preferred_username;
    saveSession();
    scheduleRefresh();
  }

  async function signIn(tenant, username, password) {
    var body = await tokenRequest(tenant, { grant_type: "password", username: username, password: password });
    session = { tenant: tenant, username: username, viewTenant: null, roles: [] };
    applyTokens(body);
    startLive();
    renderHeader();
  }

  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    refreshTimer = null;
    if (!session || !session.refreshToken) return;
    var left = session.expiresAt - Date.now();
    var delay = Math.max(1000, left > 120000 ? left - 60000 : left * 0.75);
    refreshTimer = setTimeout(function () { refresh(); }, delay);
  }

  function expiresSoon() {
    return !!session && session.expiresAt - Date.now() < 15000;
  }

  /** Swaps the refresh token for new tokens; resolves true if it did. */
  function refresh() {
    if (!session || !session.refreshToken) return Promise.resolve(false);
    if (refreshing) return refreshing;
    var current = session;
    refreshing = tokenRequest(current.tenant, { grant_type: "refresh_token", refresh_token: current.refreshToken })
      .then(function (body) {
        if (session !== current) return false;
        applyTokens(body);
        reauthenticateLive();
        return true;
      }, function (e) {
        if (session !== current) return false;
        if (e && e.final) {
          endSession(SESSION_ENDED);
        } else {
          // The server is out of reach: try again shortly.
          clearTimeout(refreshTimer);
          refreshTimer = setTimeout(function () { refresh(); }, 10000);
        }
        return false;
      })
      .then(function (ok) { refreshing = null; return ok; });
    return refreshing;
  }

  async function revoke(tenant, token) {
    if (!token) return;
    try {
      await fetch(realmUrl(tenant, "revoke"), { method: "POST", body: new URLSearchParams({ token: token }), cache: "no-store" });
    } catch (e) { /* signed out locally all the same */ }
  }

  async function signOut() {
    var s = session;
    if (!s) return;
    await revoke(s.tenant, s.accessToken);
    await revoke(s.tenant, s.refreshToken);
    if (session === s) endSession(null);
  }

  /** Forgets the session and shows the sign-in page (with `message`). */
  function endSession(message) {
    if (!session) return;
    session = null;
    saveSession();
    clearTimeout(refreshTimer);
    refreshTimer = null;
    notice = message ? { text: message, error: true } : null;
    showBanner("");
    wanted = message && !/^#\/signin/.test(location.hash) ? location.hash : null;
    disposePage();
    stopLive();
    renderHeader();
    navigate("#/signin");
  }

  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible" && session && session.expiresAt - Date.now() < 60000) refresh();
  });

  // ---------------------------------------------------------------------
  // HTTP API: JSON, bearer token, problem+json refusals.
  // ---------------------------------------------------------------------

  function ApiError(status, message, problem) {
    this.status = status;
    this.message = message;
    this.problem = problem || null;
  }

  /** The words of a refusal: the problem's detail, else its title. */
  function problemText(body, response) {
    if (body && (body.detail || body.title)) return body.detail || body.title;
    if (body && body.error_description) return body.error_description;
    return "The request failed (HTTP " + response.status + (response.statusText ? " " + response.statusText : "") + ").";
  }

  async function api(method, path, options) {
    options = options || {};
    if (!session) throw new ApiError(401, SESSION_ENDED);
    if (expiresSoon()) await refresh();
    if (!session) throw new ApiError(401, SESSION_ENDED);
    var headers = { accept: "application/json, application/problem+json", authorization: "Bearer " + session.accessToken };
    if (options.body !== undefined) headers["content-type"] = "application/json";
    if (options.ifMatch !== undefined) headers["if-match"] = '"' + options.ifMatch + '"';
    if (session.viewTenant && !options.ownTenant) headers["x-cairn-tenant"] = session.viewTenant;
    var response;
    try {
      response = await fetch(path, {
        method: method,
        headers: headers,
        body: options.body === undefined ? undefined : JSON.stringify(options.body),
        cache: "no-store",
      });
    } catch (e) {
      throw new ApiError(0, "Cannot reach the server. Check your connection and try again.");
    }
    var body = await readJson(response);
    if (response.status === 401) {
      if (!options.retried && (await refresh())) return api(method, path, Object.assign({}, options, { retried: true }));
      endSession(SESSION_ENDED);
      throw new ApiError(401, SESSION_ENDED, body);
    }
    if (!response.ok) throw new ApiError(response.status, problemText(body, response), body);
    return { status: response.status, body: body };
  }

  /** What to say after a write the server accepted. */
  function acceptedText(result, done) {
    var b = result && result.body;
    if (result && result.status === 202) {
      return (b && b.detail) || done + " The view updates once the read model catches up.";
    }
    return done;
  }

  // ---------------------------------------------------------------------
  // Live connection (RES over /ws).
  // ---------------------------------------------------------------------

  var live = { client: null, detach: null };

  function wsUrl() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  }

  function authParams() {
    var params = { token: session.accessToken };
    if (session.viewTenant) params.tenant = session.viewTenant;
    return params;
  }

  async function authenticateLive(client) {
    if (!session) return;
    if (expiresSoon()) await refresh();
    if (!session) return;
    try {
      await client.authenticate("identity.session", "token", authParams());
    } catch (e) {
      liveAuthFailed(e);
    }
  }

  function liveAuthFailed(e) {
    if (!session) return;
    if (session.viewTenant) {
      switchTenant(null, "Cannot view tenant " + session.viewTenant + ": " + errorText(e));
    } else {
      endSession(SESSION_ENDED);
    }
  }

  function reauthenticateLive() {
    if (live.client && session) {
      Promise.resolve(live.client.authenticate("identity.session", "token", authParams())).catch(liveAuthFailed);
    }
  }

  function startLive() {
    stopLive();
    if (!ResClient) {
      showBanner("The live client did not load; live updates are unavailable.");
      return;
    }
    var client = new ResClient(function () { return new WebSocket(wsUrl()); });
    client.setOnConnect(function (c) { return authenticateLive(c); });
    var onConnect = function () { setLiveStatus(true); };
    var onDisconnect = function () { setLiveStatus(false); };
    var onError = function () { /* reconnects by itself; the indicator says offline */ };
    client.on("connect", onConnect);
    client.on("disconnect", onDisconnect);
    client.on("error", onError);
    live.client = client;
    live.detach = function () {
      client.off("connect", onConnect);
      client.off("disconnect", onDisconnect);
      client.off("error", onError);
    };
    Promise.resolve(client.connect()).catch(function () { setLiveStatus(false); });
  }

  function stopLive() {
    if (!live.client) return;
    var client = live.client;
    live.detach();
    live.client = null;
    live.detach = null;
    try { client.disconnect(); } catch (e) { /* already closed */ }
    setLiveStatus(false);
  }

  function setLiveStatus(up) {
    var node = byId("live-status");
    setText(node, up ? "live" : "offline");
    node.classList.toggle("is-live", up);
    node.classList.toggle("is-offline", !up);
  }

  /** A super-admin's view of another tenant: a new connection, as it. */
  function switchTenant(tenant, message) {
    if (!session) return;
    showBanner(message || "");
    session.viewTenant = tenant && tenant !== session.tenant ? tenant : null;
    saveSession();
    disposePage();
    startLive();
    renderHeader();
    route();
  }

  // ---------------------------------------------------------------------
  // Scopes: what a page holds (listeners, timers), released when it goes.
  // ---------------------------------------------------------------------

  function Scope() { this.disposers = []; this.alive = true; }

  Scope.prototype.add = function (fn) {
    if (this.alive) this.disposers.push(fn);
    else fn();
  };

  Scope.prototype.listen = function (target, event, handler) {
    target.on(event, handler);
    this.add(function () { target.off(event, handler); });
  };

  Scope.prototype.every = function (ms, fn) {
    var id = setInterval(fn, ms);
    this.add(function () { clearInterval(id); });
  };

  Scope.prototype.child = function () {
    var c = new Scope();
    this.add(function () { c.dispose(); });
    return c;
  };

  Scope.prototype.dispose = function () {
    if (!this.alive) return;
    this.alive = false;
    this.disposers.splice(0).reverse().forEach(function (fn) {
      try { fn(); } catch (e) { /* keep releasing the rest */ }
    });
  };

  /** Gets a live resource, held while this scope lives; null if it ended first. */
  Scope.prototype.get = async function (rid) {
    if (!live.client) throw new Error("Live updates are unavailable.");
    var resource = await live.client.get(rid);
    if (!this.alive) return null;
    // The server ends subscriptions when the token is revoked or expires.
    this.listen(resource, "unsubscribe", function () { endSession(SESSION_ENDED); });
    return resource;
  };

  /**
   * Shows a live collection of models in `tbody`, one row per item, kept in
   * its order: `add`/`remove` insert and drop rows, each item's `change`
   * updates its row. `makeRow(item)` returns { tr, update(item) }.
   */
  function bindRows(scope, collection, tbody, makeRow, onCount) {
    var entries = [];
    var table = tbody.closest("table");
    var labels = table ? Array.prototype.map.call(table.querySelectorAll("thead th"), function (th) { return th.textContent; }) : [];
    function insert(item, idx) {
      var row = isResError(item) ? errorRow(tbody, item) : makeRow(item);
      row.update(item);
      var off = null;
      if (item && typeof item.on === "function" && !isResError(item)) {
        var onChange = function () { row.update(item); };
        item.on("change", onChange);
        off = function () { item.off("change", onChange); };
      }
      labelCells(row.tr, labels);
      entries.splice(idx, 0, { tr: row.tr, off: off });
      tbody.insertBefore(row.tr, tbody.children[idx] || null);
    }
    function removeAt(idx) {
      var entry = entries.splice(idx, 1)[0];
      if (!entry) return;
      if (entry.off) entry.off();
      entry.tr.remove();
    }
    tbody.textContent = "";
    collection.toArray().forEach(function (item, i) { insert(item, i); });
    var count = function () { if (onCount) onCount(entries.length); };
    scope.listen(collection, "add", function (ev) { insert(ev.item, ev.idx); count(); });
    scope.listen(collection, "remove", function (ev) { removeAt(ev.idx); count(); });
    scope.add(function () { entries.forEach(function (e) { if (e.off) e.off(); }); });
    count();
  }

  /** Each cell's column name, which narrow screens show beside it. */
  function labelCells(tr, labels) {
    if (tr.children.length !== labels.length) return;
    Array.prototype.forEach.call(tr.children, function (cell, i) { cell.setAttribute("data-label", labels[i]); });
  }

  function isResError(value) {
    return !!value && !!window.resclient && typeof window.resclient.isResError === "function" && window.resclient.isResError(value);
  }

  /** A row for an item that could not be read: its id and why. */
  function errorRow(tbody, error) {
    var table = tbody.closest("table");
    var columns = table ? table.querySelectorAll("thead th").length : 1;
    var cell = h("td", { class: "error-text", colspan: String(columns || 1) });
    var rid = typeof error.getResourceId === "function" ? error.getResourceId() : error.rid;
    return {
      tr: h("tr", { class: "row-error" }, cell),
      update: function () { setText(cell, (rid ? rid + ": " : "") + errorText(error)); },
    };
  }

  /**
   * Runs `work` for a button: the button is marked busy (and refuses more
   * clicks) until it ends; a refusal goes to `box`, a success to `status`.
   */
  async function runAction(button, box, status, work) {
    if (button.getAttribute("aria-disabled") === "true") return;
    var page = byId("main");
    clearAlerts(page);
    if (status) setText(status, "");
    button.setAttribute("aria-disabled", "true");
    button.setAttribute("aria-busy", "true");
    try {
      var said = await work();
      if (status && said) setText(status, said);
    } catch (e) {
      if (session) showAlert(box, errorText(e));
    } finally {
      button.removeAttribute("aria-disabled");
      button.removeAttribute("aria-busy");
    }
  }

  /** A button whose accessible name says what and on which item. */
  function actionButton(text, className, onClick) {
    return h("button", { type: "button", class: className || "button-small", onclick: onClick }, text);
  }

  /** Names of empty required inputs, focusing the first; [] if all filled. */
  function missingFields(inputs) {
    var missing = inputs.filter(function (pair) { return !pair[1].value.trim(); });
    missing.forEach(function (pair) { pair[1].setAttribute("aria-invalid", "true"); });
    inputs.forEach(function (pair) { if (pair[1].value.trim()) pair[1].removeAttribute("aria-invalid"); });
    if (missing.length) missing[0][1].focus();
    return missing.map(function (pair) { return pair[0]; });
  }

  // ---------------------------------------------------------------------
  // Header.
  // ---------------------------------------------------------------------

  var tenantsLoaded = false;

  function renderHeader(routeName) {
    var signedIn = !!session;
    byId("nav").hidden = !signedIn;
    byId("session").hidden = !signedIn;
    if (routeName !== undefined) {
      Array.prototype.forEach.call(document.querySelectorAll("#nav a"), function (a) {
        if (a.getAttribute("data-route") === routeName) a.setAttribute("aria-current", "page");
        else a.removeAttribute("aria-current");
      });
    }
    var picker = byId("tenant-picker");
    if (!signedIn || !isSuperAdmin()) {
      // Only a super-admin's header has it (a hidden one would still
      // answer to its label).
      if (picker) picker.remove();
      tenantsLoaded = false;
      if (!signedIn) return;
    }
    var who = session.username + " · " + session.tenant;
    if (session.viewTenant) who += " (viewing " + session.viewTenant + ")";
    setText(byId("session-user"), who);
    if (isSuperAdmin()) {
      if (!picker) {
        var select = h("select", { id: "view-tenant", onchange: function () { switchTenant(select.value, ""); } });
        byId("session").insertBefore(
          h("div", { id: "tenant-picker", class: "tenant-picker" }, h("label", { for: "view-tenant", text: "View tenant" }), select),
          byId("session").firstChild);
      }
      loadTenants();
    }
  }

  async function loadTenants() {
    var select = byId("view-tenant");
    if (!tenantsLoaded) {
      tenantsLoaded = true;
      select.textContent = "";
      select.appendChild(h("option", { value: session.tenant, text: session.tenant }));
      try {
        var result = await api("GET", "/api/admin/tenants", { ownTenant: true });
        var items = (result.body && result.body.items) || [];
        select.textContent = "";
        items.forEach(function (t) {
          select.appendChild(h("option", { value: t.id, text: t.name && t.name !== t.id ? t.id + " (" + t.name + ")" : t.id }));
        });
        if (!items.some(function (t) { return t.id === session.tenant; })) {
          select.insertBefore(h("option", { value: session.tenant, text: session.tenant }), select.firstChild);
        }
      } catch (e) {
        tenantsLoaded = false;
        if (session) showBanner("Could not list tenants: " + errorText(e));
      }
    }
    if (session) select.value = shownTenant();
  }

  function showBanner(text) { showAlert(byId("banner"), text); }

  // ---------------------------------------------------------------------
  // Router.
  // ---------------------------------------------------------------------

  var ROUTES = [
    { pattern: /^\/signin$/, name: "signin", render: signInPage, open: true },
    { pattern: /^\/flights$/, name: "flights", render: flightsPage },
    { pattern: /^\/flights\/([^/]+)$/, name: "flights", render: flightPage },
    { pattern: /^\/audit$/, name: "audit", render: auditPage },
    { pattern: /^\/ops$/, name: "ops", render: opsPage },
  ];

  var current = null; // the page's Scope
  var wanted = null; // where to go after signing in
  var firstRender = true;

  function navigate(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  }

  function disposePage() {
    if (current) current.dispose();
    current = null;
  }

  function route() {
    var path = location.hash.replace(/^#/, "") || "/flights";
    var match = null;
    var found = null;
    for (var i = 0; i < ROUTES.length && !found; i++) {
      match = ROUTES[i].pattern.exec(path);
      if (match) found = ROUTES[i];
    }
    if (!found) return navigate(session ? "#/flights" : "#/signin");
    if (!session && !found.open) {
      wanted = "#" + path;
      return navigate("#/signin");
    }
    if (session && found.name === "signin") return navigate("#/flights");

    disposePage();
    var main = byId("main");
    main.textContent = "";
    renderHeader(found.name);
    current = new Scope();
    var param = match[1] ? decodeURIComponent(match[1]) : undefined;
    found.render(main, current, param);
    if (!firstRender) {
      var heading = main.querySelector("h1");
      if (heading) heading.focus();
    }
    firstRender = false;
  }

  function pageHeading(text) { return h("h1", { tabindex: "-1", text: text }); }

  function takeNotice() { var n = notice; notice = null; return n; }

  // ---------------------------------------------------------------------
  // Sign in.
  // ---------------------------------------------------------------------

  function signInPage(main) {
    var error = alertBox("signin-error");
    var tenant = h("input", { type: "text", name: "tenant", value: "demo", autocomplete: "organization", required: true, spellcheck: "false", autocapitalize: "none" });
    var username = h("input", { type: "text", name: "username", value: "admin", autocomplete: "username", required: true, spellcheck: "false", autocapitalize: "none" });
    var password = h("input", { type: "password", name: "password", autocomplete: "current-password", required: true });
    var button = h("button", { type: "submit", class: "button-primary" }, "Sign in");
    var n = takeNotice();
    if (n) showAlert(error, n.text);

    var form = h("form", { class: "card form signin", noValidate: true, "aria-labelledby": "signin-heading" },
      field("signin-tenant", "Tenant", tenant),
      field("signin-username", "Username", username),
      field("signin-password", "Password", password),
      error,
      h("div", { class: "actions" }, button));

    form.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      if (button.getAttribute("aria-disabled") === "true") return;
      var missing = missingFields([["Tenant", tenant], ["Username", username], ["Password", password]]);
      if (missing.length) return showAlert(error, "Fill in " + missing.join(", ") + ".");
      showAlert(error, "");
      button.setAttribute("aria-disabled", "true");
      setText(button, "Signing in…");
      try {
        await signIn(tenant.value.trim(), username.value.trim(), password.value);
        var to = wanted || "#/flights";
        wanted = null;
        navigate(to);
      } catch (e) {
        showAlert(error, errorText(e));
        password.select();
        password.focus();
      } finally {
        button.removeAttribute("aria-disabled");
        setText(button, "Sign in");
      }
    });

    var heading = pageHeading("Sign in");
    heading.id = "signin-heading";
    main.appendChild(h("div", { class: "signin-page" }, heading, form));
  }

  // ---------------------------------------------------------------------
  // Flights.
  // ---------------------------------------------------------------------

  var flightStatusFilter = "";

  function flightRid(status) {
    return status ? "flights.flights?status=" + status : "flights.flights";
  }

  function countsOf(flight) {
    var p = flight.passengers || {};
    return { total: p.total != null ? p.total : 0, boarded: p.boarded != null ? p.boarded : 0 };
  }

  function statusBadge() { return h("span", { class: "badge" }); }
  function setBadge(badge, status) {
    setText(badge, status);
    badge.className = "badge badge-" + String(status || "unknown").replace(/[^a-z]/g, "");
  }

  function flightPath(id, tail) {
    return "/api/flights/" + encodeURIComponent(id) + (tail || "");
  }

  var FLIGHT_WRITES = {
    depart: ["POST", "/departure", " departed."],
    land: ["POST", "/landing", " landed."],
    delete: ["DELETE", "", " deleted."],
  };

  /** Asks before a flight is deleted: it cannot be undone. */
  function confirmDelete(flight) {
    return window.confirm("Delete flight " + flight.number + "? This cannot be undone.");
  }

  /** Departs, lands or deletes a flight over HTTP; resolves with what to say. */
  async function flightWrite(kind, flight) {
    var write = FLIGHT_WRITES[kind];
    var number = flight.number;
    return acceptedText(await api(write[0], flightPath(flight.id, write[1])), "Flight " + number + write[2]);
  }

  function flightsPage(main, scope) {
    var heading = pageHeading("Flights");
    heading.id = "flights-heading";
    var status = statusLine("flights-status");
    var listAlert = alertBox("flights-error");
    var loading = h("p", { class: "loading", role: "status", text: "Loading flights…" });
    var empty = h("p", { class: "empty", hidden: true, text: "No flights." });
    var tbody = h("tbody");
    var table = h("table", { class: "data", "aria-labelledby": "flights-heading" },
      headRow(["Flight", "Route", "Departure", "Status", "Boarded", "Actions"]), tbody);

    var filter = h("select", { onchange: function () { flightStatusFilter = filter.value; load(); } },
      [["", "All"], ["scheduled", "scheduled"], ["departed", "departed"], ["landed", "landed"]].map(function (o) {
        return h("option", { value: o[0], text: o[1] });
      }));
    filter.value = flightStatusFilter;

    var n = takeNotice();
    if (n) setText(status, n.text);

    function makeRow(flight) {
      var link = h("a");
      var route = h("td");
      var departure = h("td");
      var badge = statusBadge();
      var counts = h("td", { class: "num" });
      var depart = actionButton("Depart", null, function () {
        runAction(depart, listAlert, status, function () { return flightWrite("depart", flight); });
      });
      var land = actionButton("Land", null, function () {
        runAction(land, listAlert, status, function () { return flightWrite("land", flight); });
      });
      var remove = actionButton("Delete", "button-small button-danger", function () {
        if (!confirmDelete(flight)) return;
        runAction(remove, listAlert, status, async function () {
          var said = await flightWrite("delete", flight);
          heading.focus();
          return said;
        });
      });
      var tr = h("tr", null,
        h("th", { scope: "row" }, link),
        route, departure, h("td", null, badge), counts,
        h("td", null, h("div", { class: "row-actions" }, depart, land, remove)));
      return {
        tr: tr,
        update: function (f) {
          setText(link, f.number);
          link.href = "#/flights/" + encodeURIComponent(f.id);
          setText(route, f.origin + " → " + f.destination);
          setText(departure, fmtDateTime(f.departure));
          setBadge(badge, f.status);
          var c = countsOf(f);
          setText(counts, c.boarded + "/" + c.total);
          depart.setAttribute("aria-label", "Depart " + f.number);
          land.setAttribute("aria-label", "Land " + f.number);
          remove.setAttribute("aria-label", "Delete " + f.number);
        },
      };
    }

    var listScope = null;
    async function load() {
      if (listScope) listScope.dispose();
      var s = (listScope = scope.child());
      tbody.textContent = "";
      empty.hidden = true;
      loading.hidden = false;
      showAlert(listAlert, "");
      try {
        var flights = await s.get(flightRid(flightStatusFilter));
        if (!flights) return;
        loading.hidden = true;
        bindRows(s, flights, tbody, makeRow, function (count) { empty.hidden = count > 0; });
      } catch (e) {
        if (!s.alive) return;
        loading.hidden = true;
        showAlert(listAlert, "Could not load flights: " + errorText(e));
      }
    }

    main.appendChild(h("div", { class: "page" },
      heading,
      h("section", { class: "card", "aria-label": "Flight list" },
        h("div", { class: "toolbar" }, field("flights-filter", "Status", filter)),
        status, listAlert, loading,
        tableWrap(table, "Flights table"), empty),
      newFlightForm(status)));
    load();
  }

  function newFlightForm(pageStatus) {
    var error = alertBox("new-flight-error");
    var hint = h("p", { class: "hint", id: "new-flight-hint", text: "Times are in UTC." });
    var number = h("input", { type: "text", autocomplete: "off", spellcheck: "false", placeholder: "e.g. SK1421", required: true });
    var origin = h("input", { type: "text", autocomplete: "off", spellcheck: "false", placeholder: "e.g. ARN", maxlength: "3", required: true });
    var destination = h("input", { type: "text", autocomplete: "off", spellcheck: "false", placeholder: "e.g. LHR", maxlength: "3", required: true });
    var departure = h("input", { type: "datetime-local", required: true, "aria-describedby": "new-flight-hint" });
    var arrival = h("input", { type: "datetime-local", required: true, "aria-describedby": "new-flight-hint" });
    var capacity = h("input", { type: "number", min: "1", max: "1000", step: "1", inputmode: "numeric", required: true });
    var button = h("button", { type: "submit", class: "button-primary" }, "Create flight");
    var status = statusLine("new-flight-status");

    var form = h("form", { class: "form", noValidate: true, "aria-labelledby": "new-flight-heading" },
      h("div", { class: "grid" },
        field("nf-number", "Number", number),
        field("nf-origin", "Origin", origin),
        field("nf-destination", "Destination", destination),
        field("nf-departure", "Departure", departure),
        field("nf-arrival", "Arrival", arrival),
        field("nf-capacity", "Capacity", capacity)),
      hint, error,
      h("div", { class: "actions" }, button, status));

    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var missing = missingFields([["Number", number], ["Origin", origin], ["Destination", destination],
        ["Departure", departure], ["Arrival", arrival], ["Capacity", capacity]]);
      if (missing.length) {
        clearAlerts(byId("main"));
        return showAlert(error, "Fill in " + missing.join(", ") + ".");
      }
      var cap = capacity.value.trim();
      var body = {
        number: number.value.trim(),
        origin: origin.value.trim(),
        destination: destination.value.trim(),
        departure: inputToUtc(departure.value),
        arrival: inputToUtc(arrival.value),
        capacity: /^\d+$/.test(cap) ? Number(cap) : cap,
      };
      if (pageStatus) setText(pageStatus, "");
      runAction(button, error, status, async function () {
        var r = await api("POST", "/api/flights", { body: body });
        form.reset();
        number.focus();
        return acceptedText(r, "Flight " + body.number + " created.");
      });
    });

    return h("section", { class: "card" }, h("h2", { id: "new-flight-heading", text: "New flight" }), form);
  }

  // ---------------------------------------------------------------------
  // One flight and its passengers.
  // ---------------------------------------------------------------------

  function flightPage(main, scope, id) {
    var heading = pageHeading("Flight");
    var loading = h("p", { class: "loading", role: "status", text: "Loading flight…" });
    var loadAlert = alertBox("flight-load-error");
    var page = h("div", { class: "page" },
      h("p", { class: "crumbs" }, h("a", { href: "#/flights", text: "← Back to the flight list" })),
      heading, loading, loadAlert);
    main.appendChild(page);

    (async function () {
      var flight;
      try {
        flight = await scope.get("flights.flight." + id);
      } catch (e) {
        if (!scope.alive) return;
        loading.hidden = true;
        setText(heading, "Flight not found");
        showAlert(loadAlert, e && e.code === "system.notFound" ? "There is no such flight." : "Could not load the flight: " + errorText(e));
        return;
      }
      if (!flight) return;
      loading.hidden = true;
      renderFlight(page, scope, heading, flight);
    })();
  }

  function renderFlight(page, scope, heading, flight) {
    var status = statusLine("flight-note");
    var actionsAlert = alertBox("flight-error");
    var badge = h("span", { id: "flight-status" });
    var route = h("dd");
    var departure = h("dd");
    var arrival = h("dd");
    var capacity = h("dd");
    var total = h("dd", { id: "flight-total" });
    var boarded = h("dd", { id: "flight-boarded" });
    var version = h("dd");

    var depart = actionButton("Depart", "button", function () {
      runAction(depart, actionsAlert, status, function () { return flightWrite("depart", flight); });
    });
    var land = actionButton("Land", "button", function () {
      runAction(land, actionsAlert, status, function () { return flightWrite("land", flight); });
    });
    var remove = actionButton("Delete flight", "button button-danger", function () {
      if (!confirmDelete(flight)) return;
      runAction(remove, actionsAlert, status, async function () {
        notice = { text: await flightWrite("delete", flight) };
        navigate("#/flights");
        return "";
      });
    });

    // Reschedule: prefilled with the schedule, until the user edits it.
    var newDeparture = h("input", { type: "datetime-local", "aria-describedby": "reschedule-hint" });
    var newArrival = h("input", { type: "datetime-local", "aria-describedby": "reschedule-hint" });
    var edited = false;
    [newDeparture, newArrival].forEach(function (i) { i.addEventListener("input", function () { edited = true; }); });
    var rescheduleButton = h("button", { type: "submit", class: "button-primary" }, "Reschedule");
    var rescheduleAlert = alertBox("reschedule-error");
    var rescheduleStatus = statusLine("reschedule-status");
    var rescheduleForm = h("form", { class: "form", noValidate: true, "aria-labelledby": "reschedule-heading" },
      h("div", { class: "grid" },
        field("reschedule-departure", "New departure", newDeparture),
        field("reschedule-arrival", "New arrival", newArrival)),
      h("p", { class: "hint", id: "reschedule-hint", text: "Times are in UTC." }),
      rescheduleAlert,
      h("div", { class: "actions" }, rescheduleButton, rescheduleStatus));
    rescheduleForm.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var missing = missingFields([["New departure", newDeparture], ["New arrival", newArrival]]);
      if (missing.length) {
        clearAlerts(byId("main"));
        return showAlert(rescheduleAlert, "Fill in " + missing.join(", ") + ".");
      }
      var body = { departure: inputToUtc(newDeparture.value), arrival: inputToUtc(newArrival.value) };
      runAction(rescheduleButton, rescheduleAlert, rescheduleStatus, async function () {
        var r = await api("PATCH", flightPath(flight.id), { body: body, ifMatch: flight.version });
        edited = false;
        return acceptedText(r, flight.number + " rescheduled.");
      });
    });

    function update() {
      setText(heading, flight.number);
      document.title = flight.number + " · Cairn";
      setText(route, flight.origin + " → " + flight.destination);
      setText(departure, fmtDateTime(flight.departure));
      setText(arrival, fmtDateTime(flight.arrival));
      setText(capacity, fmtNumber(flight.capacity));
      setBadge(badge, flight.status);
      var c = countsOf(flight);
      setText(total, c.total);
      setText(boarded, c.boarded);
      setText(version, flight.version);
      if (!edited) {
        newDeparture.value = utcToInput(flight.departure);
        newArrival.value = utcToInput(flight.arrival);
      }
    }
    update();
    scope.listen(flight, "change", update);
    scope.listen(flight, "delete", function () {
      setText(status, "This flight was deleted.");
      [depart, land, remove, rescheduleButton].forEach(function (b) { b.setAttribute("aria-disabled", "true"); });
    });
    scope.add(function () { document.title = "Cairn"; });

    function item(label, value) { return h("div", { class: "detail" }, h("dt", { text: label }), value); }

    page.appendChild(h("section", { class: "card", "aria-label": "Flight details" },
      h("dl", { class: "details" },
        item("Route", route), item("Departure", departure), item("Arrival", arrival),
        item("Capacity", capacity), item("Status", h("dd", null, badge)),
        item("Passengers", total), item("Boarded", boarded), item("Version", version)),
      h("div", { class: "actions" }, depart, land, remove),
      actionsAlert, status));
    page.appendChild(h("section", { class: "card" }, h("h2", { id: "reschedule-heading", text: "Reschedule" }), rescheduleForm));
    page.appendChild(passengersSection(scope, flight));
  }

  function passengerPath(id, tail) {
    return "/api/passengers/" + encodeURIComponent(id) + (tail || "");
  }

  function passengersSection(scope, flight) {
    var status = statusLine("passengers-status");
    var listAlert = alertBox("passengers-error");
    var loading = h("p", { class: "loading", role: "status", text: "Loading passengers…" });
    var empty = h("p", { class: "empty", hidden: true, text: "No passengers yet." });
    var tbody = h("tbody");
    var table = h("table", { class: "data", "aria-labelledby": "passengers-heading" },
      headRow(["Name", "Document", "Boarded", "Actions"]), tbody);

    function makeRow(p) {
      var name = h("th", { scope: "row" });
      var documentCell = h("td");
      var boardedCell = h("td");
      var board = actionButton("Board", null, function () {
        runAction(board, listAlert, status, async function () {
          return acceptedText(await api("POST", passengerPath(p.id, "/boarding")), p.name + " boarded.");
        });
      });
      var remove = actionButton("Remove", "button-small button-danger", function () {
        var who = p.name;
        runAction(remove, listAlert, status, async function () {
          var r = await api("DELETE", passengerPath(p.id));
          byId("passengers-heading").focus();
          return acceptedText(r, who + " removed.");
        });
      });
      var tr = h("tr", null, name, documentCell, boardedCell, h("td", null, h("div", { class: "row-actions" }, board, remove)));
      return {
        tr: tr,
        update: function (pp) {
          setText(name, pp.name);
          setText(documentCell, pp.document);
          setText(boardedCell, pp.boarded ? "yes" : "no");
          board.setAttribute("aria-label", "Board " + pp.name);
          remove.setAttribute("aria-label", "Remove " + pp.name);
          if (pp.boarded && document.activeElement === board) remove.focus();
          board.hidden = !!pp.boarded;
        },
      };
    }

    (async function () {
      try {
        var passengers = await scope.get("passengers.flight." + flight.id);
        if (!passengers) return;
        loading.hidden = true;
        bindRows(scope, passengers, tbody, makeRow, function (count) { empty.hidden = count > 0; });
      } catch (e) {
        if (!scope.alive) return;
        loading.hidden = true;
        showAlert(listAlert, "Could not load passengers: " + errorText(e));
      }
    })();

    // Add passenger.
    var addAlert = alertBox("add-passenger-error");
    var addStatus = statusLine("add-passenger-status");
    var nameInput = h("input", { type: "text", autocomplete: "off", required: true });
    var documentInput = h("input", { type: "text", autocomplete: "off", spellcheck: "false", required: true });
    var addButton = h("button", { type: "submit", class: "button-primary" }, "Add passenger");
    var form = h("form", { class: "form", noValidate: true, "aria-labelledby": "add-passenger-heading" },
      h("div", { class: "grid" },
        field("passenger-name", "Name", nameInput),
        field("passenger-document", "Document", documentInput)),
      addAlert,
      h("div", { class: "actions" }, addButton, addStatus));
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var missing = missingFields([["Name", nameInput], ["Document", documentInput]]);
      if (missing.length) {
        clearAlerts(byId("main"));
        return showAlert(addAlert, "Fill in " + missing.join(", ") + ".");
      }
      var body = { flightId: flight.id, name: nameInput.value.trim(), document: documentInput.value.trim() };
      runAction(addButton, addAlert, addStatus, async function () {
        var r = await api("POST", "/api/passengers", { body: body });
        form.reset();
        nameInput.focus();
        return acceptedText(r, body.name + " added.");
      });
    });

    return h("section", { class: "card" },
      h("h2", { id: "passengers-heading", tabindex: "-1", text: "Passengers" }),
      status, listAlert, loading, tableWrap(table, "Passengers table"), empty,
      h("h3", { id: "add-passenger-heading", text: "Add passenger" }), form);
  }

  // ---------------------------------------------------------------------
  // Audit log.
  // ---------------------------------------------------------------------

  var auditFilter = { type: "", stream: "" };

  function auditRid(filter) {
    var query = [];
    if (filter.type) query.push("type=" + filter.type);
    if (filter.stream) query.push("stream=" + filter.stream);
    return "audit.log" + (query.length ? "?" + query.join("&") : "");
  }

  function auditItem(entry) {
    entry = entry || {};
    var actor = entry.metadata && entry.metadata.actor;
    var when = entry.recordedAt;
    return h("li", { class: "entry" },
      h("time", { class: "entry-time", datetime: when || null, title: when || null, text: fmtSeconds(when) }),
      h("span", { class: "entry-type", text: entry.type || "" }),
      h("span", { class: "entry-stream", text: entry.stream || "" }),
      h("span", { class: "entry-who", text: [
        actor ? "by " + actor : "",
        entry.source ? "via " + entry.source : "",
        session && session.viewTenant ? "tenant " + session.viewTenant : "",
      ].filter(Boolean).join(" · ") }));
  }

  function auditPage(main, scope) {
    var heading = pageHeading("Audit log");
    var loadAlert = alertBox("audit-error");
    var loading = h("p", { class: "loading", role: "status", text: "Loading the audit log…" });
    var list = h("ul", { class: "log is-loading", role: "log", "aria-live": "polite", "aria-labelledby": "audit-entries-heading" });
    var typeInput = h("input", { type: "text", autocomplete: "off", spellcheck: "false", placeholder: "e.g. FlightScheduled", value: auditFilter.type });
    var streamInput = h("input", { type: "text", autocomplete: "off", spellcheck: "false", placeholder: "e.g. flight-…", value: auditFilter.stream });
    var pause = h("button", { type: "button", class: "button" }, "Pause");
    var newCount = h("span", { class: "note", role: "status", id: "audit-new" });

    var paused = false;
    var buffered = 0;
    var entries = null; // the live collection shown
    var failed = false; // the last load failed

    function renderAll() {
      list.textContent = "";
      var items = entries ? entries.toArray() : [];
      items.forEach(function (e) { list.appendChild(auditItem(e)); });
    }

    function setPaused(value) {
      paused = value;
      setText(pause, paused ? "Resume" : "Pause");
      if (!paused) {
        buffered = 0;
        setText(newCount, "");
        renderAll();
      }
    }
    pause.addEventListener("click", function () { setPaused(!paused); });

    var listScope = null;
    async function load() {
      if (listScope) listScope.dispose();
      var s = (listScope = scope.child());
      entries = null;
      failed = false;
      buffered = 0;
      setText(newCount, "");
      list.textContent = "";
      list.classList.add("is-loading");
      loading.hidden = false;
      showAlert(loadAlert, "");
      try {
        var log = await s.get(auditRid(auditFilter));
        if (!log) return;
        entries = log;
        loading.hidden = true;
        list.classList.remove("is-loading");
        renderAll();
        s.listen(log, "add", function (ev) {
          if (paused) {
            buffered += 1;
            setText(newCount, buffered + " new");
            return;
          }
          list.insertBefore(auditItem(ev.item), list.children[ev.idx] || null);
        });
        s.listen(log, "remove", function (ev) {
          if (paused) return;
          var li = list.children[ev.idx];
          if (li) li.remove();
        });
      } catch (e) {
        if (!s.alive) return;
        failed = true;
        loading.hidden = true;
        showAlert(loadAlert, "Could not load the audit log: " + errorText(e));
      }
    }

    // A changed field applies at once, as does Enter; Enter also retries a
    // list that failed to load.
    function apply() {
      var next = { type: typeInput.value.trim(), stream: streamInput.value.trim() };
      if (next.type === auditFilter.type && next.stream === auditFilter.stream && !failed) return;
      auditFilter = next;
      load();
    }
    var form = h("form", { class: "toolbar", role: "search", "aria-label": "Filter the audit log" },
      field("audit-type", "Event type", typeInput),
      field("audit-stream", "Stream", streamInput),
      h("div", { class: "field field-button" }, h("button", { type: "submit", class: "button" }, "Apply filters")));
    form.addEventListener("submit", function (ev) { ev.preventDefault(); apply(); });
    typeInput.addEventListener("change", apply);
    streamInput.addEventListener("change", apply);

    main.appendChild(h("div", { class: "page" },
      heading,
      h("section", { class: "card" },
        form,
        h("div", { class: "log-head" },
          h("h2", { id: "audit-entries-heading", text: "Latest entries" }),
          h("div", { class: "actions" }, pause, newCount)),
        loadAlert, loading, list)));
    load();
  }

  // ---------------------------------------------------------------------
  // Operations.
  // ---------------------------------------------------------------------

  function opsPage(main, scope) {
    var heading = pageHeading("Operations");
    var status = statusLine("ops-status");
    var storeHead = h("p", { id: "store-head", class: "metric", text: "Store head: …" });
    var storeAlert = alertBox("store-error");
    var chart = lagChart();

    var page = h("div", { class: "page" },
      heading,
      status,
      h("section", { class: "card", "aria-labelledby": "store-heading" },
        h("h2", { id: "store-heading", text: "Event store" }),
        storeHead, storeAlert, chart.node));
    main.appendChild(page);

    var store = null;
    var projections = null;

    (async function () {
      try {
        store = await scope.get("ops.store");
        if (!store) return;
        var show = function () { setText(storeHead, "Store head: " + fmtNumber(store.head)); };
        show();
        scope.listen(store, "change", show);
      } catch (e) {
        if (!scope.alive) return;
        setText(storeHead, "Store head: unknown");
        showAlert(storeAlert, "Could not load the store: " + errorText(e));
      }
    })();

    // Projections.
    var projectionsAlert = alertBox("projections-error");
    opsTable(page, scope, {
      id: "projections", title: "Projections", rid: "ops.projections", alert: projectionsAlert,
      empty: "No projections.",
      columns: ["Name", "State", "Position", "Lag", "Parked", "Error", "Actions"],
      loaded: function (c) { projections = c; },
      row: function (p) {
        var name = h("th", { scope: "row" });
        var state = statusBadge();
        var position = h("td", { class: "num" });
        var lag = h("td", { class: "num" });
        var parked = h("td", { class: "num" });
        var error = h("td");
        var retry = actionButton("Retry", null, function () {
          runAction(retry, projectionsAlert, status, async function () {
            var r = await api("POST", "/api/projections/" + encodeURIComponent(p.name) + "/retry");
            return acceptedText(r, "Retrying " + p.name + ".");
          });
        });
        return {
          tr: h("tr", null, name, h("td", null, state), position, lag, parked, error, h("td", null, h("div", { class: "row-actions" }, retry))),
          update: function (pp) {
            setText(name, pp.name);
            setBadge(state, pp.state);
            setText(position, fmtNumber(pp.position));
            setText(lag, fmtNumber(pp.lag) + (typeof pp.lagSeconds === "number" ? " (" + pp.lagSeconds + " s)" : ""));
            setText(parked, fmtNumber(pp.parked));
            setError(error, pp.error);
            retry.setAttribute("aria-label", "Retry " + pp.name);
            retry.hidden = pp.state !== "failed";
          },
        };
      },
    });

    // Consumers.
    opsTable(page, scope, {
      id: "consumers", title: "Consumers", rid: "ops.consumers", alert: alertBox("consumers-error"),
      empty: "No consumers.",
      columns: ["Group", "Source", "Handled", "Dead-lettered", "Connected", "Last error"],
      row: function () {
        var group = h("th", { scope: "row" });
        var source = h("td");
        var handled = h("td", { class: "num" });
        var dead = h("td", { class: "num" });
        var connected = h("td");
        var lastError = h("td");
        return {
          tr: h("tr", null, group, source, handled, dead, connected, lastError),
          update: function (c) {
            setText(group, c.group);
            setText(source, c.source);
            setText(handled, fmtNumber(c.handled));
            setText(dead, fmtNumber(c.deadLettered));
            setText(connected, c.connected ? "yes" : "no");
            setError(lastError, c.lastError);
          },
        };
      },
    });

    // Dead letters.
    var deadAlert = alertBox("deadletters-error");
    opsTable(page, scope, {
      id: "deadletters", title: "Dead letters", rid: "ops.deadletters", alert: deadAlert,
      empty: "No dead letters.",
      columns: ["Kind", "Name", "Event type", "Stream", "Error", "Time", "Actions"],
      row: function (d) {
        var kind = h("td");
        var name = h("td");
        var type = h("td");
        var stream = h("td");
        var error = h("td");
        var time = h("td");
        var replay = actionButton("Replay", null, function () {
          runAction(replay, deadAlert, status, async function () {
            if (!live.client) throw new Error("Live updates are unavailable.");
            await live.client.call("ops.deadletter." + d.id, "replay");
            return "Replayed dead letter " + d.id + ".";
          });
        });
        return {
          tr: h("tr", null, kind, name, type, stream, error, time, h("td", null, h("div", { class: "row-actions" }, replay))),
          update: function (dd) {
            setText(kind, dd.kind);
            setText(name, dd.name);
            setText(type, dd.eventType);
            setText(stream, dd.stream);
            setError(error, dd.error);
            setText(time, fmtSeconds(dd.at));
            replay.setAttribute("aria-label", "Replay " + dd.id);
          },
        };
      },
    });

    // The chart: one sample a second.
    var lastHead = null;
    var lastAt = 0;
    function sample() {
      var now = Date.now();
      var head = store && typeof store.head === "number" ? store.head : null;
      var eps = null;
      if (head != null && lastHead != null && now > lastAt) eps = Math.max(0, (head - lastHead) / ((now - lastAt) / 1000));
      if (head != null) { lastHead = head; lastAt = now; }
      var lag = null;
      if (projections) {
        lag = projections.toArray().reduce(function (sum, p) { return sum + (p && typeof p.lag === "number" ? p.lag : 0); }, 0);
      }
      chart.push(eps, lag);
    }
    sample();
    scope.every(1000, sample);
  }

  /** An error cell: the error in red, or a quiet dash. */
  function setError(cell, error) {
    setText(cell, error || "—");
    cell.classList.toggle("error-text", !!error);
  }

  /** A section with a heading and a live table of `spec.rid`'s models. */
  function opsTable(page, scope, spec) {
    var headingId = spec.id + "-heading";
    var loading = h("p", { class: "loading", role: "status", text: "Loading " + spec.title.toLowerCase() + "…" });
    var empty = h("p", { class: "empty", hidden: true, text: spec.empty });
    var tbody = h("tbody");
    var table = h("table", { class: "data", "aria-labelledby": headingId }, headRow(spec.columns), tbody);
    page.appendChild(h("section", { class: "card", "aria-labelledby": headingId },
      h("h2", { id: headingId, text: spec.title }), spec.alert, loading, tableWrap(table, spec.title + " table"), empty));
    (async function () {
      try {
        var collection = await scope.get(spec.rid);
        if (!collection) return;
        loading.hidden = true;
        if (spec.loaded) spec.loaded(collection);
        bindRows(scope, collection, tbody, spec.row, function (count) { empty.hidden = count > 0; });
      } catch (e) {
        if (!scope.alive) return;
        loading.hidden = true;
        showAlert(spec.alert, "Could not load " + spec.title.toLowerCase() + ": " + errorText(e));
      }
    })();
  }

  /** Events per second and total projection lag, the last 60 seconds. */
  function lagChart() {
    var W = 600;
    var H = 160;
    var PAD = 6;
    var samples = [];
    var epsLine = svg("polyline", { class: "series series-eps", fill: "none", points: "" });
    var lagLine = svg("polyline", { class: "series series-lag", fill: "none", points: "" });
    var box = svg("svg", {
      viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", class: "chart-svg", role: "img",
      "aria-label": "Chart of events per second and total projection lag over the last 60 seconds",
    });
    [0.25, 0.5, 0.75].forEach(function (f) {
      box.appendChild(svg("line", { class: "gridline", x1: 0, x2: W, y1: PAD + (H - 2 * PAD) * f, y2: PAD + (H - 2 * PAD) * f }));
    });
    box.appendChild(svg("line", { class: "axis", x1: 0, x2: W, y1: H - PAD, y2: H - PAD }));
    box.appendChild(lagLine);
    box.appendChild(epsLine);
    var epsText = h("span");
    var lagText = h("span");
    var legend = h("ul", { class: "legend" },
      h("li", null, h("span", { class: "swatch swatch-eps", "aria-hidden": "true" }), epsText),
      h("li", null, h("span", { class: "swatch swatch-lag", "aria-hidden": "true" }), lagText));

    function points(key) {
      var values = samples.map(function (s) { return s[key]; });
      var max = Math.max.apply(null, values.map(function (v) { return v == null ? 0 : v; }).concat([1]));
      var out = [];
      values.forEach(function (v, i) {
        if (v == null) return;
        var x = (W * (CHART_SECONDS - samples.length + i)) / (CHART_SECONDS - 1);
        var y = H - PAD - ((H - 2 * PAD) * v) / max;
        out.push(x.toFixed(1) + "," + y.toFixed(1));
      });
      return { text: out.join(" "), max: max };
    }

    function describe(value, digits) { return value == null ? "no data" : value.toFixed(digits); }

    function draw() {
      var e = points("eps");
      var l = points("lag");
      epsLine.setAttribute("points", e.text);
      lagLine.setAttribute("points", l.text);
      var last = samples[samples.length - 1] || {};
      var epsNow = describe(last.eps, 1);
      var lagNow = describe(last.lag, 0);
      setText(epsText, "Events per second: " + epsNow + " (chart top: " + Math.round(e.max * 10) / 10 + ")");
      setText(lagText, "Total projection lag: " + lagNow + " events (chart top: " + l.max + ")");
      box.setAttribute("aria-label", "Chart of events per second and total projection lag over the last " + CHART_SECONDS +
        " seconds; now " + epsNow + " events per second and a total lag of " + lagNow + " events");
    }

    return {
      node: h("figure", { class: "chart" }, box, h("figcaption", null, legend)),
      push: function (eps, lag) {
        samples.push({ eps: eps, lag: lag });
        if (samples.length > CHART_SECONDS) samples.shift();
        draw();
      },
    };
  }

  // ---------------------------------------------------------------------
  // Start.
  // ---------------------------------------------------------------------

  function start() {
    byId("sign-out").addEventListener("click", function () {
      var button = byId("sign-out");
      button.setAttribute("aria-disabled", "true");
      signOut().finally(function () { button.removeAttribute("aria-disabled"); });
    });
    byId("skip-link").addEventListener("click", function (ev) {
      ev.preventDefault();
      var heading = byId("main").querySelector("h1");
      (heading || byId("main")).focus();
    });
    window.addEventListener("hashchange", route);

    if (session) {
      session.roles = session.roles || rolesOf(claimsOf(session.accessToken));
      scheduleRefresh();
      startLive();
      if (session.expiresAt - Date.now() < 15000) refresh();
    }
    renderHeader();
    route();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
