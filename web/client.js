// The browser driver of a ClientSession: one reconnecting WebSocket, the session's timers and
// keep-alive. No DOM: it talks to the page through the `onEvent` callback only (the
// session's events, plus {type: "stopped"} when reconnecting cannot help). The JavaScript
// twin of client/_sdk.py.
//
// Keep-alive: a browser cannot send WebSocket pings, so a JSON ping goes out whenever
// nothing was sent for a third of heartbeat_s. Reconnects back off exponentially with
// jitter (0.25 s doubling to 5 s) and start over at once when the browser comes online.

import { ClientSession, RemoteProtocolError } from "./session.js";

/** Close codes after which reconnecting cannot help (bad token, our bug, replaced). */
export const FATAL_CLOSE_CODES = new Set([4400, 4401, 4409]);

const BACKOFF_BASE_S = 0.25;
const BACKOFF_MAX_S = 5;

const nowS = () => performance.now() / 1000;

export class Client {
  constructor({ url, token, device, onEvent, WebSocketImpl = globalThis.WebSocket }) {
    this.url = url;
    this.session = new ClientSession({ token, device });
    this.onEvent = onEvent;
    this.WebSocketImpl = WebSocketImpl;
    this.ws = null;
    this.attempt = 0;
    this.stopped = false;
    this.timer = null;
    this.reconnectTimer = null;
    this.lastSent = 0;
    this.keepaliveTimer = null;
  }

  start() {
    this.open();
    globalThis.addEventListener?.("online", () => this.reconnectNow());
  }

  /** Stop for good (sign out): close the socket, no reconnect. */
  stop() {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.timer);
    clearInterval(this.keepaliveTimer);
    this.ws?.close(1000, "signed out");
  }

  // Every public action touches the session, then flushes what it produced.
  send(body, target) {
    const cmid = this.session.send(body, target);
    this.flush();
    return cmid;
  }

  request(frame) {
    const rid = this.session.request(frame);
    this.flush();
    return rid;
  }

  markRead(conv, seq) {
    this.session.markRead(conv, seq);
    this.flush();
  }

  typing(conv) {
    this.session.typing(conv);
    this.flush();
  }

  // ---------------------------------------------------------------- connection

  open() {
    if (this.stopped) return;
    const ws = new this.WebSocketImpl(this.url);
    this.ws = ws;
    let lost = false;
    const gone = (code, reason) => {
      if (lost) return;
      lost = true;
      this.connectionLost(ws, code, reason);
    };
    ws.onopen = () => {
      this.session.connect();
      this.flush();
    };
    ws.onmessage = (event) => {
      try {
        this.session.receiveText(String(event.data), nowS());
      } catch (error) {
        if (!(error instanceof RemoteProtocolError)) throw error;
        console.warn("server broke the protocol:", error.message);
        ws.close(4400, "protocol error");
        gone(null, error.message);
        return;
      } finally {
        this.flush();
      }
      if (this.session.isOpen) this.attempt = 0;
    };
    ws.onclose = (event) => gone(event.code, event.reason);
    ws.onerror = () => {}; // onclose follows and carries what there is to know
  }

  connectionLost(ws, code, reason) {
    if (ws !== this.ws) return;
    this.ws = null;
    clearInterval(this.keepaliveTimer);
    if (this.session.state !== "idle" && this.session.state !== "disconnected") {
      this.session.connectionLost(code ?? null, reason ?? "");
    }
    this.dispatch();
    if (FATAL_CLOSE_CODES.has(code)) {
      this.stopped = true;
      this.onEvent({ type: "stopped", closeCode: code, reason });
      return;
    }
    if (this.stopped) return;
    const backoff = Math.min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** this.attempt);
    this.attempt += 1;
    this.reconnectTimer = setTimeout(() => this.open(), backoff * (0.5 + Math.random() / 2) * 1000);
  }

  reconnectNow() {
    if (this.ws !== null || this.stopped) return;
    clearTimeout(this.reconnectTimer);
    this.attempt = 0;
    this.open();
  }

  // ---------------------------------------------------------------- plumbing

  /** Write what the session has for the wire, hand its events over, re-arm the timer. */
  flush() {
    const ws = this.ws;
    const texts = this.session.dataToSend();
    if (ws !== null && ws.readyState === 1) {
      for (const text of texts) ws.send(text);
      if (texts.length) this.lastSent = nowS();
    }
    this.dispatch();
    clearTimeout(this.timer);
    const deadline = this.session.nextDeadline();
    if (deadline !== null) {
      const delay = Math.max(0, deadline - nowS()) * 1000;
      this.timer = setTimeout(() => {
        this.session.tick(nowS());
        this.flush();
      }, delay);
    }
  }

  dispatch() {
    for (const event of this.session.nextEvents()) {
      if (event.type === "state" && event.welcome) this.startKeepalive(event.welcome.heartbeat_s);
      this.onEvent(event);
    }
  }

  startKeepalive(heartbeatS) {
    clearInterval(this.keepaliveTimer);
    const every = heartbeatS / 3;
    this.keepaliveTimer = setInterval(() => {
      if (nowS() - this.lastSent >= every) {
        this.session.ping();
        this.flush();
      }
    }, every * 1000);
  }
}
