// imc-actors chat page: a SIP user agent in the browser (JsSIP over the server's ws: listener).
// It registers the user, and talks to rooms with MESSAGE exactly as a phone does: commands
// (#create, #join, #leave, #rooms, #members, ...) and chat lines go to the room's URI or to the
// manager; what comes back is shown in the log, notices ("*** ...") set apart. The rooms list
// and the members panel are filled from the answers to #rooms and #members. Nothing is loaded
// from elsewhere; /api/chat says where the WebSocket listener is.
"use strict";

(() => {
  const $ = (selector) => document.querySelector(selector);
  let cfg = null; // {ws, domain, manager, command_char} from /api/chat
  let ua = null; // the JsSIP.UA once signed in
  let me = null; // our SIP URI
  let current = null; // URI of the room the chat line goes to
  let queue = Promise.resolve(); // requests leave one at a time, in order

  function status(text, kind) {
    const el = $("#status");
    el.textContent = text;
    el.className = kind || "";
  }

  // "sip:chat@example.org" for "chat", "chat@example.org" or "sip:chat@example.org"
  function roomUri(name) {
    const bare = name.trim().replace(/^sip:/i, "");
    return bare.includes("@") ? `sip:${bare}` : `sip:${bare}@${cfg.domain}`;
  }

  // "chat" for a room of our domain, "chat@host" for another one
  function roomName(uri) {
    const bare = uri.replace(/^sip:/i, "");
    const [user, host] = bare.split("@");
    return host && host.toLowerCase() !== cfg.domain.toLowerCase() ? bare : user;
  }

  function uriOf(jssipUri) {
    return `sip:${jssipUri.user}@${jssipUri.host}`;
  }

  // ------------------------------------------------------------------ the log
  function log(text, kind, room) {
    const line = document.createElement("p");
    line.className = kind;
    if (room) {
      line.dataset.room = room;
      if (current && room !== current) line.classList.add("other-room");
      const tag = document.createElement("span");
      tag.className = "room";
      tag.textContent = `[${roomName(room)}] `;
      line.append(tag);
    }
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text; // never innerHTML: everything here comes from SIP users
    line.append(body);
    const box = $("#log");
    box.append(line);
    box.scrollTop = box.scrollHeight;
    return line;
  }

  // ------------------------------------------------------------------ sending
  // Resolves to {ok, code, reason} once the request has its final answer.
  function send(target, body) {
    const done = queue.then(
      () =>
        new Promise((resolve) => {
          ua.sendMessage(target, body, {
            contentType: "text/plain;charset=UTF-8",
            eventHandlers: {
              succeeded: (e) => resolve({ ok: true, code: e.response.status_code, reason: e.response.reason_phrase }),
              failed: (e) =>
                resolve({
                  ok: false,
                  code: e.response ? e.response.status_code : 0,
                  reason: e.response ? e.response.reason_phrase : e.cause,
                }),
            },
          });
        }),
    );
    queue = done;
    return done;
  }

  function refused(answer, room) {
    if (!answer.ok) log(answer.code ? `! ${answer.code} ${answer.reason}` : `! ${answer.reason}`, "error", room);
    return answer.ok;
  }

  const cmd = (name) => `${cfg.command_char}${name}`;

  async function refreshRooms() {
    refused(await send(cfg.manager, cmd("rooms")), cfg.manager);
  }

  async function refreshMembers() {
    if (current) await send(current, cmd("members")); // a refusal comes back as a notice too
  }

  function select(uri) {
    current = uri;
    $("#current").textContent = uri ? roomName(uri) : "No room selected";
    $("#current").dataset.room = uri || "";
    $("#leave").hidden = !uri;
    $("#members tbody").replaceChildren();
    for (const tr of document.querySelectorAll("#rooms tbody tr")) {
      tr.classList.toggle("current", tr.dataset.room === uri);
    }
    for (const line of document.querySelectorAll("#log p[data-room]")) {
      line.classList.toggle("other-room", Boolean(uri) && line.dataset.room !== uri);
    }
    if (uri) refreshMembers();
  }

  async function join(uri) {
    const answer = await send(uri, cmd("join"));
    if (refused(answer, uri)) {
      select(uri);
      refreshRooms();
    }
  }

  async function create(name, isPrivate) {
    const uri = roomUri(name);
    const answer = await send(cfg.manager, `${cmd("create")} ${name.trim()}${isPrivate ? " private" : ""}`);
    if (refused(answer, uri)) {
      select(uri);
      refreshRooms();
    }
  }

  async function leave() {
    const room = current;
    if (!room) return;
    if (refused(await send(room, cmd("leave")), room)) {
      select(null);
      refreshRooms();
    }
  }

  // A typed "#create <room> [private]" or "#join [<room>]" that was taken selects the room,
  // as the Create and Join forms do.
  function entered(text, target) {
    const [name, arg] = text.slice(cfg.command_char.length).trim().split(/\s+/);
    const command = (name || "").toLowerCase();
    if (command !== "create" && command !== "join") return;
    const named = arg && !(command === "create" && arg.toLowerCase() === "private");
    const room = named ? roomUri(arg) : target !== cfg.manager ? target : null;
    if (!room) return;
    select(room);
    refreshRooms();
  }

  async function say(text) {
    if (text.startsWith(cfg.command_char)) {
      const target = current || cfg.manager;
      log(text, "mine command", target);
      if (refused(await send(target, text), target)) entered(text, target);
      return;
    }
    if (!current) {
      log("! select or join a room first", "error");
      return;
    }
    const room = current;
    // shown at once, as sent; marked "failed" (struck through) when it was refused or never
    // reached the server, so a line nobody got never looks said
    const line = log(`[${me.replace(/^sip:/, "").split("@")[0]}]: ${text}`, "mine pending", room);
    const answer = await send(room, text);
    line.classList.remove("pending");
    if (!refused(answer, room)) {
      line.classList.add("failed");
      line.title = "not delivered";
    }
  }

  // ------------------------------------------------------------------ receiving
  // A "Rooms:" or "Members:" body, or one page of a long list ("Rooms (1/3):" …, the pages
  // in order from one sender): the lines of the whole list once its last page is in, else null.
  const LISTING = /^(Rooms|Members)(?: \((\d+)\/(\d+)\))?:(\n|$)/;
  const partial = new Map(); // kind + sender -> lines of the pages so far
  function listing(body, from) {
    const match = LISTING.exec(body);
    if (!match) return null;
    const [, kind, page, pages] = match;
    const lines = body.split("\n").slice(1);
    if (!page) return { kind, lines };
    const key = `${kind} ${from}`;
    const index = Number(page);
    const sofar = index === 1 ? Object.assign([], { page: 0 }) : partial.get(key);
    if (!sofar || sofar.page !== index - 1) { // a page missing: wait for the next whole list
      partial.delete(key);
      return { kind, lines: null };
    }
    const next = Object.assign([...sofar, ...lines], { page: index });
    if (index < Number(pages)) {
      partial.set(key, next);
      return { kind, lines: null };
    }
    partial.delete(key);
    return { kind, lines: [...next] };
  }

  function renderRooms(lines, sender) {
    const host = sender.split("@")[1] || cfg.domain;
    // "[name]", or "[name] - topic" for a room with a topic: the name is what is bracketed
    const names = lines.map((line) => {
      const match = /^\[([^\]]*)\]/.exec(line.trim());
      return match ? match[1] : "";
    }).filter(Boolean);
    const rows = names.map((name) => {
      const uri = `sip:${name}@${host}`;
      const tr = document.createElement("tr");
      tr.dataset.room = uri;
      if (uri === current) tr.className = "current";
      const nameCell = document.createElement("td");
      const open = document.createElement("button");
      open.type = "button";
      open.className = "name";
      open.textContent = roomName(uri);
      open.title = "talk in this room";
      open.addEventListener("click", () => select(uri));
      nameCell.append(open);
      const joinCell = document.createElement("td");
      const joinButton = document.createElement("button");
      joinButton.type = "button";
      joinButton.className = "join";
      joinButton.textContent = "Join";
      joinButton.addEventListener("click", () => join(uri));
      joinCell.append(joinButton);
      tr.append(nameCell, joinCell);
      return tr;
    });
    $("#rooms tbody").replaceChildren(...rows);
    $("#no-rooms").hidden = rows.length > 0;
  }

  function renderMembers(lines, room) {
    if (room !== current) return;
    const rows = lines.filter((line) => line.trim()).map((line) => {
      const text = line.trim();
      const role = text.startsWith("*") ? "owner" : text.startsWith("~") ? "admin" : "member";
      const tr = document.createElement("tr");
      const name = document.createElement("td");
      name.textContent = text.replace(/^[*~]/, "").replace(/^\[|\]$/g, "");
      const roleCell = document.createElement("td");
      roleCell.textContent = role;
      tr.className = `role-${role}`;
      tr.append(name, roleCell);
      return tr;
    });
    $("#members tbody").replaceChildren(...rows);
  }

  const ALREADY_IN = "*** You are in the room already";
  const MEMBERSHIP = / has joined the room$| has left the room$| is now (owner|admin|member)$|declined the invitation$| has been (kicked|banned) from the room(: .*)?$/;
  // Notices that take the reader out of the room (removed, kicked, banned, destroyed).
  const GONE = /^\*\*\* (Room has been destroyed|You have been removed from the room|You have been (kicked|banned) from the room(: .*)?)$/;

  function receive(request) {
    const from = uriOf(request.from.uri);
    const body = request.body || "";
    const list = listing(body, from);
    if (list) {
      if (list.lines === null) return; // more pages to come
      return list.kind === "Rooms" ? renderRooms(list.lines, from) : renderMembers(list.lines, from);
    }
    const notice = body.startsWith("*** ");
    log(body, notice ? "notice" : "chat", from);
    if (!notice) return;
    if (body === ALREADY_IN && from !== current) select(from); // #join of a room one is in
    if (from === current && MEMBERSHIP.test(body)) refreshMembers();
    if (GONE.test(body)) {
      if (from === current) select(null);
      refreshRooms();
    }
  }

  // ------------------------------------------------------------------ signing in
  function userUri(text) {
    const bare = text.trim().replace(/^sip:/i, "");
    return bare.includes("@") ? `sip:${bare}` : `sip:${bare}@${cfg.domain}`;
  }

  function signIn() {
    if (ua) return;
    me = userUri($("#user").value);
    const options = {
      sockets: [new JsSIP.WebSocketInterface(cfg.ws)],
      uri: me,
      register: true,
      register_expires: 600,
      session_timers: false,
      user_agent: "imc-actors chat page (JsSIP)",
    };
    const password = $("#password").value;
    if (password) options.password = password; // JsSIP uses it only to answer a digest challenge
    let self;
    try {
      self = ua = new JsSIP.UA(options);
    } catch (error) {
      ua = null;
      status(`cannot sign in: ${error.message}`, "error");
      return;
    }
    $("#signin-button").disabled = true;
    status(`connecting to ${cfg.ws}\u2026`);
    // A UA signed out (a failed sign-in too) still closes its WebSocket: its events must not
    // overwrite what the page says now ("disconnected; retrying" after "sign-in failed").
    const on = (event, handler) => self.on(event, (e) => { if (ua === self) handler(e); });
    on("connected", () => status("connected, registering\u2026"));
    on("disconnected", () => status(`disconnected from ${cfg.ws}; retrying\u2026`, "error"));
    on("registered", () => {
      status(`signed in as ${me}`, "ok");
      document.body.dataset.signedIn = "yes";
      $("#signin").hidden = true;
      $("#chat").hidden = false;
      refreshRooms();
    });
    on("registrationFailed", (e) => {
      const code = e.response ? e.response.status_code : 0;
      const why = e.response ? `${code} ${e.response.reason_phrase}` : e.cause;
      const ask = code === 401 || code === 407 || e.cause === JsSIP.C.causes.AUTHENTICATION_ERROR;
      status(ask ? `the server asks for a password (${why}): enter it and sign in again` : `sign-in failed: ${why}`, "error");
      signOut();
    });
    on("newMessage", (e) => {
      if (e.originator === "remote") receive(e.request);
    });
    self.start();
  }

  function signOut() {
    if (!ua) return;
    const old = ua;
    ua = null;
    old.stop(); // unregisters, then closes the WebSocket
    delete document.body.dataset.signedIn;
    $("#signin-button").disabled = false;
    $("#signin").hidden = false;
    $("#chat").hidden = true;
    select(null);
  }

  // ------------------------------------------------------------------ wiring
  function wire() {
    $("#signin").addEventListener("submit", (e) => {
      e.preventDefault();
      signIn();
    });
    $("#signout").addEventListener("click", () => {
      signOut();
      status("signed out");
    });
    $("#create").addEventListener("submit", (e) => {
      e.preventDefault();
      const name = $("#create-name").value;
      if (name.trim()) create(name, $("#create-private").checked);
      $("#create-name").value = "";
    });
    $("#join").addEventListener("submit", (e) => {
      e.preventDefault();
      const name = $("#join-name").value;
      if (name.trim()) join(roomUri(name));
      $("#join-name").value = "";
    });
    $("#leave").addEventListener("click", () => leave());
    $("#refresh-rooms").addEventListener("click", () => refreshRooms());
    $("#say").addEventListener("submit", (e) => {
      e.preventDefault();
      const text = $("#line").value;
      if (text.trim()) say(text);
      $("#line").value = "";
    });
  }

  async function start() {
    wire();
    if (typeof JsSIP === "undefined") {
      status("JsSIP did not load (/static/vendor/jssip.min.js)", "error");
      return;
    }
    try {
      const response = await fetch("/api/chat", { cache: "no-store", headers: { Accept: "application/json" } });
      cfg = await response.json();
    } catch (error) {
      status(`cannot read /api/chat: ${error.message}`, "error");
      return;
    }
    if (!cfg.ws) {
      $("#nows").hidden = false;
      status("no WebSocket listener", "error");
      return;
    }
    $("#domain-hint").textContent = `domain ${cfg.domain}, over ${cfg.ws}`;
    $("#signin").hidden = false;
    status("not signed in");
  }

  start();
})();
