// The client side of the wire protocol v1.1 as a sans-IO state machine: no DOM, no socket,
// no clock. The JavaScript twin of protocol/_client.py (the Python ClientSession); the rules
// below are the same rules, numbered the same way, and everything that decides what the
// session does lives in this file.
//
// The driver feeds it what arrives (receiveText), tells it about the connection (connect,
// connectionLost) and the time (every input takes `now`, in seconds of any clock), then
// drains dataToSend() (wire texts, in order) and nextEvents() (plain event objects).
//
// 1. Lifecycle. idle --connect--> connecting --welcome--> open --synced--> synced;
//    connectionLost takes any connected state to disconnected, from which connect starts
//    again. TRANSITIONS is the whole of it; a trigger missing from it is a
//    LocalProtocolError when the driver caused it and a RemoteProtocolError when the server
//    did. Which server frames are legal in which state is ACCEPTS.
// 2. Outbox. Every send() gets a cmid from the injected randomId() and stays in the outbox
//    until its ack, or a nack with retry false. After every welcome each entry is resent,
//    oldest first, with the same cmid, body and target. A nack with retry true schedules a
//    resend after a jittered exponential backoff. Each cmid yields exactly one "acked" or
//    one "send_failed" event, never both, never twice.
// 3. Holding messages. Per conversation a watermark w (every seq up to w is held) and the
//    set of seqs held above it. A pushed msg whose seq is held is a duplicate and is
//    dropped; any other becomes one "message" event. An ack counts as holding its
//    (conv, seq). A msg carrying a cmid still in our outbox, sent by our user, is that
//    send's acknowledgement. An unseen conversation gets its base w from a convs row's
//    `delivered`, or from a msg pushed during the initial sync (seq - 1), or from the member
//    event that added us (seq - 1); otherwise 0, and gap filling fetches what lies below.
// 4. Reporting recv. When w rises past what was reported, recv {conv, w} is due
//    recvDelayS later (one frame per conversation however many messages arrived); tick()
//    sends what is due. A duplicate push means a lost recv: the current w is reported again.
// 5. Gaps. Once synced, a hole above w is asked for with history {conv, before: h, limit},
//    h the lowest held seq above w, one request per conversation at a time. Seqs of the
//    hole the reply lacks are invisible to us (we were out of the group) and count as held;
//    so does everything below the page when `more` is false.
// 6. Requests carry a rid from a counter and are matched to their result or error. A
//    request made while not open waits for the next welcome. A request on the wire when
//    the connection drops fails ("request_failed", error null) and is not re-issued.
//    Presence subscriptions are re-made and read watermarks resent after every welcome.
// 7. Time only enters as `now`; nextDeadline() says when tick() is due next. Keep-alive
//    belongs to the driver (ping() queues a JSON ping).

export const MAX_HISTORY_LIMIT = 200;
export const MAX_PRESENCE_USERS = 256;
const MAX_BODY_BYTES = 16 * 1024;

export const State = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  OPEN: "open",
  SYNCED: "synced",
  DISCONNECTED: "disconnected",
});

const TRANSITIONS = new Map([
  ["idle/connect", State.CONNECTING],
  ["disconnected/connect", State.CONNECTING],
  ["connecting/welcome", State.OPEN],
  ["open/synced", State.SYNCED],
  ["connecting/connection_lost", State.DISCONNECTED],
  ["open/connection_lost", State.DISCONNECTED],
  ["synced/connection_lost", State.DISCONNECTED],
]);

const LIVE = ["msg", "ack", "nack", "receipt", "presence", "typing", "result", "error", "pong"];
const ACCEPTS = new Map([
  [State.CONNECTING, new Set(["welcome", "error"])],
  [State.OPEN, new Set([...LIVE, "synced", "welcome"])],
  [State.SYNCED, new Set([...LIVE, "synced", "welcome"])],
]);

const REQUEST_TYPES = new Set([
  "history",
  "convs",
  "group_create",
  "group_add",
  "group_remove",
  "group_leave",
  "presence_sub",
  "presence_unsub",
]);

/** The driver misused the session; `code` is the wire error code it hints at. */
export class LocalProtocolError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "LocalProtocolError";
    this.code = code;
  }
}

/** The server broke the contract. */
export class RemoteProtocolError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "RemoteProtocolError";
    this.code = code;
  }
}

const isInt = (v) => Number.isInteger(v);
const isStr = (v) => typeof v === "string";

// The fields each server frame type must carry, checked before the session looks at it.
const REQUIRED = {
  welcome: { user: isStr, device: isStr, heartbeat_s: isInt },
  msg: { conv: isStr, seq: (v) => isInt(v) && v >= 1, from: isStr, body: isStr, id: isStr },
  ack: { cmid: isStr, conv: isStr, seq: (v) => isInt(v) && v >= 1 },
  nack: { cmid: isStr, code: isStr },
  receipt: { conv: isStr, user: isStr },
  presence: { user: isStr, status: isStr },
  typing: { conv: isStr, user: isStr },
  error: { code: isStr },
};

/** Parse one server text into a frame object; RemoteProtocolError naming the problem. */
export function decodeServerFrame(text) {
  let frame;
  try {
    frame = JSON.parse(text);
  } catch {
    throw new RemoteProtocolError("bad_frame", "server sent text that is not JSON");
  }
  if (frame === null || typeof frame !== "object" || Array.isArray(frame) || !isStr(frame.type)) {
    throw new RemoteProtocolError("bad_frame", "server frame is not an object with a type");
  }
  for (const [field, ok] of Object.entries(REQUIRED[frame.type] ?? {})) {
    if (!ok(frame[field])) {
      throw new RemoteProtocolError("bad_frame", `${frame.type} frame with bad ${field}`);
    }
  }
  if (frame.type === "msg" && frame.kind === undefined) frame.kind = "text";
  return frame;
}

function utf8Bytes(text) {
  return new TextEncoder().encode(text).length;
}

function defaultRandomId() {
  const bytes = new Uint8Array(8);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

class ConvState {
  constructor() {
    this.watermark = null;
    this.above = new Set();
    this.reported = 0;
    this.recvDue = null;
    this.read = 0;
    this.gapRid = null;
  }

  holds(seq) {
    return (this.watermark !== null && seq <= this.watermark) || this.above.has(seq);
  }

  advance() {
    if (this.watermark === null) return;
    while (this.above.has(this.watermark + 1)) {
      this.watermark += 1;
      this.above.delete(this.watermark);
    }
    for (const seq of this.above) if (seq <= this.watermark) this.above.delete(seq);
  }
}

/** True for the member event that created a group with `user` in it, or added them. */
function adds(msg, user) {
  if (msg.kind !== "member" || user === null) return false;
  try {
    const event = JSON.parse(msg.body);
    return (
      (event?.op === "create" || event?.op === "add") &&
      Array.isArray(event.users) &&
      event.users.includes(user)
    );
  } catch {
    return false;
  }
}

/** One device's protocol state across any number of connections (see the rules above). */
export class ClientSession {
  constructor({
    token,
    device,
    randomId = defaultRandomId,
    random = Math.random,
    recvDelayS = 0.05,
    historyPage = MAX_HISTORY_LIMIT,
    retryBaseS = 0.5,
    retryMaxS = 30,
  }) {
    this.hello = { type: "hello", token, device };
    this.randomId = randomId;
    this.random = random;
    this.recvDelayS = recvDelayS;
    this.historyPage = historyPage;
    this.retryBaseS = retryBaseS;
    this.retryMaxS = retryMaxS;
    this.state = State.IDLE;
    this.welcome = null;
    this.outboxEntries = new Map(); // cmid -> {frame, onWire, attempts, retryAt}
    this.requests = new Map(); // rid -> {frame, onWire, expectsResult, internal}
    this.nextRid = 0;
    this.convs = new Map();
    this.presenceUsers = new Set();
    this.out = [];
    this.events = [];
  }

  // ---------------------------------------------------------------- introspection

  get device() {
    return this.hello.device;
  }

  get user() {
    return this.welcome === null ? null : this.welcome.user;
  }

  get isOpen() {
    return this.state === State.OPEN || this.state === State.SYNCED;
  }

  /** Sends not yet acknowledged, oldest first. */
  get outbox() {
    return Array.from(this.outboxEntries.values(), (entry) => entry.frame);
  }

  /** What the session holds of `conv`. */
  conversation(conv) {
    const state = this.convs.get(conv) ?? new ConvState();
    return {
      conv,
      watermark: state.watermark,
      heldAbove: new Set(state.above),
      reported: state.reported,
      read: state.read,
      gapRequest: state.gapRid,
    };
  }

  /** Drain the wire texts produced so far, in order. */
  dataToSend() {
    const out = this.out;
    this.out = [];
    return out;
  }

  /** Drain the events produced so far, in order. */
  nextEvents() {
    const events = this.events;
    this.events = [];
    return events;
  }

  /** The earliest `now` at which tick() has work, or null. */
  nextDeadline() {
    if (!this.isOpen) return null;
    const times = [];
    for (const state of this.convs.values()) if (state.recvDue !== null) times.push(state.recvDue);
    for (const entry of this.outboxEntries.values()) {
      if (entry.retryAt !== null) times.push(entry.retryAt);
    }
    return times.length ? Math.min(...times) : null;
  }

  // ---------------------------------------------------------------- lifecycle

  /** A new connection is up: queue hello. */
  connect() {
    this.transition("connect", true);
    this.out = [];
    this.emit({ type: "state", state: this.state });
    this.write(this.hello);
  }

  /** The connection is gone: unsent output is discarded, the outbox stays, requests on the
   * wire fail (rule 6). */
  connectionLost(closeCode = null, reason = "") {
    this.transition("connection_lost", true);
    this.out = [];
    for (const entry of this.outboxEntries.values()) {
      entry.onWire = false;
      entry.retryAt = null;
    }
    for (const state of this.convs.values()) state.gapRid = null;
    for (const [rid, pending] of [...this.requests]) {
      if (!pending.onWire) continue;
      this.requests.delete(rid);
      if (pending.expectsResult && !pending.internal) {
        this.emit({ type: "request_failed", rid, request: pending.frame, error: null });
      }
    }
    this.emit({ type: "state", state: this.state, closeCode, reason });
  }

  // ---------------------------------------------------------------- local actions

  /** Queue a text message to `conv` or to user `to`; returns its cmid. */
  send(body, { conv = null, to = null } = {}) {
    if ((conv === null) === (to === null)) {
      throw new LocalProtocolError("bad_frame", "a send needs exactly one of conv and to");
    }
    if (typeof body !== "string" || utf8Bytes(body) > MAX_BODY_BYTES) {
      throw new LocalProtocolError("too_large", `a body is at most ${MAX_BODY_BYTES} bytes`);
    }
    let cmid = this.randomId();
    while (this.outboxEntries.has(cmid)) cmid = this.randomId();
    const frame = conv !== null ? { type: "send", cmid, conv, body } : { type: "send", cmid, to, body };
    const entry = { frame, onWire: false, attempts: 0, retryAt: null };
    this.outboxEntries.set(cmid, entry);
    if (this.isOpen) this.putOnWire(entry);
    return cmid;
  }

  /** Queue a request; returns the rid its reply will carry (the frame's own rid is
   * replaced). */
  request(frame) {
    if (!REQUEST_TYPES.has(frame.type)) {
      throw new LocalProtocolError("bad_frame", `${frame.type} is not a request frame`);
    }
    const rid = this.newRid();
    const pending = {
      frame: { ...frame, rid },
      onWire: false,
      expectsResult: frame.type !== "presence_sub" && frame.type !== "presence_unsub",
      internal: false,
    };
    this.requests.set(rid, pending);
    if (frame.type === "presence_sub") for (const u of frame.users) this.presenceUsers.add(u);
    if (frame.type === "presence_unsub") for (const u of frame.users) this.presenceUsers.delete(u);
    if (this.isOpen) this.sendRequest(pending);
    return rid;
  }

  /** The user has read `conv` up to `seq`; sends read if it rose. */
  markRead(conv, seq) {
    const state = this.conv(conv);
    if (seq <= state.read) return;
    state.read = seq;
    if (this.isOpen) this.write({ type: "read", conv, seq });
  }

  /** Tell the other members we are typing; dropped when not connected (ephemeral). */
  typing(conv) {
    if (this.isOpen) this.write({ type: "typing", conv });
  }

  /** Queue a JSON ping (a browser cannot send WebSocket pings). */
  ping() {
    if (this.isOpen) this.write({ type: "ping" });
  }

  /** Do what is due at `now`: batched recv reports and backed-off resends. */
  tick(now) {
    if (!this.isOpen) return;
    for (const [conv, state] of this.convs) {
      if (state.recvDue !== null && state.recvDue <= now) this.report(conv, state);
    }
    for (const entry of this.outboxEntries.values()) {
      if (entry.retryAt !== null && entry.retryAt <= now) this.putOnWire(entry);
    }
  }

  // ---------------------------------------------------------------- input

  /** Feed one text message from the server; RemoteProtocolError when it breaks the
   * contract (the session is unchanged then). */
  receiveText(text, now) {
    this.receiveFrame(decodeServerFrame(text), now);
  }

  receiveFrame(frame, now) {
    const accepted = ACCEPTS.get(this.state);
    if (accepted === undefined) {
      throw new LocalProtocolError("bad_frame", `received ${frame.type} while ${this.state}`);
    }
    if (!accepted.has(frame.type)) {
      if (!REQUIRED[frame.type] && !["synced", "result", "pong"].includes(frame.type)) {
        return; // a frame type from a newer protocol: ignored, like an unknown field
      }
      throw new RemoteProtocolError("bad_frame", `server sent ${frame.type} while ${this.state}`);
    }
    switch (frame.type) {
      case "welcome":
        this.onWelcome(frame);
        break;
      case "synced":
        this.onSynced();
        break;
      case "msg":
        this.onMsg(frame, now, true);
        break;
      case "ack":
        this.onAck(frame, now);
        break;
      case "nack":
        this.onNack(frame, now);
        break;
      case "receipt":
        this.emit({ type: "receipt", receipt: frame });
        break;
      case "presence":
        this.emit({ type: "presence", presence: frame });
        break;
      case "typing":
        this.emit({ type: "typing", notice: frame });
        break;
      case "result":
        this.onResult(frame, now);
        break;
      case "error":
        this.onError(frame);
        break;
      default: // pong
        break;
    }
    this.tick(now);
  }

  // ---------------------------------------------------------------- handlers

  onWelcome(frame) {
    if (frame.device !== this.device) {
      throw new RemoteProtocolError("bad_frame", `welcome names device ${frame.device}`);
    }
    this.transition("welcome", false);
    this.welcome = frame;
    this.emit({ type: "state", state: this.state, welcome: frame });
    for (const entry of this.outboxEntries.values()) this.putOnWire(entry);
    for (const [conv, state] of this.convs) {
      if (state.read) this.write({ type: "read", conv, seq: state.read });
    }
    for (const [rid, pending] of [...this.requests]) {
      if (pending.frame.type === "presence_sub" || pending.frame.type === "presence_unsub") {
        this.requests.delete(rid);
      }
    }
    const users = [...this.presenceUsers];
    for (let i = 0; i < users.length; i += MAX_PRESENCE_USERS) {
      this.request({ type: "presence_sub", users: users.slice(i, i + MAX_PRESENCE_USERS) });
    }
    for (const pending of this.requests.values()) this.sendRequest(pending);
  }

  onSynced() {
    this.transition("synced", false);
    this.emit({ type: "state", state: this.state });
    for (const [conv, state] of this.convs) {
      if (state.watermark === null) {
        state.watermark = 0;
        state.advance();
      }
      this.checkGap(conv, state);
    }
  }

  onMsg(msg, now, pushed) {
    const entry = msg.cmid ? this.outboxEntries.get(msg.cmid) : undefined;
    if (entry !== undefined && msg.from === this.user) {
      const ack = { type: "ack", cmid: msg.cmid, conv: msg.conv, seq: msg.seq, id: msg.id, ts: msg.ts };
      this.onAck(ack, now);
      return;
    }
    const state = this.conv(msg.conv);
    if (state.watermark === null) state.watermark = this.baseAt(msg);
    if (state.holds(msg.seq)) {
      if (pushed && state.reported >= msg.seq) {
        state.reported = msg.seq - 1;
        this.due(state, now);
      }
      return;
    }
    this.hold(state, msg.seq, now);
    this.emit({ type: "message", message: msg });
    if (pushed) this.checkGap(msg.conv, state);
  }

  onAck(ack, now) {
    const state = this.conv(ack.conv);
    if (state.watermark === null && (ack.seq === 1 || this.state === State.SYNCED)) {
      state.watermark = 0;
    }
    if (!state.holds(ack.seq)) this.hold(state, ack.seq, now);
    const entry = this.outboxEntries.get(ack.cmid);
    if (entry !== undefined) {
      this.outboxEntries.delete(ack.cmid);
      this.emit({ type: "acked", cmid: ack.cmid, ack, send: entry.frame });
    }
    this.checkGap(ack.conv, state);
  }

  onNack(nack, now) {
    const entry = this.outboxEntries.get(nack.cmid);
    if (entry === undefined) return;
    entry.onWire = false;
    if (nack.retry) {
      const backoff = Math.min(this.retryMaxS, this.retryBaseS * 2 ** entry.attempts);
      entry.retryAt = now + backoff * (0.5 + this.random() / 2);
      entry.attempts += 1;
    } else {
      this.outboxEntries.delete(nack.cmid);
      this.emit({ type: "send_failed", cmid: nack.cmid, nack, send: entry.frame });
    }
  }

  onResult(result, now) {
    const pending = result.rid != null ? this.requests.get(result.rid) : undefined;
    if (pending === undefined) {
      throw new RemoteProtocolError("bad_frame", `result for rid ${result.rid}, not pending`);
    }
    this.requests.delete(result.rid);
    if (pending.internal) {
      this.fillGap(pending.frame, result, now);
      return;
    }
    if (pending.frame.type === "convs") this.learnBases(result);
    this.emit({ type: "result", rid: result.rid, request: pending.frame, result });
  }

  onError(error) {
    const pending = error.rid != null ? this.requests.get(error.rid) : undefined;
    if (pending === undefined) {
      this.emit({ type: "server_error", error });
      return;
    }
    this.requests.delete(error.rid);
    if (pending.internal) {
      this.conv(pending.frame.conv).gapRid = null;
      this.emit({ type: "server_error", error });
    } else {
      this.emit({ type: "request_failed", rid: error.rid, request: pending.frame, error });
    }
  }

  // ---------------------------------------------------------------- watermarks, gaps

  baseAt(msg) {
    if (this.state === State.OPEN || adds(msg, this.user)) return msg.seq - 1;
    return 0;
  }

  hold(state, seq, now) {
    const before = state.watermark;
    state.above.add(seq);
    state.advance();
    if (state.watermark !== before) this.due(state, now);
  }

  due(state, now) {
    const rose = state.watermark !== null && state.watermark > state.reported;
    if (rose && state.recvDue === null) state.recvDue = now + this.recvDelayS;
  }

  report(conv, state) {
    state.recvDue = null;
    if (state.watermark !== null && state.watermark > state.reported) {
      state.reported = state.watermark;
      this.write({ type: "recv", conv, seq: state.watermark });
    }
  }

  checkGap(conv, state) {
    if (state.gapRid !== null || state.watermark === null || state.above.size === 0) return;
    if (this.state !== State.SYNCED) return;
    const first = state.watermark + 1;
    const last = Math.min(...state.above) - 1;
    const limit = Math.min(last - first + 1, this.historyPage);
    this.emit({ type: "gap", conv, first, last });
    const rid = this.newRid();
    const pending = {
      frame: { type: "history", conv, before: last + 1, limit, rid },
      onWire: false,
      expectsResult: true,
      internal: true,
    };
    this.requests.set(rid, pending);
    state.gapRid = rid;
    this.sendRequest(pending);
  }

  fillGap(request, result, now) {
    const state = this.conv(request.conv);
    state.gapRid = null;
    const messages = historyMessages(result).filter((m) => m.conv === request.conv);
    for (const msg of messages) this.onMsg(msg, now, false);
    const seqs = new Set(messages.filter((m) => m.seq < request.before).map((m) => m.seq));
    const lowest = seqs.size ? Math.min(...seqs) : request.before;
    const invisible = [];
    for (let s = lowest; s < request.before; s++) if (!seqs.has(s)) invisible.push(s);
    if (!result.more && state.watermark !== null) {
      for (let s = state.watermark + 1; s < lowest; s++) invisible.push(s);
    }
    if (invisible.length) {
      const before = state.watermark;
      for (const s of invisible) if (!state.holds(s)) state.above.add(s);
      state.advance();
      if (state.watermark !== before) this.due(state, now);
    }
    this.checkGap(request.conv, state);
  }

  learnBases(result) {
    for (const row of Array.isArray(result.convs) ? result.convs : []) {
      const state = this.conv(row.conv);
      if (state.watermark === null && isInt(row.delivered)) {
        state.watermark = row.delivered;
        state.reported = row.delivered;
        state.advance();
      }
      if (isInt(row.read)) state.read = Math.max(state.read, row.read);
    }
  }

  // ---------------------------------------------------------------- plumbing

  transition(trigger, local) {
    const next = TRANSITIONS.get(`${this.state}/${trigger}`);
    if (next === undefined) {
      const Err = local ? LocalProtocolError : RemoteProtocolError;
      throw new Err("bad_frame", `client session cannot ${trigger} while ${this.state}`);
    }
    this.state = next;
  }

  conv(conv) {
    let state = this.convs.get(conv);
    if (state === undefined) {
      state = new ConvState();
      this.convs.set(conv, state);
    }
    return state;
  }

  putOnWire(entry) {
    entry.onWire = true;
    entry.retryAt = null;
    this.write(entry.frame);
  }

  sendRequest(pending) {
    if (!pending.onWire) {
      pending.onWire = true;
      this.write(pending.frame);
    }
  }

  write(frame) {
    this.out.push(JSON.stringify(frame));
  }

  emit(event) {
    this.events.push(event);
  }

  newRid() {
    this.nextRid += 1;
    return `r${this.nextRid}`;
  }
}

/** The messages of a history result, oldest first. */
export function historyMessages(result) {
  if (!Array.isArray(result.messages)) {
    throw new RemoteProtocolError("bad_frame", "history result without a messages list");
  }
  return result.messages.filter((m) => m && isStr(m.conv) && isInt(m.seq));
}
