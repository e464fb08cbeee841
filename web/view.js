// The chat page: what a person sees and does, drawn from the events of a Client.
//
// Rendering rule: every text that came from the network (bodies, titles, user ids) goes
// into the page through textContent or an attribute, never through innerHTML, so a body
// is always shown as the text it is.
//
// What the page keeps, per conversation: the row the server sent in `convs` (kind, title,
// members, watermarks of the others), the messages shown, keyed by seq (a seq is drawn at
// most once, whatever arrives twice), our sends still waiting for their ack, and a rank
// for the list order (latest activity first). Read marks: a conversation on screen in a
// visible tab is read up to its newest message.

import { Client } from "./client.js";

const HISTORY_PAGE = 50;
const TYPING_SHOWN_MS = 5000;
const TYPING_EVERY_MS = 3000;
const PREVIEW_CHARS = 80;

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** The member-event body as a sentence ("alice added carol"). */
function describeEvent(msg) {
  let event;
  try {
    event = JSON.parse(msg.body);
  } catch {
    return `${msg.from} changed the members`;
  }
  const users = Array.isArray(event?.users) ? event.users.join(", ") : "";
  switch (event?.op) {
    case "create":
      return `${msg.from} created the group with ${users}`;
    case "add":
      return `${msg.from} added ${users}`;
    case "remove":
      return `${msg.from} removed ${users}`;
    case "leave":
      return `${msg.from} left`;
    default:
      return `${msg.from} changed the members`;
  }
}

function preview(msg) {
  const text = msg.kind === "member" ? describeEvent(msg) : msg.body;
  return text.length > PREVIEW_CHARS ? `${text.slice(0, PREVIEW_CHARS)}…` : text;
}

function lastSeen(presence) {
  if (presence.status === "online") return "online";
  if (presence.last_seen == null) return "offline";
  return `last seen ${new Date(presence.last_seen).toLocaleString()}`;
}

class Conversation {
  constructor(conv) {
    this.conv = conv;
    this.kind = "direct";
    this.title = null;
    this.members = [];
    this.lastSeq = 0;
    this.unread = 0;
    this.read = 0;
    this.others = new Map(); // user -> {delivered, read}
    this.messages = new Map(); // seq -> msg
    this.pending = new Map(); // cmid -> body (sent, not acked)
    this.last = null; // the newest msg known
    this.rank = 0;
    this.oldestLoaded = null; // the lowest seq history has reached; 1 or more=false: all
    this.historyDone = false;
    this.loadingHistory = false;
  }

  name(me) {
    if (this.kind === "group") return this.title ?? this.conv;
    return this.members.find((m) => m !== me) ?? me;
  }

  peer(me) {
    return this.kind === "direct" ? this.members.find((m) => m !== me) ?? null : null;
  }
}

export class ChatPage {
  constructor({ token, device }) {
    this.me = null;
    this.convs = new Map();
    this.rankCounter = 0;
    this.open = null; // a conv id, or {to: user} for a chat whose first message makes it
    this.presence = new Map();
    this.subscribed = new Set();
    this.typingTimers = new Map(); // `${conv}/${user}` -> timeout
    this.typingUsers = new Map(); // conv -> Set of users
    this.lastTypingSent = 0;
    this.convsCursor = null;
    this.pendingConvs = new Set(); // rids of convs requests in flight
    this.historyRids = new Map(); // rid -> {conv, purpose: "page" | "last"}
    this.sendTargets = new Map(); // cmid -> conv or {to}
    this.everConnected = false;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.client = new Client({
      url: `${scheme}://${location.host}/v1/ws`,
      token,
      device,
      onEvent: (event) => this.onEvent(event),
    });
  }

  start() {
    $("signin").hidden = true;
    $("chat").hidden = false;
    this.bindControls();
    this.setConnection("connecting…");
    this.client.start();
    this.requestConvs(null);
  }

  // ---------------------------------------------------------------- controls

  bindControls() {
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      this.sendTyped();
    });
    $("message").addEventListener("input", () => this.typed());
    $("new-chat").addEventListener("submit", (event) => {
      event.preventDefault();
      const user = $("new-chat-user").value.trim();
      if (!user) return;
      $("new-chat-user").value = "";
      const existing = [...this.convs.values()].find(
        (c) => c.kind === "direct" && c.peer(this.me) === user,
      );
      this.openConversation(existing ? existing.conv : { to: user });
    });
    $("new-group").addEventListener("submit", (event) => {
      event.preventDefault();
      const title = $("group-title").value.trim();
      const members = $("group-members").value.split(/[\s,]+/).filter(Boolean);
      if (!title || !members.length) return;
      $("group-title").value = "";
      $("group-members").value = "";
      this.client.request({ type: "group_create", title, members });
    });
    $("add-member").addEventListener("click", () => this.memberAction("group_add"));
    $("remove-member").addEventListener("click", () => this.memberAction("group_remove"));
    $("leave-group").addEventListener("click", () => {
      if (typeof this.open === "string") this.client.request({ type: "group_leave", conv: this.open });
    });
    $("more-convs").addEventListener("click", () => this.requestConvs(this.convsCursor));
    $("messages").addEventListener("scroll", () => {
      if ($("messages").scrollTop <= 4) this.loadOlder();
    });
    document.addEventListener("visibilitychange", () => this.markOpenRead());
  }

  memberAction(type) {
    const user = $("member-user").value.trim();
    if (!user || typeof this.open !== "string") return;
    $("member-user").value = "";
    this.client.request({ type, conv: this.open, user });
  }

  sendTyped() {
    const input = $("message");
    const body = input.value;
    if (!body.trim() || this.open === null) return;
    input.value = "";
    const target = typeof this.open === "string" ? { conv: this.open } : { to: this.open.to };
    let cmid;
    try {
      cmid = this.client.send(body, target);
    } catch (error) {
      this.showError(error.message);
      return;
    }
    this.sendTargets.set(cmid, this.open);
    if (typeof this.open === "string") {
      const conv = this.conv(this.open);
      conv.pending.set(cmid, body);
      this.bump(conv);
      this.renderList();
    } else {
      this.draftPending().set(cmid, body);
    }
    this.renderMessages(true);
  }

  draftPending() {
    if (!this.open.pending) this.open.pending = new Map();
    return this.open.pending;
  }

  typed() {
    if (typeof this.open !== "string") return;
    const now = Date.now();
    if (now - this.lastTypingSent < TYPING_EVERY_MS) return;
    this.lastTypingSent = now;
    this.client.typing(this.open);
  }

  // ---------------------------------------------------------------- events

  onEvent(event) {
    switch (event.type) {
      case "state":
        this.onState(event);
        break;
      case "stopped":
        this.onStopped(event);
        break;
      case "message":
        this.onMessage(event.message);
        break;
      case "acked":
        this.onAcked(event);
        break;
      case "send_failed":
        this.onSendFailed(event);
        break;
      case "receipt":
        this.onReceipt(event.receipt);
        break;
      case "presence":
        this.presence.set(event.presence.user, event.presence);
        this.renderHeader();
        break;
      case "typing":
        this.onTyping(event.notice);
        break;
      case "result":
        this.onResult(event);
        break;
      case "request_failed":
        this.onRequestFailed(event);
        break;
      case "server_error":
        this.showError(`${event.error.code}: ${event.error.message ?? ""}`);
        break;
      default: // gap: the session fills it itself
        break;
    }
  }

  onState(event) {
    if (event.welcome) {
      this.me = event.welcome.user;
      $("me").textContent = this.me;
    }
    if (event.state === "synced") {
      this.everConnected = true;
      this.setConnection("connected");
      this.requestConvs(null); // receipts missed while away come back in the rows
      this.markOpenRead();
    } else if (event.state === "open") {
      this.setConnection("connected");
    } else if (event.state === "disconnected" || event.state === "connecting") {
      this.setConnection(this.everConnected ? "reconnecting…" : "connecting…");
      if (event.state === "disconnected") {
        this.presence.clear(); // unknown while away; re-subscribed after the next welcome
        this.renderHeader();
      }
    }
  }

  onStopped(event) {
    const why = event.closeCode === 4409 ? "signed in elsewhere with this device" : event.reason;
    this.setConnection(`disconnected: ${why || event.closeCode}`);
    if (event.closeCode === 4401) {
      sessionStorage.removeItem("messenger.token");
      $("signin").hidden = false;
      $("chat").hidden = true;
      $("signin-error").textContent = `Token refused: ${event.reason || "unauthenticated"}`;
    }
  }

  onMessage(msg) {
    const known = this.convs.has(msg.conv);
    const conv = this.conv(msg.conv);
    // A convs row counts every message up to its last_seq: only later ones add to unread.
    const isNew = msg.seq > conv.lastSeq;
    if (!conv.members.length) conv.members = [this.me, msg.from]; // until its convs row comes
    this.addMessage(conv, msg);
    if (!known || msg.kind === "member") this.requestConvs(null);
    if (msg.from !== this.me && msg.kind === "text") {
      this.clearTyping(msg.conv, msg.from);
      if (isNew && msg.seq > conv.read && !this.isVisible(msg.conv)) conv.unread += 1;
      this.notify(conv, msg);
    }
    this.bump(conv);
    this.renderList();
    if (this.open === msg.conv) {
      this.renderMessages(this.nearBottom());
      this.markOpenRead();
    }
  }

  onAcked({ cmid, ack, send }) {
    const target = this.sendTargets.get(cmid);
    this.sendTargets.delete(cmid);
    const conv = this.conv(ack.conv);
    conv.pending.delete(cmid);
    if (target && typeof target !== "string") {
      // The first message of a new chat: the conversation exists now; open it.
      target.pending?.delete(cmid);
      if (this.open === target) {
        // Until the convs row comes: a direct conversation of the two of us.
        conv.members = [this.me, target.to];
        for (const [queued, text] of target.pending ?? []) conv.pending.set(queued, text);
        target.pending?.clear();
        this.open = ack.conv;
        this.requestConvs(null);
        this.subscribePresence(target.to);
        this.renderHeader();
      }
    }
    const msg = {
      type: "msg",
      conv: ack.conv,
      seq: ack.seq,
      id: ack.id,
      from: this.me,
      cmid,
      body: send.body,
      ts: ack.ts,
      kind: "text",
    };
    this.addMessage(conv, msg);
    this.bump(conv);
    this.renderList();
    if (this.open === ack.conv) this.renderMessages(true);
  }

  onSendFailed({ cmid, nack }) {
    this.sendTargets.delete(cmid);
    for (const conv of this.convs.values()) conv.pending.delete(cmid);
    this.open?.pending?.delete?.(cmid);
    this.showError(`not sent (${nack.code}): ${nack.message ?? ""}`);
    this.renderMessages(false);
  }

  onReceipt(receipt) {
    const conv = this.conv(receipt.conv);
    if (receipt.user === this.me) {
      // Our other device read it: that counts here too.
      if (Number.isInteger(receipt.read) && receipt.read > conv.read) {
        conv.read = receipt.read;
        conv.unread = this.countUnread(conv);
        this.renderList();
      }
      return;
    }
    const marks = conv.others.get(receipt.user) ?? { delivered: 0, read: 0 };
    if (Number.isInteger(receipt.delivered)) marks.delivered = Math.max(marks.delivered, receipt.delivered);
    if (Number.isInteger(receipt.read)) marks.read = Math.max(marks.read, receipt.read);
    conv.others.set(receipt.user, marks);
    if (this.open === receipt.conv) this.renderMessages(false);
  }

  onTyping(notice) {
    if (notice.user === this.me) return;
    const key = `${notice.conv}/${notice.user}`;
    clearTimeout(this.typingTimers.get(key));
    const users = this.typingUsers.get(notice.conv) ?? new Set();
    users.add(notice.user);
    this.typingUsers.set(notice.conv, users);
    this.typingTimers.set(
      key,
      setTimeout(() => this.clearTyping(notice.conv, notice.user), TYPING_SHOWN_MS),
    );
    this.renderTyping();
  }

  clearTyping(conv, user) {
    clearTimeout(this.typingTimers.get(`${conv}/${user}`));
    this.typingTimers.delete(`${conv}/${user}`);
    this.typingUsers.get(conv)?.delete(user);
    this.renderTyping();
  }

  onResult({ rid, request, result }) {
    switch (request.type) {
      case "convs":
        this.onConvs(rid, request, result);
        break;
      case "history":
        this.onHistory(rid, request, result);
        break;
      case "group_create":
        this.requestConvs(null);
        this.openConversation(result.conv);
        break;
      case "group_leave":
      case "group_add":
      case "group_remove":
        this.requestConvs(null);
        break;
      default:
        break;
    }
  }

  onRequestFailed({ rid, request, error }) {
    this.pendingConvs.delete(rid);
    const info = this.historyRids.get(rid);
    this.historyRids.delete(rid);
    if (info) this.conv(info.conv).loadingHistory = false;
    if (error === null) {
      // Lost with the connection: list and history are asked again once connected.
      if (request.type === "convs") this.requestConvs(null);
      if (info?.purpose === "page") this.loadOlder();
      if (info?.purpose === "last") this.loadLast(this.conv(info.conv));
      return;
    }
    this.showError(`${request.type} failed (${error.code}): ${error.message ?? ""}`);
  }

  onConvs(rid, request, result) {
    this.pendingConvs.delete(rid);
    const rows = Array.isArray(result.convs) ? result.convs : [];
    // Rows come newest first; a fresh list ranks them in that order below local activity.
    let rank = request.cursor ? this.lowestRank() : this.rankCounter;
    for (const row of rows) {
      const conv = this.conv(row.conv);
      const fresh = conv.rank === 0;
      conv.kind = row.kind;
      conv.title = row.title ?? null;
      conv.members = Array.isArray(row.members) ? row.members : [];
      conv.read = Math.max(conv.read, row.read ?? 0);
      if (row.last_seq > conv.lastSeq) conv.lastSeq = row.last_seq;
      conv.unread = this.isVisible(row.conv) ? 0 : (row.unread ?? 0);
      for (const other of Array.isArray(row.others) ? row.others : []) {
        const marks = conv.others.get(other.user) ?? { delivered: 0, read: 0 };
        marks.delivered = Math.max(marks.delivered, other.delivered ?? 0);
        marks.read = Math.max(marks.read, other.read ?? 0);
        conv.others.set(other.user, marks);
      }
      if (fresh) {
        rank -= 1e-3;
        conv.rank = rank;
      }
      if (conv.last === null && conv.lastSeq > 0) this.loadLast(conv);
      const peer = conv.peer(this.me);
      if (peer) this.subscribePresence(peer);
    }
    // `cursor` is v1.1's paging; a server without it returns everything it has in one go.
    this.convsCursor = result.more && typeof result.cursor === "string" ? result.cursor : null;
    $("more-convs").hidden = this.convsCursor === null;
    this.renderList();
    this.renderHeader();
  }

  onHistory(rid, request, result) {
    const info = this.historyRids.get(rid);
    this.historyRids.delete(rid);
    const conv = this.conv(request.conv);
    const messages = Array.isArray(result.messages) ? result.messages : [];
    for (const msg of messages) this.addMessage(conv, msg);
    if (info?.purpose === "page") {
      conv.loadingHistory = false;
      const lowest = messages.length ? messages[0].seq : request.before ?? 1;
      conv.oldestLoaded = Math.min(conv.oldestLoaded ?? lowest, lowest);
      conv.historyDone = !result.more || conv.oldestLoaded <= 1;
    }
    this.renderList();
    if (this.open === request.conv) {
      const box = $("messages");
      const fromBottom = box.scrollHeight - box.scrollTop;
      this.renderMessages(false);
      if (info?.purpose === "page" && request.before == null) box.scrollTop = box.scrollHeight;
      else box.scrollTop = box.scrollHeight - fromBottom; // keep what was on screen in place
      this.markOpenRead();
      if (info?.purpose === "page" && !conv.historyDone && box.scrollHeight <= box.clientHeight) {
        this.loadOlder(); // the page does not fill the log yet
      }
    }
  }

  // ---------------------------------------------------------------- model

  conv(id) {
    let conv = this.convs.get(id);
    if (conv === undefined) {
      conv = new Conversation(id);
      this.convs.set(id, conv);
    }
    return conv;
  }

  addMessage(conv, msg) {
    if (!conv.messages.has(msg.seq)) conv.messages.set(msg.seq, msg);
    if (msg.seq > conv.lastSeq) conv.lastSeq = msg.seq;
    if (conv.last === null || msg.seq >= conv.last.seq) conv.last = msg;
  }

  bump(conv) {
    this.rankCounter += 1;
    conv.rank = this.rankCounter;
  }

  lowestRank() {
    let low = 0;
    for (const conv of this.convs.values()) if (conv.rank !== 0) low = Math.min(low, conv.rank);
    return low;
  }

  countUnread(conv) {
    let count = 0;
    for (const msg of conv.messages.values()) {
      if (msg.seq > conv.read && msg.kind === "text" && msg.from !== this.me) count += 1;
    }
    return count;
  }

  isVisible(convId) {
    return this.open === convId && document.visibilityState === "visible";
  }

  requestConvs(cursor) {
    if (cursor === null && this.pendingConvs.size) return; // one refresh at a time
    const frame = cursor === null ? { type: "convs" } : { type: "convs", cursor };
    this.pendingConvs.add(this.client.request(frame));
  }

  loadLast(conv) {
    const rid = this.client.request({ type: "history", conv: conv.conv, limit: 1 });
    this.historyRids.set(rid, { conv: conv.conv, purpose: "last" });
  }

  loadOlder() {
    if (typeof this.open !== "string") return;
    const conv = this.conv(this.open);
    if (conv.historyDone || conv.loadingHistory) return;
    conv.loadingHistory = true;
    const frame = { type: "history", conv: conv.conv, limit: HISTORY_PAGE };
    if (conv.oldestLoaded !== null) frame.before = conv.oldestLoaded;
    const rid = this.client.request(frame);
    this.historyRids.set(rid, { conv: conv.conv, purpose: "page" });
  }

  subscribePresence(user) {
    if (this.subscribed.has(user)) return;
    this.subscribed.add(user);
    this.client.request({ type: "presence_sub", users: [user] });
  }

  openConversation(target) {
    this.open = target;
    $("conversation").hidden = false;
    $("conv-error").textContent = "";
    if (typeof target === "string") {
      const conv = this.conv(target);
      if (conv.rank === 0) this.bump(conv);
      conv.unread = 0;
      if (conv.oldestLoaded === null) this.loadOlder();
    }
    this.renderList();
    this.renderHeader();
    this.renderMessages(true);
    this.renderTyping();
    this.markOpenRead();
    $("message").focus();
  }

  markOpenRead() {
    if (typeof this.open !== "string" || document.visibilityState !== "visible") return;
    const conv = this.conv(this.open);
    if (conv.lastSeq > conv.read && conv.messages.has(conv.lastSeq)) {
      conv.read = conv.lastSeq;
      this.client.markRead(conv.conv, conv.lastSeq);
    }
    if (conv.unread) {
      conv.unread = 0;
      this.renderList();
    }
  }

  notify(conv, msg) {
    if (!document.hidden || typeof Notification === "undefined") return;
    if (Notification.permission !== "granted") return;
    const note = new Notification(conv.name(this.me), { body: preview(msg), tag: conv.conv });
    note.onclick = () => {
      window.focus();
      this.openConversation(conv.conv);
    };
  }

  // ---------------------------------------------------------------- drawing

  setConnection(text) {
    $("connection").textContent = text;
  }

  showError(text) {
    $("conv-error").textContent = text;
  }

  nearBottom() {
    const box = $("messages");
    return box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  }

  renderList() {
    const list = $("conversations");
    const rows = [...this.convs.values()]
      .filter((c) => c.rank !== 0)
      .sort((a, b) => b.rank - a.rank);
    list.replaceChildren(
      ...rows.map((conv) => {
        const item = el("li");
        const button = el("button");
        button.type = "button";
        button.dataset.conv = conv.conv;
        if (this.open === conv.conv) button.setAttribute("aria-current", "true");
        const name = el("span", "name", conv.name(this.me));
        const last = el("span", "last", conv.last ? preview(conv.last) : "");
        const unread = el("span", "unread", conv.unread ? String(conv.unread) : "");
        if (conv.unread) unread.setAttribute("aria-label", `${conv.unread} unread`);
        button.append(name, unread, last);
        button.addEventListener("click", () => this.openConversation(conv.conv));
        item.append(button);
        return item;
      }),
    );
  }

  renderHeader() {
    if (this.open === null) return;
    const isConv = typeof this.open === "string";
    const conv = isConv ? this.conv(this.open) : null;
    $("conv-title").textContent = conv ? conv.name(this.me) : this.open.to;
    const peer = conv ? conv.peer(this.me) : this.open.to;
    const presence = peer ? this.presence.get(peer) : undefined;
    $("presence").textContent =
      conv?.kind === "group" ? conv.members.join(", ") : presence ? lastSeen(presence) : "";
    $("group-tools").hidden = !(conv && conv.kind === "group");
  }

  renderTyping() {
    const users = typeof this.open === "string" ? [...(this.typingUsers.get(this.open) ?? [])] : [];
    $("typing").textContent = users.length
      ? `${users.join(", ")} ${users.length === 1 ? "is" : "are"} typing…`
      : "";
  }

  markFor(conv, seq) {
    let delivered = false;
    for (const marks of conv.others.values()) {
      if (marks.read >= seq) return "read";
      if (marks.delivered >= seq) delivered = true;
    }
    return delivered ? "✓✓" : "✓";
  }

  renderMessages(scrollToEnd) {
    const box = $("messages");
    const nodes = [];
    let pending = new Map();
    if (typeof this.open === "string") {
      const conv = this.conv(this.open);
      const seqs = [...conv.messages.keys()].sort((a, b) => a - b);
      for (const seq of seqs) nodes.push(this.drawMessage(conv, conv.messages.get(seq)));
      pending = conv.pending;
    } else if (this.open !== null) {
      pending = this.open.pending ?? new Map();
    }
    for (const [cmid, body] of pending) {
      const node = el("div", "msg mine pending");
      node.dataset.cmid = cmid;
      node.append(el("span", "body", body), el("span", "mark", "…"));
      node.lastChild.setAttribute("aria-label", "queued");
      nodes.push(node);
    }
    box.replaceChildren(...nodes);
    if (scrollToEnd) box.scrollTop = box.scrollHeight;
  }

  drawMessage(conv, msg) {
    if (msg.kind === "member") {
      const node = el("div", "msg event", describeEvent(msg));
      node.dataset.seq = String(msg.seq);
      return node;
    }
    const mine = msg.from === this.me;
    const node = el("div", mine ? "msg mine" : "msg");
    node.dataset.seq = String(msg.seq);
    if (!mine && conv.kind === "group") node.append(el("span", "from", msg.from));
    node.append(el("span", "body", msg.body));
    if (mine) {
      const mark = this.markFor(conv, msg.seq);
      const markNode = el("span", "mark", mark);
      markNode.setAttribute(
        "aria-label",
        { "✓": "stored", "✓✓": "delivered", read: "read" }[mark],
      );
      node.append(markNode);
    }
    return node;
  }
}

/** The device id of this browser, made once and kept in localStorage. */
export function deviceId() {
  let device = localStorage.getItem("messenger.device");
  if (!device) {
    const bytes = new Uint8Array(6);
    crypto.getRandomValues(bytes);
    device = `web-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
    localStorage.setItem("messenger.device", device);
  }
  return device;
}
