// imc-actors status page: polls /api/rooms (and /api/room for the selected room) every second
// and updates the tables in place; no page reload, no external resources.
"use strict";

(() => {
  const POLL_MS = 1000;
  let selected = null; // URI of the room whose members are shown
  let refreshes = 0;

  const $ = (selector) => document.querySelector(selector);

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text; // never innerHTML: room and member names come from SIP users
    if (className) td.className = className;
    return td;
  }

  async function getJSON(url) {
    const response = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
    if (!response.ok && response.status !== 400 && response.status !== 404) {
      throw new Error(`HTTP ${response.status}`);
    }
    return { status: response.status, data: await response.json() };
  }

  function renderRooms(data) {
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
    const panel = $("#members-panel");
    panel.hidden = false;
    panel.dataset.room = selected;
    $("#members-title").textContent = `Members of ${selected}`;
    const gone = status !== 200;
    $("#room-gone").hidden = !gone;
    $("#members").hidden = gone;
    $("#history").hidden = gone;
    if (gone) {
      $("#room-info").textContent = "";
      $("#room-topic").textContent = "";
      $("#members tbody").replaceChildren();
      $("#history tbody").replaceChildren();
      $("#no-history").hidden = true;
      return;
    }
    const created = data.info && data.info.created ? `, created ${utc(data.info.created)}` : "";
    $("#room-info").textContent =
      `${data.count} listed, ${data.private ? "private" : "public"} room${created}`;
    $("#room-topic").textContent = data.info && data.info.topic ? `Topic: ${data.info.topic}` : "No topic";
    renderHistory(data.history);
    const rows = data.members.map((member, index) => {
      const tr = document.createElement("tr");
      tr.dataset.member = member.uri;
      const role = member.invited ? `${member.role} (invited)` : member.role;
      tr.append(
        cell(String(index + 1), "num"),
        cell(member.uri, "uri"),
        cell(role, `role role-${member.role}${member.invited ? " invited" : ""}`),
      );
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

  async function refreshMembers() {
    if (selected === null) return;
    const room = selected;
    const answer = await getJSON(`/api/room?uri=${encodeURIComponent(room)}`);
    if (room === selected) renderMembers(answer.status, answer.data);
  }

  async function refresh() {
    const status = $("#status");
    try {
      const answer = await getJSON("/api/rooms");
      renderRooms(answer.data);
      await refreshMembers();
      refreshes += 1;
      document.body.dataset.refreshes = String(refreshes);
      status.className = "";
      status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      status.className = "error";
      status.textContent = `server unreachable (${error.message}); retrying`;
    }
  }

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
