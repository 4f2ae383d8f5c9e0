// Restate services written with the real TypeScript SDK (@restatedev/restate-sdk 0.4.1),
// all served by ONE endpoint on 127.0.0.1:$PORT:
//   counter          keyed router    add(key, delta) -> new total, get(key) -> total
//   greeter          unkeyed router  greet(name) -> "Hello <name> #<n>" (calls counter.add, sleeps 100ms)
//   example.Greeter  gRPC, KEYED     Greet / Count   (proto/greeter.proto)
//   example.Echo     gRPC, UNKEYED   Echo returns its input unchanged
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
  .bindService({ descriptor: example.protoMetadata, service: "Greeter", instance: new GreeterImpl() })
  .bindService({ descriptor: example.protoMetadata, service: "Echo", instance: new EchoImpl() })
  .listen(PORT);
