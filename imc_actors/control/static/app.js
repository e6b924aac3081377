// imc-actors status page: polls /api/rooms (and /api/room for the selected room) every second
// and updates the tables in place; no page reload, no external resources. In a cluster (the
// server has a node name) it also shows the nodes and the node holding each room. When the server has
// an rpc_token (it answers 401), the page asks for it once, keeps it in sessionStorage (this
// tab, until it is closed) and sends it as "Authorization: Bearer" with every poll.
"use strict";

(() => {
  const POLL_MS = 1000;
  const TOKEN_KEY = "imc-actors-token";
  let selected = null; // URI of the room whose members are shown
  let refreshes = 0;
  let signingIn = false; // the token form is shown: polls wait for it

  const $ = (selector) => document.querySelector(selector);

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text; // never innerHTML: room and member names come from SIP users
    if (className) td.className = className;
    return td;
  }

  class Unauthorized extends Error {}

  function askToken(message) {
    signingIn = true;
    const form = $("#token-form");
    form.hidden = false;
    $("main").hidden = true;
    const error = $("#token-error");
    error.hidden = !message;
    error.textContent = message || "";
    $("#token").focus();
  }

  // fetch with the token (if any) as "Authorization: Bearer"; a 401 forgets it and throws
  async function authorizedFetch(url, options = {}) {
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(url, { cache: "no-store", ...options, headers });
    if (response.status === 401) {
      if (token) sessionStorage.removeItem(TOKEN_KEY);
      throw new Unauthorized(token ? "wrong token" : "");
    }
    return response;
  }

  async function getJSON(url) {
    const response = await authorizedFetch(url);
    if (!response.ok && response.status !== 400 && response.status !== 404) {
      throw new Error(`HTTP ${response.status}`);
    }
    return { status: response.status, data: await response.json() };
  }

  function renderNodes(nodes) {
    const cluster = nodes.length > 0;
    $("#nodes-panel").hidden = !cluster;
    document.body.classList.toggle("cluster", cluster);
    const rows = nodes.map((node) => {
      const tr = document.createElement("tr");
      tr.dataset.node = node.name;
      tr.className = node.live ? "live" : "dead";
      tr.append(
        cell(node.name, "name"),
        cell(node.addresses.join(" ") || "\u2014", "addresses"),
        cell(node.age === null ? "\u2014" : `${node.age.toFixed(1)} s`, "num age"),
        cell(node.live ? "yes" : "no", "live"),
        cell(String(node.rooms), "num rooms"),
      );
      return tr;
    });
    $("#nodes tbody").replaceChildren(...rows);
  }

  // What each part of the page shows now: a refresh that brings the same data for a part
  // leaves its DOM alone, so a click or a selection is never lost to a rebuild in the middle
  // of it (a new chat line redraws the history, not the members).
  const shown = new Map();

  function changed(part, ...values) {
    const key = JSON.stringify(values);
    if (shown.get(part) === key) return false;
    shown.set(part, key);
    return true;
  }

  function renderRooms(data) {
    const cluster = (data.nodes || []).length > 0;
    renderNodes(data.nodes || []);
    if (!changed("rooms", cluster, data.rooms, data.summary)) return;
    const tbody = $("#rooms tbody");
    const rows = [];
    for (const room of data.rooms) {
      const tr = document.createElement("tr");
      tr.dataset.room = room.room;
      if (room.room === selected) tr.className = "selected";
      const name = document.createElement("td");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = room.room;
      button.title = "show members";
      name.appendChild(button);
      tr.append(
        name,
        cell(String(room.members), "num members"),
        cell(room.owner || "\u2014", "owner"),
        cell(room.private ? "yes" : "no", "private"),
      );
      if (cluster) tr.append(cell(room.node || "\u2014", "node node-column"));
      tr.addEventListener("click", () => select(room.room));
      rows.push(tr);
    }
    tbody.replaceChildren(...rows);
    $("#no-rooms").hidden = data.rooms.length > 0;
    const truncated = $("#truncated");
    truncated.hidden = data.summary.rooms <= data.rooms.length;
    truncated.textContent = `Showing ${data.rooms.length} of ${data.summary.rooms} rooms.`;
    $("#summary").textContent =
      `${data.summary.rooms} room${data.summary.rooms === 1 ? "" : "s"}, ` +
      `${data.summary.members} member${data.summary.members === 1 ? "" : "s"}`;
  }

  function renderMembers(status, data) {
    const gone = status !== 200;
    if (changed("panel", selected, gone)) {
      const panel = $("#members-panel");
      panel.hidden = false;
      panel.dataset.room = selected;
      $("#members-title").textContent = `Members of ${selected}`;
      $("#room-gone").hidden = !gone;
      $("#members").hidden = gone;
      $("#history").hidden = gone;
      $("#admin-panel").hidden = gone;
      for (const part of ["bans", "info", "history", "members"]) shown.delete(part);
    }
    if (gone) {
      if (changed("info", selected, null)) {
        $("#room-info").textContent = "";
        $("#room-topic").textContent = "";
        $("#members tbody").replaceChildren();
        $("#history tbody").replaceChildren();
        $("#no-history").hidden = true;
      }
      return;
    }
    if (changed("bans", selected, data.bans)) renderBans(data);
    if (changed("info", selected, data.count, data.private, data.info)) {
      const created = data.info && data.info.created ? `, created ${utc(data.info.created)}` : "";
      $("#room-info").textContent =
        `${data.count} listed, ${data.private ? "private" : "public"} room${created}`;
      $("#room-topic").textContent = data.info && data.info.topic ? `Topic: ${data.info.topic}` : "No topic";
    }
    if (changed("history", selected, data.history)) renderHistory(data.history);
    if (!changed("members", selected, data.members)) return;
    const rows = data.members.map((member, index) => {
      const tr = document.createElement("tr");
      tr.dataset.member = member.uri;
      const role = member.invited ? `${member.role} (invited)` : member.role;
      tr.append(
        cell(String(index + 1), "num"),
        cell(member.uri, "uri"),
        cell(role, `role role-${member.role}${member.invited ? " invited" : ""}`),
      );
      tr.addEventListener("click", () => { $("#admin-user").value = member.uri; });
      return tr;
    });
    $("#members tbody").replaceChildren(...rows);
  }

  function utc(seconds) {
    return new Date(seconds * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function renderHistory(lines) {
    const none = $("#no-history");
    if (lines === null || lines === undefined) {
      none.hidden = false;
      none.textContent = "No history (the archive is off or cannot be read now).";
      $("#history tbody").replaceChildren();
      return;
    }
    none.hidden = lines.length > 0;
    none.textContent = "Nothing said yet.";
    const rows = lines.map((line) => {
      const tr = document.createElement("tr");
      tr.append(
        cell(String(line.seq), "num"),
        cell(utc(line.time), "time"),
        cell(line.sender, "uri"),
        cell(line.body, "line"),
      );
      return tr;
    });
    $("#history tbody").replaceChildren(...rows);
  }

  function renderBans(data) {
    const items = (data.bans || []).map((ban) => {
      const li = document.createElement("li");
      li.textContent = ban.reason ? `${ban.pattern} \u2014 ${ban.reason}` : ban.pattern;
      li.dataset.ban = ban.pattern;
      return li;
    });
    $("#bans").replaceChildren(...items);
    $("#no-bans").hidden = items.length > 0;
  }

  // Moderation: every action is a JSON-RPC call to /RPC (the same dispatch as any client's).
  let rpcId = 0;

  async function act(method) {
    if (selected === null) return;
    const result = $("#admin-result");
    const params = method === "imc.destroy_room"
      ? [selected]
      : [selected, $("#admin-user").value.trim(), $("#admin-reason").value.trim()];
    rpcId += 1;
    try {
      const response = await authorizedFetch("/RPC", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ jsonrpc: "2.0", method, params, id: rpcId }),
      });
      const answer = await response.json();
      if (answer.error) {
        result.className = "error";
        result.textContent = `${method}: ${answer.error.message}`;
      } else {
        result.className = "ok";
        result.textContent = `${method}: done`;
      }
    } catch (error) {
      if (error instanceof Unauthorized) {
        askToken(error.message);
        return;
      }
      result.className = "error";
      result.textContent = `${method}: ${error.message}`;
    }
    await refresh();
  }

  for (const button of document.querySelectorAll("#admin-form button")) {
    button.addEventListener("click", () => { act(button.dataset.method); });
  }

  async function refreshMembers() {
    if (selected === null) return;
    const room = selected;
    const answer = await getJSON(`/api/room?uri=${encodeURIComponent(room)}`);
    if (room === selected) renderMembers(answer.status, answer.data);
  }

  async function refresh() {
    const status = $("#status");
    if (signingIn) return;
    try {
      const answer = await getJSON("/api/rooms");
      renderRooms(answer.data);
      await refreshMembers();
      refreshes += 1;
      document.body.dataset.refreshes = String(refreshes);
      status.className = "";
      status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      if (error instanceof Unauthorized) {
        status.className = "error";
        status.textContent = "sign in with the access token";
        askToken(error.message);
        return;
      }
      status.className = "error";
      status.textContent = `server unreachable (${error.message}); retrying`;
    }
  }

  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("#token");
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    input.value = "";
    $("#token-form").hidden = true;
    $("main").hidden = false;
    signingIn = false;
    refresh();
  });

  function select(uri) {
    selected = uri;
    for (const tr of document.querySelectorAll("#rooms tbody tr")) {
      tr.classList.toggle("selected", tr.dataset.room === uri);
    }
    refreshMembers().catch(() => {});
  }

  async function loop() {
    await refresh();
    setTimeout(loop, POLL_MS);
  }

  loop();
})();
