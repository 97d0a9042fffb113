// A small client of the Centrifugo JSON protocol over WebSocket, for the
// demo page: connect with a token, subscribe with recovery, publish,
// presence, history, answer pings, and reconnect by itself. The real SDK
// (npm `centrifuge`) is tested against tidings in tests/clients/; this one
// keeps the page free of a build step and shows how little the protocol needs.

export class CentrifugoClient extends EventTarget {
  constructor(url, token) {
    super();
    this.url = url;
    this.token = token;
    this.nextId = 1;
    this.pending = new Map();
    this.subs = new Map();
    this.connected = false;
    this.closed = false;
  }

  connect() {
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = async () => {
      try {
        const reply = await this.call({ connect: { token: this.token, name: "tidings-demo" } });
        this.client = reply.connect.client;
        this.connected = true;
        this.emit("connected", reply.connect);
        for (const sub of this.subs.values()) this.resubscribe(sub);
      } catch (error) {
        this.emit("error", error);
      }
    };
    ws.onmessage = (event) => {
      for (const line of event.data.split("\n")) if (line) this.onReply(JSON.parse(line));
    };
    ws.onclose = (event) => {
      this.connected = false;
      for (const p of this.pending.values()) p.reject(new Error("disconnected"));
      this.pending.clear();
      this.emit("disconnected", { code: event.code, reason: event.reason });
      // 3500–3999 mean "do not come back" in the Centrifugo protocol.
      const final = event.code >= 3500 && event.code < 4000;
      if (!this.closed && !final) {
        setTimeout(() => this.connect(), 300);
      }
    };
  }

  onReply(reply) {
    if (reply.id) {
      const p = this.pending.get(reply.id);
      this.pending.delete(reply.id);
      if (p) reply.error ? p.reject(reply.error) : p.resolve(reply);
    } else if (reply.push) {
      this.onPush(reply.push);
    } else {
      this.ws.send("{}"); // an empty message is a ping: answer with a pong
    }
  }

  onPush(push) {
    const sub = this.subs.get(push.channel);
    if (!sub) return;
    if (push.pub) {
      sub.offset = Math.max(sub.offset, push.pub.offset || 0);
      sub.handlers.publication?.(push.pub, { replayed: false });
    } else if (push.join) {
      sub.handlers.join?.(push.join.info);
    } else if (push.leave) {
      sub.handlers.leave?.(push.leave.info);
    }
  }

  call(command) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ id, ...command }));
    });
  }

  // Subscribes now and after every reconnect, recovering what was missed.
  subscribe(channel, handlers) {
    const sub = { channel, handlers, offset: 0, epoch: "" };
    this.subs.set(channel, sub);
    if (this.connected) this.resubscribe(sub);
    return sub;
  }

  async resubscribe(sub) {
    // Ask for recovery and join/leave pushes, as centrifuge-js does for a
    // subscription with `recoverable` and `joinLeave`.
    const request = { channel: sub.channel, recoverable: true, join_leave: true };
    if (sub.epoch) Object.assign(request, { recover: true, offset: sub.offset, epoch: sub.epoch });
    const { subscribe: result } = await this.call({ subscribe: request });
    const replayed = result.publications || [];
    for (const p of replayed) sub.handlers.publication?.(p, { replayed: true });
    sub.epoch = result.epoch;
    sub.offset = Math.max(result.offset || 0, ...replayed.map((p) => p.offset || 0));
    sub.handlers.subscribed?.({ recovered: !!result.recovered, replayed: replayed.length });
  }

  publish(channel, data) {
    return this.call({ publish: { channel, data } });
  }

  async presence(channel) {
    const reply = await this.call({ presence: { channel } });
    return reply.presence.presence || {};
  }

  async history(channel, limit) {
    const reply = await this.call({ history: { channel, limit, reverse: true } });
    return (reply.history.publications || []).reverse();
  }

  // Drops the socket; the client reconnects and recovers by itself.
  drop() {
    this.ws.close();
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
