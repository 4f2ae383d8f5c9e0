// Restate services written with the real TypeScript SDK (@restatedev/restate-sdk 0.4.1),
// all served by ONE endpoint on 127.0.0.1:$PORT:
//   counter          keyed router    add(key, delta) -> new total, get(key) -> total
//   greeter          unkeyed router  greet(name) -> "Hello <name> #<n>" (calls counter.add, sleeps 100ms)
//   example.Greeter  gRPC, KEYED     Greet / Count   (proto/greeter.proto)
//   example.Echo     gRPC, UNKEYED   Echo returns its input unchanged
//   sleeper          keyed router    sleepUntil(key, atMs) records when it woke; get(key)
//   awaiter          keyed router    park(key, delayMs) waits on an awakeable (id sent to mailbox); ping(key)
//   mailbox          keyed router    put(key, value) / get(key)
//   resolver         unkeyed router  resolve({id, value}) / reject({id, reason})
//   effects          unkeyed router  appendOnce({path, holdMs}): side effect appends a line, then sleeps
//   caller           unkeyed router  callMissing() calls a service that does not exist
//   bank             unkeyed router  transfer({from, to, amount}) calls counter.add(from, -amount), then
//                                    counter.add(to, amount): two calls it waits on, for liveness tests
//   kv               keyed router    apply(key, {ops, failOnce}) returns the values of state "a", "b",
//                                    "c" it found, then sets ({name, value}) or clears ({name, value:
//                                    null}) each op's name; the first attempt with a given failOnce
//                                    throws after the writes (the retry replays them)
// The gRPC code under ./generated is produced by ./generate.sh and committed; tests never run it.
// Prints "listening on <port>" once the socket is bound.
"use strict";

const http2 = require("http2");

const PORT = parseInt(process.env.PORT ?? "9080", 10);

// SDK 0.4.1's listen(port) binds every interface; pin it to loopback.
const create = http2.createServer;
http2.createServer = (...a) => {
  const s = create(...a);
  const l = s.listen.bind(s);
  s.listen = (port, ...r) => {
    s.once("listening", () => console.log(`listening on ${s.address().port}`));
    s.once("error", (e) => {
      if (!s.listening) {
        console.error(`cannot listen on 127.0.0.1:${port}: ${e.message}`);
        process.exit(1);
      }
    });
    return l(port, "127.0.0.1", ...r);
  };
  return s;
};

const restate = require("@restatedev/restate-sdk");
const example = require("./generated/greeter");

const counter = restate.keyedRouter({
  add: async (ctx, key, delta) => {
    const c = (await ctx.get("total")) ?? 0;
    ctx.set("total", c + delta);
    return c + delta;
  },
  get: async (ctx, key) => (await ctx.get("total")) ?? 0,
});

const greeter = restate.router({
  greet: async (ctx, name) => {
    const n = await ctx.rpc({ path: "counter" }).add(name, 1);
    await ctx.sleep(100);
    return `Hello ${name} #${n}`;
  },
});

const fs = require("fs");

const sleeper = restate.keyedRouter({
  // The wake-up time is absolute so that many invocations can be lined up; replay reuses the journaled one.
  sleepUntil: async (ctx, key, atMs) => {
    await ctx.sleep(Math.max(0, atMs - Date.now()));
    const firedMs = await ctx.sideEffect(async () => Date.now());
    ctx.set("fired", firedMs);
    return firedMs;
  },
  get: async (ctx, key) => (await ctx.get("fired")) ?? null,
});

const awaiter = restate.keyedRouter({
  park: async (ctx, key, delayMs) => {
    if (delayMs) await ctx.sleep(delayMs);
    const awakeable = ctx.awakeable();
    ctx.send({ path: "mailbox" }).put(key, awakeable.id);
    return await awakeable.promise;
  },
  ping: async (ctx, key) => "pong",
});

const mailbox = restate.keyedRouter({
  put: async (ctx, key, value) => {
    ctx.set("value", value);
  },
  get: async (ctx, key) => (await ctx.get("value")) ?? null,
});

const resolver = restate.router({
  resolve: async (ctx, { id, value }) => {
    ctx.resolveAwakeable(id, value);
    return "resolved";
  },
  reject: async (ctx, { id, reason }) => {
    ctx.rejectAwakeable(id, reason);
    return "rejected";
  },
});

const effects = restate.router({
  appendOnce: async (ctx, { path, holdMs }) => {
    await ctx.sideEffect(async () => {
      fs.appendFileSync(path, "ran\n");
    });
    await ctx.sleep(holdMs);
    return "done";
  },
});

const caller = restate.router({
  callMissing: async (ctx) => {
    try {
      await ctx.rpc({ path: "nope" }).anything("x");
      return "no error";
    } catch (e) {
      return `error: ${e.message}`;
    }
  },
});

const bank = restate.router({
  transfer: async (ctx, { from, to, amount }) => {
    const account = ctx.rpc({ path: "counter" });
    await account.add(from, -amount);
    await account.add(to, amount);
    return "ok";
  },
});

// failOnce values whose first attempt already threw (this process's memory: attempts only).
const failedOnce = new Set();

const kv = restate.keyedRouter({
  apply: async (ctx, key, { ops, failOnce }) => {
    const found = {};
    for (const name of ["a", "b", "c"]) found[name] = (await ctx.get(name)) ?? null;
    for (const { name, value } of ops) {
      if (value === null) ctx.clear(name);
      else ctx.set(name, value);
    }
    if (failOnce && !failedOnce.has(failOnce)) {
      failedOnce.add(failOnce);
      throw new Error(`injected failure after the writes (${failOnce})`);
    }
    return found;
  },
});

// example.Greeter (keyed by GreetRequest.name / CountRequest.name).
class GreeterImpl {
  async greet(request) {
    const ctx = restate.useContext(this);
    const count = ((await ctx.get("count")) ?? 0) + 1;
    ctx.set("count", count);
    // proto3: an absent `greeting` decodes as "", so fall back on "Hello" for "" too.
    return { message: `${request.greeting || "Hello"} ${request.name}`, count };
  }

  async count(request) {
    const ctx = restate.useContext(this);
    return { count: (await ctx.get("count")) ?? 0 };
  }
}

// example.Echo (unkeyed): returns the request message unchanged.
class EchoImpl {
  async echo(request) {
    return request;
  }
}

restate
  .createServer()
  .bindKeyedRouter("counter", counter)
  .bindRouter("greeter", greeter)
  .bindKeyedRouter("sleeper", sleeper)
  .bindKeyedRouter("awaiter", awaiter)
  .bindKeyedRouter("mailbox", mailbox)
  .bindRouter("resolver", resolver)
  .bindRouter("effects", effects)
  .bindRouter("caller", caller)
  .bindRouter("bank", bank)
  .bindKeyedRouter("kv", kv)
  .bindService({ descriptor: example.protoMetadata, service: "Greeter", instance: new GreeterImpl() })
  .bindService({ descriptor: example.protoMetadata, service: "Echo", instance: new EchoImpl() })
  .listen(PORT);
