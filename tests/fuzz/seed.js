#!/usr/bin/env node
// Captures the fuzz targets' seed corpora from the real TypeScript SDK 0.4.1 (tests/sdk/services.js):
// its discovery response, and the frames of real invocations in both directions (what the runtime
// sends, what the SDK answers), plus the request bodies ingress and meta see for those services.
//
//   node tests/fuzz/seed.js          (needs node and `npm ci` in tests/sdk)
//
// Rewrites tests/fuzz/seeds/{discovery,protocol,ingress,meta_requests,headers}/ (meta bodies and header
// values are written here as clients send them). Deterministic inputs; the SDK's
// answers are deterministic too except where a handler reads the clock (sleeper).
"use strict";

const { spawn } = require("child_process");
const fs = require("fs");
const http2 = require("http2");
const path = require("path");
const crypto = require("crypto");

const root = path.resolve(__dirname, "../..");
const sdkDir = path.join(root, "tests/sdk");
const sdk = (p) => require(path.join(sdkDir, "node_modules/@restatedev/restate-sdk/dist", p));
const proto = sdk("types/protocol");
const { Message } = sdk("types/types");
const { encodeMessages } = sdk("io/encoder");
const { RpcRequest, RpcResponse } = sdk("generated/proto/dynrpc");
const { ServiceDiscoveryResponse } = sdk("generated/proto/discovery");
const example = require(path.join(sdkDir, "generated/greeter"));

const seeds = path.join(__dirname, "seeds");

function write(target, name, bytes) {
  const dir = path.join(seeds, target);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, name), bytes);
}

function startSdk() {
  return startEndpoint("node", ["services.js"], sdkDir);
}

// Spawns an endpoint that prints "listening on <port>" and resolves with it.
function startEndpoint(command, args, cwd) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd,
      env: { ...process.env, PORT: "0" },
      stdio: ["ignore", "pipe", "inherit"],
    });
    const timer = setTimeout(() => reject(new Error(`${command} did not start in 20 s`)), 20000);
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/listening on (\d+)/);
      if (m) {
        clearTimeout(timer);
        resolve({ child, port: parseInt(m[1], 10) });
      }
    });
    child.on("exit", (code) => reject(new Error(`${command} exited (${code})`)));
  });
}

// One POST over h2 prior knowledge: the whole body, then the whole answer (bounded by a timeout).
function post(session, urlPath, contentType, body) {
  return new Promise((resolve, reject) => {
    const req = session.request({ ":method": "POST", ":path": urlPath, "content-type": contentType });
    const chunks = [];
    const timer = setTimeout(() => {
      req.close();
      reject(new Error(`${urlPath}: no complete answer in 10 s`));
    }, 10000);
    req.on("data", (d) => chunks.push(d));
    req.on("end", () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    });
    req.on("error", reject);
    req.end(body);
  });
}

// Splits a protocol stream into [type, flags, payload].
function frames(buf) {
  const out = [];
  for (let at = 0; at + 8 <= buf.length; ) {
    const len = buf.readUInt32BE(at + 4);
    out.push([buf.readUInt16BE(at), buf.readUInt16BE(at + 2), buf.subarray(at + 8, at + 8 + len)]);
    at += 8 + len;
  }
  return out;
}

const msg = (type, message, completed, requiresAck) =>
  new Message(type, message, completed, undefined, requiresAck);
const rpc = (key, request) => Buffer.from(RpcRequest.encode({ key, request, senderAssumes: 0 }).finish());
const rpcResponse = (response) => Buffer.from(RpcResponse.encode({ response }).finish());
const json = (v) => Buffer.from(JSON.stringify(v));

function start(knownEntries, stateMap, partialState) {
  const id = crypto.createHash("sha256").update(String(knownEntries) + JSON.stringify(stateMap)).digest().subarray(0, 24);
  return msg(proto.START_MESSAGE_TYPE, {
    id,
    debugId: id.toString("hex"),
    knownEntries,
    stateMap: stateMap.map(([key, value]) => ({ key: Buffer.from(key), value: json(value) })),
    partialState,
  });
}
const input = (value) => msg(proto.POLL_INPUT_STREAM_ENTRY_MESSAGE_TYPE, { value }, true);
const completion = (entryIndex, result) => msg(proto.COMPLETION_MESSAGE_TYPE, { entryIndex, ...result });

// Invocations: [name, service, method, input payload, extra journal/completions after Start + input].
const awakeableTarget = Buffer.concat([crypto.createHash("sha256").update("awaiter").digest().subarray(0, 24), Buffer.from([0, 0, 0, 1])]);
const invocations = [
  ["counter-add", "counter", "add", rpc("a", 5), [], [["total", 3]], false],
  ["counter-add-partial", "counter", "add", rpc("a", 1), [completion(1, { value: json(41) })], [], true],
  ["counter-get-lazy", "counter", "get", rpc("b", null), [], [], true],
  ["greeter-greet", "greeter", "greet", rpc("", "Ada"), [completion(1, { value: rpcResponse(1) })], [], false],
  ["awaiter-park", "awaiter", "park", rpc("k", 0), [], [], false],
  ["awaiter-park-resolved", "awaiter", "park", rpc("k", 0), [completion(1, { value: json("hi") })], [], false],
  ["resolver-resolve", "resolver", "resolve", rpc("", { id: awakeableTarget.toString("base64url"), value: "v" }), [], [], false],
  ["resolver-reject", "resolver", "reject", rpc("", { id: awakeableTarget.toString("base64url"), reason: "no" }), [], [], false],
  ["sleeper-sleep", "sleeper", "sleepUntil", rpc("s", 0), [completion(1, { empty: {} }), completion(2, { empty: {} })], [], false],
  ["caller-missing", "caller", "callMissing", rpc("", null), [completion(1, { failure: { code: 5, message: "service nope not found" } })], [], false],
  ["mailbox-put", "mailbox", "put", rpc("m", "x"), [], [], false],
  ["greeter-grpc", "example.Greeter", "Greet", Buffer.from(example.GreetRequest.encode({ name: "Ada", greeting: "Hi" }).finish()), [], [["count", 2]], false],
  ["echo-grpc", "example.Echo", "Echo", Buffer.from(example.EchoRequest.encode({ text: "t", big: 1234567, b: 7 }).finish()), [], [], false],
  ["counter-garbage-input", "counter", "add", Buffer.from([0xff, 0xff, 0xff]), [], [], false],
];

function grpcFrame(bytes) {
  const header = Buffer.alloc(5);
  header.writeUInt32BE(bytes.length, 1);
  return Buffer.concat([header, bytes]);
}

async function main() {
  const { child, port } = await startSdk();
  try {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on("error", (e) => console.error(`h2: ${e.message}`));

    const discovery = await post(session, "/discover", "application/proto", Buffer.alloc(0));
    write("discovery", "sdk-0.4.1.bin", discovery);

    // The method order of the ingress target: services, then methods, sorted by name (as BTreeMaps).
    const response = ServiceDiscoveryResponse.decode(discovery);
    const methods = [];
    for (const file of response.files.file) {
      for (const service of file.service) {
        const name = file.package ? `${file.package}.${service.name}` : service.name;
        if (!response.services.includes(name)) continue;
        for (const m of service.method) methods.push(`${name}/${m.name}`);
      }
    }
    const byteOrder = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b));
    const sorted = (xs) => [...xs].sort(byteOrder);
    const order = [];
    for (const s of sorted(new Set(methods.map((m) => m.split("/")[0])))) {
      for (const m of sorted(methods.filter((x) => x.split("/")[0] === s).map((x) => x.split("/")[1]))) order.push(`${s}/${m}`);
    }

    let chunk = 0;
    for (const [name, service, method, value, extra, state, partial] of invocations) {
      const request = encodeMessages([start(1, state, partial), input(value), ...extra]);
      const answer = await post(session, `/invoke/${service}/${method}`, "application/restate", request);
      // Byte 0 of a protocol seed picks the chunk size the stream is pushed in.
      write("protocol", `${name}.runtime`, Buffer.concat([Buffer.from([63 - (chunk++ % 8) * 7]), request]));
      write("protocol", `${name}.sdk`, Buffer.concat([Buffer.from([chunk++ % 64]), answer]));
      const types = frames(answer).map(([t]) => "0x" + t.toString(16).padStart(4, "0"));
      console.log(`${name}: ${answer.length} bytes, frames ${types.join(" ")}`);

      // Ingress seeds: byte 0 = method index, byte 1 = path (0 gRPC, 2 JSON response).
      const index = order.indexOf(`${service}/${method}`);
      if (index < 0 || !service.includes(".")) continue; // routers take JSON through RpcRequest
      write("ingress", `${name}.grpc`, Buffer.concat([Buffer.from([index, 0]), grpcFrame(value)]));
      for (const [type, , payload] of frames(answer)) {
        if (type !== Number(proto.OUTPUT_STREAM_ENTRY_MESSAGE_TYPE)) continue;
        const output = sdk("generated/proto/protocol").OutputStreamEntryMessage.decode(payload);
        if (output.value) write("ingress", `${name}.response`, Buffer.concat([Buffer.from([index, 2]), output.value]));
      }
    }
    // Connect JSON requests (path 1) as clients send them, for the gRPC services and a router.
    const jsonSeeds = [
      ["example.Greeter/Greet", { name: "Ada", greeting: "Hi" }],
      ["example.Greeter/Count", { name: "Ada" }],
      ["example.Echo/Echo", { text: "t", big: "9007199254740993", b: 7 }],
      ["example.Echo/Echo", { text: "t", a: "x", big: -1 }],
      ["counter/add", { key: "a", request: 5 }],
      ["resolver/resolve", { request: { id: "abc", value: [1, 2.5, { x: null }] } }],
    ];
    jsonSeeds.forEach(([m, body], i) => {
      const index = order.indexOf(m);
      if (index < 0) throw new Error(`${m} is not among the SDK's methods: ${order}`);
      write("ingress", `json-${i}.json`, Buffer.concat([Buffer.from([index, 1]), json(body)]));
    });

    // Meta bodies (byte 0: 0 register, 1 patch, 2 cancel) naming this endpoint and a real sid shape.
    const sid = `counter-${Buffer.from("a").toString("base64")}-${"00".repeat(8)}${"0a".repeat(16)}`;
    const meta = [
      [0, { uri: "http://127.0.0.1:9080", additional_headers: { authorization: "Bearer x" }, force: false }],
      [0, { uri: "https://user@example.com:8443/path/", retry_policy: { type: "none" } }],
      [1, { public: false }],
      [2, { sid }],
      [2, { sid: { service: "counter", key: "a", invocation_id: sid.split("-").pop() } }],
    ];
    meta.forEach(([kind, body], i) => write("meta_requests", `body-${i}.json`, Buffer.concat([Buffer.from([kind]), json(body)])));
    // Header values (byte 0: 0 grpc-timeout, 1 connect-timeout-ms, 2 content-type) as clients send them.
    const headers = [
      [0, "100m"], [0, "5S"], [0, "99999999H"], [0, "1n"], [1, "1500"], [1, "9999999999"],
      [2, "application/grpc+proto"], [2, "Application/JSON; charset=utf-8"], [2, "application/proto"],
    ];
    headers.forEach(([kind, value], i) => write("headers", `value-${i}`, Buffer.concat([Buffer.from([kind]), Buffer.from(value)])));
    console.log(`method order: ${order.join(" ")}`);
    session.close();
  } finally {
    child.kill();
  }
}

// A second discovery seed, when the in-repo endpoint is built: its options arrive as extension fields
// (protoc style) rather than the SDK's uninterpreted options, and its response is a third the size.
async function testEndpointDiscovery() {
  const binary = path.join(root, "target/debug/restate-test-endpoint");
  if (!fs.existsSync(binary)) {
    console.log("target/debug/restate-test-endpoint not built: its discovery seed is skipped");
    return;
  }
  const { child, port } = await startEndpoint(binary, ["--port", "0"], root);
  try {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    write("discovery", "test-endpoint.bin", await post(session, "/discover", "application/proto", Buffer.alloc(0)));
    session.close();
  } finally {
    child.kill();
  }
}

main().then(testEndpointDiscovery).catch((e) => {
  console.error(e);
  process.exit(1);
});
