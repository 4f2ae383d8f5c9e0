// The benchmark's services for restate-server 1.7, written with @restatedev/restate-sdk 1.17.2
// (target/vs-restate/node_modules, found through NODE_PATH). One endpoint on 127.0.0.1:$PORT (HTTP/2):
//   Echo     service         echo(x) -> x
//   Counter  virtual object  add(delta) -> new total (get state, set state, return)
// The same handlers as ours.js, in the newer SDK's API. Prints "listening on <port>" once bound.
"use strict";

const http2 = require("http2");

// SDK 1.17 uses Promise.withResolvers (Node.js 22+); Node.js 20 lacks it.
if (typeof Promise.withResolvers !== "function") {
  Promise.withResolvers = function withResolvers() {
    let resolve;
    let reject;
    const promise = new this((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}

const restate = require("@restatedev/restate-sdk");

const PORT = parseInt(process.env.PORT ?? "9081", 10);

const echo = restate.service({
  name: "Echo",
  handlers: {
    echo: async (ctx, input) => input,
  },
});

const counter = restate.object({
  name: "Counter",
  handlers: {
    add: async (ctx, delta) => {
      const total = ((await ctx.get("total")) ?? 0) + delta;
      ctx.set("total", total);
      return total;
    },
  },
});

const handler = restate.endpoint().bind(echo).bind(counter).http2Handler();
const server = http2.createServer(handler);
server.listen(PORT, "127.0.0.1", () => console.log(`listening on ${server.address().port}`));
