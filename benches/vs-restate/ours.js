// The benchmark's services for OUR server, written with @restatedev/restate-sdk 0.4.1
// (tests/sdk/node_modules, found through NODE_PATH). One endpoint on 127.0.0.1:$PORT (HTTP/2):
//   echo     unkeyed router  echo(x) -> x
//   counter  keyed router    add(key, delta) -> new total (get state, set state, return)
// The same handlers as theirs.js, in the older SDK's API. Prints "listening on <port>" once bound.
"use strict";

const http2 = require("http2");

const PORT = parseInt(process.env.PORT ?? "9080", 10);

// SDK 0.4.1's listen(port) binds every interface and says nothing: pin it to loopback and report it.
const create = http2.createServer;
http2.createServer = (...a) => {
  const s = create(...a);
  const listen = s.listen.bind(s);
  s.listen = (port, ...rest) => {
    s.once("listening", () => console.log(`listening on ${s.address().port}`));
    return listen(port, "127.0.0.1", ...rest);
  };
  return s;
};

const restate = require("@restatedev/restate-sdk");

const echo = restate.router({
  echo: async (ctx, input) => input,
});

const counter = restate.keyedRouter({
  add: async (ctx, key, delta) => {
    const total = ((await ctx.get("total")) ?? 0) + delta;
    ctx.set("total", total);
    return total;
  },
});

restate.createServer().bindRouter("echo", echo).bindKeyedRouter("counter", counter).listen(PORT);
