// Unit tests of web/session.js (the browser's ClientSession), run with `node --test`:
// the same rules as protocol/_client.py, driven with no socket, no DOM and no clock.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  ClientSession,
  LocalProtocolError,
  RemoteProtocolError,
  State,
} from "../../web/session.js";

function session(options = {}) {
  let n = 0;
  return new ClientSession({
    token: "tok",
    device: "web-1",
    randomId: () => `c${++n}`,
    random: () => 0.5,
    recvDelayS: 0.05,
    ...options,
  });
}

const sent = (s) => s.dataToSend().map((text) => JSON.parse(text));
const feed = (s, frame, now = 0) => s.receiveText(JSON.stringify(frame), now);
const welcome = { type: "welcome", user: "alice", device: "web-1", session: "s", heartbeat_s: 30, node: "n" };
const msg = (conv, seq, extra = {}) => ({
  type: "msg", conv, seq, id: `m${seq}`, from: "bob", cmid: `b${seq}`, body: `#${seq}`, ts: 1, kind: "text", ...extra,
});

function synced(s = session()) {
  s.connect();
  feed(s, welcome);
  feed(s, { type: "synced" });
  s.dataToSend();
  s.nextEvents();
  return s;
}

test("lifecycle: hello first, welcome opens, synced syncs, loss disconnects", () => {
  const s = session();
  assert.equal(s.state, State.IDLE);
  s.connect();
  assert.deepEqual(sent(s), [{ type: "hello", token: "tok", device: "web-1" }]);
  feed(s, welcome);
  assert.equal(s.state, State.OPEN);
  assert.equal(s.user, "alice");
  feed(s, { type: "synced" });
  assert.equal(s.state, State.SYNCED);
  s.connectionLost(1006);
  assert.equal(s.state, State.DISCONNECTED);
  const states = s.nextEvents().filter((e) => e.type === "state").map((e) => e.state);
  assert.deepEqual(states, ["connecting", "open", "synced", "disconnected"]);
  assert.throws(() => s.connectionLost(), LocalProtocolError);
});

test("the server breaking the contract is a RemoteProtocolError", () => {
  const s = session();
  s.connect();
  assert.throws(() => feed(s, { type: "synced" }), RemoteProtocolError);
  assert.throws(() => s.receiveText("not json", 0), RemoteProtocolError);
  assert.throws(() => feed(s, { type: "welcome", user: "alice", device: "other", heartbeat_s: 30 }), RemoteProtocolError);
  feed(s, welcome);
  assert.throws(() => feed(s, welcome), RemoteProtocolError);
  assert.throws(() => feed(s, { ...msg("c", 1), seq: 0 }), RemoteProtocolError);
  feed(s, { type: "from_the_future" }); // an unknown type is ignored, like an unknown field
  assert.equal(s.state, State.OPEN);
});

test("sends queued while disconnected go out after welcome with their original cmid", () => {
  const s = synced();
  s.connectionLost(1006);
  const cmid = s.send("hi", { to: "bob" });
  assert.deepEqual(sent(s), []);
  s.connect();
  feed(s, welcome);
  const out = sent(s);
  assert.deepEqual(out[1], { type: "send", cmid, to: "bob", body: "hi" });
  // Lost again before the ack: the same cmid once more, then one ack resolves it.
  s.connectionLost(1006);
  s.connect();
  feed(s, welcome);
  assert.equal(sent(s).filter((f) => f.type === "send" && f.cmid === cmid).length, 1);
  feed(s, { type: "ack", cmid, conv: "d", seq: 1, id: "i", ts: 1 });
  feed(s, { type: "ack", cmid, conv: "d", seq: 1, id: "i", ts: 1 });
  assert.equal(s.nextEvents().filter((e) => e.type === "acked").length, 1);
  assert.deepEqual(s.outbox, []);
});

test("a send needs one target and a body within the limit", () => {
  const s = session();
  assert.throws(() => s.send("x", {}), LocalProtocolError);
  assert.throws(() => s.send("x", { conv: "c", to: "bob" }), LocalProtocolError);
  assert.throws(() => s.send("é".repeat(8193), { conv: "c" }), (e) => e.code === "too_large");
});

test("duplicates are dropped by (conv, seq) and recv is batched", () => {
  const s = synced();
  feed(s, msg("c", 1), 0);
  feed(s, msg("c", 2), 0.01);
  feed(s, msg("c", 1), 0.02);
  const shown = s.nextEvents().filter((e) => e.type === "message").map((e) => e.message.seq);
  assert.deepEqual(shown, [1, 2]);
  assert.deepEqual(sent(s), []);
  assert.equal(s.nextDeadline(), 0.05);
  s.tick(0.05);
  assert.deepEqual(sent(s), [{ type: "recv", conv: "c", seq: 2 }]);
  // A duplicate push means the server lacks our recv: it is reported again.
  feed(s, msg("c", 2), 1);
  s.tick(2);
  assert.deepEqual(sent(s), [{ type: "recv", conv: "c", seq: 2 }]);
});

test("our own message pushed back is the ack of the send, not a new message", () => {
  const s = synced();
  const cmid = s.send("mine", { conv: "c" });
  feed(s, { ...msg("c", 1), from: "alice", cmid, body: "mine" });
  const events = s.nextEvents();
  assert.deepEqual(events.map((e) => e.type), ["acked"]);
  assert.equal(events[0].ack.seq, 1);
});

test("a gap is filled with history; seqs the page lacks are invisible and skipped", () => {
  const s = synced();
  feed(s, msg("c", 1));
  feed(s, msg("c", 5));
  const request = sent(s).find((f) => f.type === "history");
  assert.deepEqual(request, { type: "history", conv: "c", before: 5, limit: 3, rid: request.rid });
  assert.equal(s.nextEvents().filter((e) => e.type === "gap").length, 1);
  feed(s, { type: "result", rid: request.rid, messages: [msg("c", 3)], more: true });
  const shown = s.nextEvents().filter((e) => e.type === "message").map((e) => e.message.seq);
  assert.deepEqual(shown, [3]);
  // 4 is invisible (inside the page), 2 is still missing: asked for next.
  const next = sent(s).find((f) => f.type === "history");
  assert.equal(next.before, 3);
  assert.equal(next.limit, 1);
  feed(s, { type: "result", rid: next.rid, messages: [msg("c", 2)], more: false });
  assert.equal(s.conversation("c").watermark, 5);
});

test("a convs row gives an unseen conversation its base watermark and read mark", () => {
  const s = synced();
  const rid = s.request({ type: "convs" });
  assert.deepEqual(sent(s), [{ type: "convs", rid }]);
  const row = { conv: "c", kind: "direct", members: ["alice", "bob"], last_seq: 7, delivered: 7, read: 6, unread: 1, others: [] };
  feed(s, { type: "result", rid, convs: [row], more: false });
  assert.equal(s.conversation("c").watermark, 7);
  assert.equal(s.conversation("c").read, 6);
  feed(s, msg("c", 7));
  assert.deepEqual(s.nextEvents().map((e) => e.type), ["result"]);
});

test("requests on the wire fail when the connection drops; queued ones wait", () => {
  const s = synced();
  const onWire = s.request({ type: "history", conv: "c", limit: 10 });
  s.connectionLost(1006);
  const failed = s.nextEvents().filter((e) => e.type === "request_failed");
  assert.deepEqual(failed.map((e) => [e.rid, e.error]), [[onWire, null]]);
  const queued = s.request({ type: "group_create", title: "t", members: ["bob"] });
  s.connect();
  feed(s, welcome);
  const out = sent(s);
  assert.ok(out.some((f) => f.rid === queued && f.type === "group_create"));
  assert.ok(!out.some((f) => f.rid === onWire));
  feed(s, { type: "error", code: "forbidden", message: "no", rid: queued });
  assert.equal(s.nextEvents().find((e) => e.type === "request_failed").error.code, "forbidden");
});

test("presence subscriptions and read marks are renewed after every welcome", () => {
  const s = synced();
  s.request({ type: "presence_sub", users: ["bob", "carol"] });
  s.request({ type: "presence_unsub", users: ["carol"] });
  s.markRead("c", 4);
  s.markRead("c", 3); // never backwards
  s.dataToSend();
  s.connectionLost(1006);
  s.connect();
  feed(s, welcome);
  const out = sent(s).slice(1);
  assert.deepEqual(out[0], { type: "read", conv: "c", seq: 4 });
  assert.deepEqual(out[1].users, ["bob"]);
  assert.equal(out.length, 2);
});

test("a retryable nack resends after a backoff; a final one fails the send", () => {
  const s = synced();
  const cmid = s.send("x", { conv: "c" });
  s.dataToSend();
  feed(s, { type: "nack", cmid, code: "unavailable", message: "busy", retry: true }, 10);
  assert.equal(s.nextDeadline(), 10 + 0.5 * 0.75);
  s.tick(10.375);
  assert.deepEqual(sent(s).map((f) => f.cmid), [cmid]);
  feed(s, { type: "nack", cmid, code: "forbidden", message: "no", retry: false }, 11);
  assert.deepEqual(s.nextEvents().map((e) => e.type), ["send_failed"]);
  assert.deepEqual(s.outbox, []);
});

test("typing and ping are ephemeral: nothing is queued while disconnected", () => {
  const s = session();
  s.typing("c");
  s.ping();
  assert.deepEqual(s.dataToSend(), []);
  synced(s);
  s.typing("c");
  assert.deepEqual(sent(s), [{ type: "typing", conv: "c" }]);
});
